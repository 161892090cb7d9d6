"""The lm-eval bridge: a gptkit model inside EleutherAI's lm-evaluation-harness, and gptkit tasks as lm-eval tasks.

- :class:`GptkitLM` is an lm-eval ``LM`` named ``gptkit``, so lm-eval's own command runs it::

      lm_eval --model gptkit --model_args checkpoint=RUN --include_path DIR --tasks gptkit_sst2 --num_fewshot 1

  ``pyproject.toml`` declares it under lm-eval's ``lm_eval.models`` entry-point group, for lm-eval releases with
  plugin discovery. lm-eval 0.4.13 (the newest on PyPI as of 2026-11) reads no entry points; for it the
  ``gptkit_lm_eval.pth`` start-up hook that gptkit's install puts in site-packages registers the same entry once
  lm-eval has loaded its own models (``src/_gptkit_lm_eval.py``). Where no .pth file runs (a source tree on
  ``PYTHONPATH``, ``python -S``), ``python -m gptkit.evaluate.lm_eval_adapter ARGS`` registers the model and runs
  lm-eval's command line with the same arguments, and importing this module registers it too.
- :func:`export_lm_eval_tasks` (from ``lm_eval_tasks``, re-exported here) writes gptkit tasks as lm-eval task
  YAMLs over local JSONL (``dataset_path: json``), so lm-eval runs offline on exactly the examples, prompts and
  demonstrations gptkit scores.

The scoring here is deliberately the plain method (one full forward per context + continuation, left-truncated
to the context like lm-eval's HF model), independent of gptkit's packed prefix-sharing scorer: two independent
implementations agreeing is the correctness check.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import torch

import gptkit.evaluate.lm_eval_adapter as adapter

from ..checkpoint import load_model
from ..errors import GptkitError
from ..generate import stream
from ..tokenizer import Tokenizer
from .lm_eval_tasks import export_lm_eval_tasks  # noqa: F401  (re-exported: the bridge's other half)
from .tasks import EvalError

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as e:  # an optional dependency: say how to get it
    raise EvalError("the lm-eval bridge needs lm-eval: pip install 'gptkit[eval]' (with your torch pinned, e.g. "
                    "pip install torch==2.13.0 'gptkit[eval]')") from e

MODEL_NAME = "gptkit"


class GptkitLM(TemplateLM):
    """lm-eval model over a gptkit checkpoint. ``--model_args checkpoint=DIR[,batch_size=N][,device=cpu]``;
    ``ckpt`` and ``tokenizer_dir`` are accepted too, as gptkit's own --ckpt and --tokenizer-dir."""

    def __init__(self, checkpoint: str | None = None, batch_size: int | str | None = 16, device: str | None = None,
                 tokenizer: str | None = None, model: Any = None, max_batch_size: Any = None,
                 ckpt: str | None = None, tokenizer_dir: str | None = None, **unknown: Any) -> None:
        super().__init__()
        if unknown:
            raise EvalError(f"unknown --model_args for gptkit: {', '.join(sorted(unknown))} "
                            f"(known: checkpoint or ckpt, tokenizer or tokenizer_dir, batch_size, device)")
        for a, b, names in ((checkpoint, ckpt, "checkpoint and ckpt"), (tokenizer, tokenizer_dir,
                                                                        "tokenizer and tokenizer_dir")):
            if a and b and a != b:
                raise EvalError(f"--model_args gives {names}, which differ; give one")
        checkpoint, tokenizer = checkpoint or ckpt, tokenizer or tokenizer_dir

        # lm-eval's command line passes --device (default "cuda:0") whether or not there is a GPU
        if not device or (str(device).startswith("cuda") and not torch.cuda.is_available()):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._device = torch.device(device)
        if model is None:
            if not checkpoint:
                raise EvalError("the gptkit lm-eval model needs --model_args checkpoint=DIR")
            model = load_model(checkpoint, map_location=self._device, tokenizer_dir=tokenizer)
            self.tok = model.tokenizer  # the tokenizer directory's, when given
        else:
            self.tok = Tokenizer.from_pretrained(tokenizer) if tokenizer else model.tokenizer
        self.model = model.eval()
        if self.tok is None:
            raise EvalError("the checkpoint has no tokenizer: add tokenizer=DIR to --model_args")
        try:  # lm-eval passes "auto" or a number as text
            self.batch_size = max(1, int(batch_size))
        except (TypeError, ValueError):
            self.batch_size = 16

    # ---- what TemplateLM needs ----------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        if self.tok.eot_id is None:
            raise EvalError("this tokenizer has no <|endoftext|> token, needed for empty contexts")
        return self.tok.eot_id

    @property
    def max_length(self) -> int:
        return self.model.config.block_size

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.tok.encode(string)

    def tok_decode(self, tokens: Sequence[int], **kwargs: Any) -> str:
        return self.tok.decode(list(tokens))

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        """(log P(continuation | context), greedy?) for each ((context, continuation), ctx ids, cont ids)."""
        L = self.max_length
        items = []
        for _, ctx, cont in requests:
            if len(cont) > L:
                raise EvalError(f"a continuation of {len(cont)} tokens does not fit the context ({L})")
            whole = (list(ctx) + list(cont))[-(L + 1):]  # left truncation, as lm-eval's HF model
            items.append((whole[:-1], whole[-len(cont):]))
        order = sorted(range(len(items)), key=lambda i: -len(items[i][0]))
        out: list[tuple[float, bool]] = [(0.0, False)] * len(items)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                T = len(items[chunk[0]][0])
                idx = torch.zeros(len(chunk), T, dtype=torch.long)
                for r, i in enumerate(chunk):
                    idx[r, :len(items[i][0])] = torch.tensor(items[i][0])
                logits = self.model(idx.to(self._device))  # (B, T, V)
                for r, i in enumerate(chunk):
                    inp, cont = items[i]
                    n, c = len(inp), len(cont)
                    logp = torch.log_softmax(logits[r, n - c:n].float(), dim=-1)  # (c, V)
                    tgt = torch.tensor(cont, device=logp.device)
                    ll = logp.gather(1, tgt.unsqueeze(1)).sum().item()
                    out[i] = (ll, bool((logp.argmax(-1) == tgt).all()))
        return out

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """Whole-document log-likelihoods through lm-eval's own disjoint rolling windows."""
        out = []
        for req in requests:
            (text,) = req.args[:1]
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                self.tok_encode(text), self.prefix_token_id, self.max_length, context_len=1)]
            scores = self._loglikelihood_tokens([(None, c, x) for c, x in windows])
            out.append(sum(v for v, _ in scores))
        return out

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, when asked) continuation up to the first stop string or max_gen_toks tokens."""

        out = []
        for req in requests:
            context, gen_kwargs = req.args[0], dict(req.args[1] if len(req.args) > 1 else {})
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.get("max_gen_toks", 256))
            temperature = float(gen_kwargs.get("temperature", 0.0)) if gen_kwargs.get("do_sample") else 0.0
            ids = (self.tok_encode(context) or [self.eot_token_id])[-self.max_length:]
            new: list[int] = []
            text = ""
            for nxt in stream(self.model, torch.tensor([ids], device=self._device), max_new, temperature=temperature):
                token = int(nxt)
                if token == self.tok.eot_id:
                    break
                new.append(token)
                text = self.tok_decode(new)
                if any(s in text for s in until):
                    break
            for s in until:
                text = text.split(s)[0]
            out.append(text)
        return out


def register() -> None:
    """Register GptkitLM as lm-eval's ``gptkit`` model (idempotent)."""
    import lm_eval.models  # noqa: F401  (fills the registry first: lm-eval only loads it into an empty registry)
    from lm_eval.api.registry import model_registry, register_model

    if MODEL_NAME not in model_registry:
        register_model(MODEL_NAME)(GptkitLM)


if __name__ != "__main__":
    register()


def main(argv: Sequence[str] | None = None) -> None:
    """lm-eval's own command line, with the gptkit model registered first."""
    from lm_eval.__main__ import cli_evaluate

    adapter.register()
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        cli_evaluate()
    except GptkitError as e:  # our mistakes-by-the-user (bad checkpoint, bad model_args) stay one line
        print(f"gptkit: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
