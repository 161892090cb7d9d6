"""lm-eval's own OpenAI-completions client (`local-completions`) scoring a task through `gptkit serve` gives what
`gptkit eval` gives in-process: the same accuracies and, to float noise, the same log-likelihoods. The client
tokenizes with transformers (the tokenizer `gptkit export-hf` wrote) and sends token ids with echo + logprobs."""

import os
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")
pytest.importorskip("fastapi")

from gptkit import GPT, GPTConfig, Tokenizer  # noqa: E402
from gptkit.evaluate import lm_eval_adapter  # noqa: E402
from gptkit.evaluate.runner import evaluate  # noqa: E402
from gptkit.generate import prepare_for_inference  # noqa: E402
from gptkit.interop.hf import export_hf  # noqa: E402
from gptkit.serve import BackgroundServer, ServeOptions, create_app  # noqa: E402

TASK = Path(__file__).resolve().parents[1] / "configs" / "tasks" / "tiny_sentiment.yaml"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> GPT:
    """A random GPT with a byte-level BPE tokenizer; init_std 0.2 makes candidates differ far beyond rounding."""
    os.environ.setdefault("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf-datasets")))
    torch.manual_seed(0)
    text = "\n".join(p.read_text() for p in sorted(TASK.parent.glob("*.jsonl"))) * 20
    tok = Tokenizer.train_bpe(text, 300)
    m = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=2, n_head=2, n_embd=32, init_std=0.2,
                      gelu="exact")).eval()
    m.tokenizer = tok
    return m


def test_local_completions_through_the_server_equals_gptkit_eval(model, tmp_path):
    from lm_eval.tasks import TaskManager

    export_hf(model, tmp_path / "hf", tokenizer=model.tokenizer)  # lm-eval's client tokenizes with these files
    lm_eval_adapter.export_lm_eval_tasks([str(TASK)], tmp_path / "tasks")
    tm = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)
    served = prepare_for_inference(GPT.from_pretrained(tmp_path / "hf"))  # as `gptkit serve` loads it
    app = create_app(served, served.tokenizer, ServeOptions(model_name="tiny"))
    with BackgroundServer(app) as url:
        for k in (0, 2):
            res = lm_eval.simple_evaluate(
                model="local-completions", tasks=["gptkit_tiny_sentiment"], num_fewshot=k, task_manager=tm,
                model_args=f"base_url={url}/v1/completions,model=tiny,tokenizer_backend=huggingface,"
                           f"tokenizer={tmp_path / 'hf'},max_length=256,batch_size=4,max_retries=1",
                log_samples=True, bootstrap_iters=0)
            ours = evaluate(model, [str(TASK)], [k], keep_samples=True, log=lambda m: None)
            mine, theirs = ours.summary["results"]["tiny_sentiment"], res["results"]["gptkit_tiny_sentiment"]
            assert mine["n"] == 8 and mine["acc"] == theirs["acc,none"], (k, mine, theirs)
            assert mine["acc_norm"] == theirs["acc_norm,none"], (k, mine, theirs)
            rows = sorted(res["samples"]["gptkit_tiny_sentiment"], key=lambda s: s["doc_id"])
            lls = [[float(r[0][0]) for r in s["resps"]] for s in rows]
            samples = [s for s in ours.samples if s["shots"] == k]
            assert len(samples) == len(lls) == 8
            for s, ll in zip(samples, lls):
                assert s["loglikelihoods"] == pytest.approx(ll, abs=2e-4)
