"""`gptkit info` and the CLI's handling of bad input: one line `gptkit: error: ...` on stderr, a non-zero exit,
no traceback, and never code execution from a checkpoint file."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptkit import PRESETS, CheckpointError, GPTConfig
from cli_helpers import assert_one_line_error, run

# gpt2: 12 layers × 768, vocab 50257, context 1024.
GPT2_PARAMS = 124_439_808  # the released checkpoint
GPT2_NON_EMBEDDING = GPT2_PARAMS - 50257 * 768 - 1024 * 768  # 85,056,000
# 6 × (block params + vocabulary projection) + 12·L·d·T; block = 12·768² + 13·768 = 7,087,872
GPT2_FLOPS = 6 * (12 * 7_087_872 + 50257 * 768) + 12 * 12 * 768 * 1024  # 855,157,248




# ------------------------------------------------------------------------------------------------ info
def test_info_json_for_gpt2(capsys):
    rc, out, err = run(capsys, "info", "--preset", "gpt2", "--json")
    assert rc == 0 and err == ""
    r = json.loads(out)
    assert r["preset"] == "gpt2"
    assert r["params"] == GPT2_PARAMS
    assert r["non_embedding_params"] == GPT2_NON_EMBEDDING == 85_056_000
    assert r["flops_per_token"] == GPT2_FLOPS == 855_157_248
    assert (r["context"], r["n_layer"], r["n_head"], r["n_embd"], r["vocab_size"]) == (1024, 12, 12, 768, 50257)
    assert r["weights_bytes_fp32"] == 4 * GPT2_PARAMS


def test_info_json_lists_all_presets(capsys):
    rc, out, _ = run(capsys, "info", "--json")
    rows = json.loads(out)
    assert rc == 0 and [r["preset"] for r in rows] == list(PRESETS)
    for r in rows:
        c = GPTConfig.from_preset(r["preset"])
        assert (r["params"], r["non_embedding_params"], r["flops_per_token"]) == \
            (c.num_params, c.non_embedding_params, c.flops_per_token())


def test_info_table_lists_every_preset_in_full(capsys):
    rc, out, err = run(capsys, "info")
    assert rc == 0 and err == ""
    for name in PRESETS:  # whole names, even off a terminal (80 columns) where rich would truncate them
        assert f" {name} " in out, name
    assert "96×96×12288" in out


def test_info_text_for_one_preset(capsys):
    rc, out, _ = run(capsys, "info", "--preset", "gpt1")
    assert rc == 0
    assert "116,534,784" in out and "post-LN" in out and "context 512" in out


def save_run(run_dir: Path, config: GPTConfig, preset: str | None) -> Path:
    """A training run as `gptkit train` lays it out: train_config.json and checkpoints/step-N (random weights)."""
    from gptkit import GPT

    run_dir.mkdir(parents=True)
    if preset is not None:
        (run_dir / "train_config.json").write_text(json.dumps({"preset": preset, "n_embd": config.n_embd}))
    GPT(config).save_pretrained(run_dir / "checkpoints" / "step-10")
    return run_dir


def test_info_of_the_quickstart_run_says_where_it_differs_from_its_preset(tmp_path, capsys):
    from gptkit.quickstart import DEFAULTS

    shape = {k: DEFAULTS[k] for k in ("n_layer", "n_head", "n_embd", "block_size")}
    config = GPTConfig.from_preset("gpt-micro", vocab_size=65, **shape)  # what `gptkit quickstart` trains
    run_dir = save_run(tmp_path / "run", config, "gpt-micro")
    rc, out, err = run(capsys, "info", "--ckpt", run_dir)
    assert rc == 0 and err == ""
    assert "preset              gpt-micro (from " in out and str(run_dir / "train_config.json") in out
    assert "2 layers × 4 heads × 160 wide (head size 40), context 128, vocab 65" in out
    assert "differs from preset n_layer 2 (preset 4), n_embd 160 (preset 128), block_size 128 (preset 64), " \
           "vocab_size 65 (preset 50257)\n" in out
    rc, out, _ = run(capsys, "info", "--ckpt", run_dir / "checkpoints" / "step-10", "--json")
    r = json.loads(out)
    assert r["params"] == config.num_params and r["checkpoint"].endswith("step-10")
    assert r["differs_from_preset"] == {"n_layer": [2, 4], "n_embd": [160, 128], "block_size": [128, 64],
                                       "vocab_size": [65, 50257]}
    # the preset alone says how the quickstart departs from it
    rc, out, _ = run(capsys, "info", "--preset", "gpt-micro")
    assert "4 layers × 4 heads × 128 wide" in out and "quickstart` trains gpt-micro at 2×4×160, context 128" in out


def test_info_of_a_checkpoint_without_a_run(tmp_path, capsys):
    ckpt = tmp_path / "c"
    nano = GPTConfig.from_preset("gpt-nano", vocab_size=70)
    from gptkit import GPT

    GPT(nano).save_pretrained(ckpt)
    rc, out, _ = run(capsys, "info", "--ckpt", ckpt, "--json")  # no run: the preset of the same shape
    r = json.loads(out)
    assert (r["preset"], r["preset_from"], r["differs_from_preset"]) == ("gpt-nano", "the same shape",
                                                                         {"vocab_size": [70, 50257]})
    rc, out, _ = run(capsys, "info", "--ckpt", ckpt, "--preset", "gpt-micro", "--json")  # compared as asked
    r = json.loads(out)
    assert r["preset_from"] == "--preset" and r["differs_from_preset"]["n_layer"] == [3, 4]
    odd = tmp_path / "odd"
    GPT(GPTConfig(vocab_size=30, block_size=8, n_layer=1, n_head=1, n_embd=4)).save_pretrained(odd)
    rc, out, _ = run(capsys, "info", "--ckpt", odd)
    assert rc == 0 and "none of the presets has this shape" in out and "differs from preset" not in out
    rc, _, err = run(capsys, "info", "--ckpt", tmp_path / "missing")
    assert_one_line_error(rc, err, "does not exist")


def test_console_script_and_module_entry_points(tmp_path):
    """The one subprocess test: the installed `gptkit` script and `python -m gptkit` both work."""
    script = shutil.which("gptkit") or str(Path(sys.executable).parent / "gptkit")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for cmd in ([script], [sys.executable, "-m", "gptkit"]):
        p = subprocess.run([*cmd, "info", "--preset", "gpt2", "--json"], capture_output=True, text=True,
                           env=env, timeout=120)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["params"] == GPT2_PARAMS
    p = subprocess.run([script, "info", "--preset", "nope"], capture_output=True, text=True, env=env, timeout=120)
    assert_one_line_error(p.returncode, p.stderr, "unknown preset 'nope'")
    assert p.returncode == 2


# ------------------------------------------------------------------------------------------ bad input
def test_unknown_preset(capsys):
    rc, out, err = run(capsys, "info", "--preset", "gpt5")
    assert_one_line_error(rc, err, "unknown preset 'gpt5'", "gpt2-medium")
    assert out == ""


def _gptkit_ckpt(path: Path, **kw) -> Path:
    from gptkit import GPT

    cfg = dict(vocab_size=31, block_size=8, n_layer=1, n_head=3, n_embd=12)
    GPT(GPTConfig(**{**cfg, **kw})).save_pretrained(path)
    return path


def test_width_not_divisible_by_heads_in_gptkit_checkpoint(tmp_path, capsys):
    ckpt = _gptkit_ckpt(tmp_path / "ckpt")
    meta = json.loads((ckpt / "config.json").read_text())
    meta["model"].update(n_embd=50, n_head=3)
    (ckpt / "config.json").write_text(json.dumps(meta))
    rc, _, err = run(capsys, "export-hf", "--ckpt", str(ckpt), "--out", str(tmp_path / "out"))
    assert_one_line_error(rc, err, "n_embd (50)", "n_head (3)", "divisible")
    assert not (tmp_path / "out").exists()


def test_width_not_divisible_by_heads_in_hf_directory(tmp_path, capsys):
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(dict(model_type="gpt2", vocab_size=31, n_positions=8, n_layer=1,
                                                   n_head=3, n_embd=50)))
    torch.save({}, d / "pytorch_model.bin")
    rc, _, err = run(capsys, "export-hf", "--ckpt", str(d), "--out", str(tmp_path / "out"))
    assert_one_line_error(rc, err, "divisible")


@pytest.mark.parametrize("what", ["empty-dir", "dir-with-files", "missing", "a-file"])
def test_export_of_something_that_is_not_a_checkpoint(tmp_path, capsys, what):
    p = tmp_path / "thing"
    if what == "empty-dir":
        p.mkdir()
    elif what == "dir-with-files":
        p.mkdir()
        (p / "notes.txt").write_text("hello")
        (p / "checkpoints").mkdir()  # a run directory with no complete checkpoint yet
        (p / "checkpoints" / ".step-3.tmp-x").mkdir()
    elif what == "a-file":
        p.write_text("hello")
    rc, _, err = run(capsys, "export-hf", "--ckpt", str(p), "--out", str(tmp_path / "out"))
    expected = {"empty-dir": "is not a checkpoint", "dir-with-files": "is not a checkpoint",
                "missing": "does not exist", "a-file": "is not a directory"}[what]
    assert_one_line_error(rc, err, str(p), expected)
    assert not (tmp_path / "out").exists()


def test_unreadable_config_json(tmp_path, capsys):
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text("{not json")
    rc, _, err = run(capsys, "export-hf", "--ckpt", str(d), "--out", str(tmp_path / "out"))
    assert_one_line_error(rc, err, "config.json is not readable JSON")


def test_unsupported_hf_model_type(tmp_path, capsys):
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(dict(model_type="llama", vocab_size=31)))
    rc, _, err = run(capsys, "export-hf", "--ckpt", str(d), "--out", str(tmp_path / "out"))
    assert_one_line_error(rc, err, "model_type 'llama' is not supported")


def test_weights_that_do_not_fit_the_config(tmp_path, capsys):
    ckpt = _gptkit_ckpt(tmp_path / "ckpt")
    other = _gptkit_ckpt(tmp_path / "other", n_embd=24)
    shutil.copy(other / "model.safetensors", ckpt / "model.safetensors")
    rc, _, err = run(capsys, "export-hf", "--ckpt", str(ckpt), "--out", str(tmp_path / "out"))
    assert_one_line_error(rc, err, "has shape", "the config needs")


def test_safetensors_file_that_is_a_pickle(tmp_path, capsys):
    ckpt = _gptkit_ckpt(tmp_path / "ckpt")
    torch.save({"transformer.wte.weight": torch.zeros(31, 12)}, ckpt / "model.safetensors")
    rc, _, err = run(capsys, "export-hf", "--ckpt", str(ckpt), "--out", str(tmp_path / "out"))
    assert_one_line_error(rc, err, "model.safetensors is not a valid safetensors file")
    assert not (tmp_path / "out").exists()


def test_export_of_banded_checkpoint_is_refused(tmp_path, capsys):
    ckpt = _gptkit_ckpt(tmp_path / "ckpt", attention="alternating", band_width=4, n_layer=2)
    rc, _, err = run(capsys, "export-hf", "--ckpt", str(ckpt), "--out", str(tmp_path / "out"))
    assert_one_line_error(rc, err, "cannot export to transformers", "attention='alternating'")
    assert not (tmp_path / "out").exists()


class _Evil:
    """Unpickling this runs a shell command (creates a marker file): what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("container", ["raw-pickle", "raw-pickle-protocol2", "torch-save-zip"])
def test_malicious_pytorch_model_bin_is_refused(tmp_path, capsys, container):
    from gptkit import GPT

    # the payload is live: plain unpickling does run it
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Evil(probe)))
    assert probe.exists()

    marker = tmp_path / "PWNED"
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(dict(model_type="gpt2", vocab_size=31, n_positions=8, n_layer=1,
                                                   n_head=3, n_embd=12)))
    payload = {"transformer.wte.weight": _Evil(marker)}
    if container == "raw-pickle":
        (d / "pytorch_model.bin").write_bytes(pickle.dumps(payload))
    elif container == "raw-pickle-protocol2":  # opcodes the weights-only unpickler reads, up to the GLOBAL
        (d / "pytorch_model.bin").write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, d / "pytorch_model.bin")

    rc, _, err = run(capsys, "export-hf", "--ckpt", str(d), "--out", str(tmp_path / "out"))
    assert_one_line_error(rc, err, "refusing to load", "pytorch_model.bin")
    if container != "raw-pickle":  # the message names what was refused
        assert "system" in err, err
    with pytest.raises(CheckpointError, match="refusing to load"):
        GPT.from_pretrained(d)
    assert not marker.exists()
    assert not (tmp_path / "out").exists()
