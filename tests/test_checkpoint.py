"""gptkit.checkpoint: a saved model loads back with equal weights; a run's checkpoints are found in step order,
never half-written ones; a damaged or foreign file is one clear CheckpointError; pickles load weights-only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from gptkit import GPT, GPTConfig, Tokenizer
from gptkit import checkpoint as ck
from gptkit import model as model_module
from gptkit.errors import CheckpointError

CFG = GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16)


@pytest.fixture
def model() -> GPT:
    torch.manual_seed(0)
    m = GPT(CFG)
    m.tokenizer = Tokenizer.train_char("abcdefgh ij\n")
    return m


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg, msg
    return msg


def _names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


# ---------------------------------------------------------------------------------------------- round trip
def test_save_and_load_give_equal_weights_config_and_tokenizer(model, tmp_path):
    d = ck.save_model(model, tmp_path / "ckpt", tokenizer=model.tokenizer, extra={"step": 7})
    assert _names(d) == ["config.json", "model.safetensors", "tokenizer"]
    meta = json.loads((d / "config.json").read_text())
    assert meta["format"] == "gptkit" and meta["step"] == 7 and meta["model"] == CFG.to_dict()
    loaded = ck.load_model(d)
    assert loaded.config == CFG and not loaded.training
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert loaded.tokenizer.encode("abc hij") == model.tokenizer.encode("abc hij")
    x = torch.randint(0, CFG.vocab_size, (2, 9))
    model.eval()
    assert torch.equal(model(x), loaded(x))
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()  # ties restored


@pytest.mark.parametrize("overrides", [{}, {"pos": "sinusoidal", "norm": "post", "tie_embeddings": False}])
def test_loading_builds_no_random_init_and_restores_buffers_and_ties(tmp_path, overrides):
    cfg = GPTConfig(**{**CFG.to_dict(), **overrides})
    torch.manual_seed(1)
    saved = GPT(cfg).eval()
    ck.save_model(saved, tmp_path / "ckpt")
    loaded = ck.load_model(tmp_path / "ckpt")
    x = torch.randint(0, cfg.vocab_size, (2, 9))
    assert torch.equal(saved(x), loaded(x))
    tied = loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()
    assert tied == cfg.tie_embeddings
    if cfg.pos == "sinusoidal":  # a buffer, not in the file: recomputed
        assert torch.equal(loaded.transformer.pos_table, saved.transformer.pos_table)


def test_loading_a_checkpoint_does_not_import_the_compiler_stack(model, tmp_path):
    """A sampling or serving process that loads a model never compiles: building it must not import torch._dynamo
    (1 s; torch's meta-tensor initialisers did) nor sympy (0.3 s; Module.to_empty of meta tensors did)."""
    ck.save_model(model, tmp_path / "ckpt", tokenizer=model.tokenizer)
    code = ("import sys; from gptkit.checkpoint import load_model; m = load_model(sys.argv[1]); "
            "print(sorted(k for k in ('torch._dynamo', 'sympy') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ckpt")], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]", out


def test_initialisers_are_skipped_only_inside_meta_model_and_only_in_its_thread():
    import threading

    m = model_module.meta_model(CFG)
    assert all(p.is_meta for p in m.parameters())
    seen = {}
    with model_module._InitialisersSkipped():
        t = torch.full((5,), 7.0)
        torch.nn.init.normal_(t)
        seen["here"] = t.tolist()
        other = threading.Thread(target=lambda: seen.update(there=torch.nn.init.normal_(torch.full((5,), 7.0))))
        other.start()
        other.join()
    assert seen["here"] == [7.0] * 5  # skipped in this thread
    assert not torch.equal(seen["there"], torch.full((5,), 7.0))  # another thread initialises as usual
    after = torch.full((5,), 7.0)
    torch.nn.init.normal_(after)
    assert not torch.equal(after, torch.full((5,), 7.0))  # and this one again once it is left


def test_the_tied_head_is_stored_once(model, tmp_path):
    d = ck.save_model(model, tmp_path / "ckpt")
    with safe_open(str(d / ck.WEIGHTS), framework="pt") as f:
        keys = set(f.keys())
    assert "lm_head.weight" not in keys and "transformer.wte.weight" in keys
    assert not (d / ck.TOKENIZER_DIR).exists()  # no tokenizer given, none written


def test_a_failed_save_leaves_the_previous_checkpoint_whole(model, tmp_path, monkeypatch):
    d = ck.save_model(model, tmp_path / "ckpt")
    before = (d / ck.WEIGHTS).read_bytes()
    torch.manual_seed(1)
    other = GPT(CFG)

    def fail(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck, "write_config_files", fail)  # the weights are written, then the write fails
    with pytest.raises(OSError):
        ck.save_model(other, d)
    assert (d / ck.WEIGHTS).read_bytes() == before
    assert _names(tmp_path) == ["ckpt"]  # no temporary directory left behind


# ------------------------------------------------------------------------------------------ run directories
def _fake_ckpt(d: Path, weights: bool = True) -> None:
    d.mkdir(parents=True)
    (d / ck.CONFIG).write_text("{}")
    if weights:
        (d / ck.WEIGHTS).write_bytes(b"")


def test_list_checkpoints_in_step_order_without_unfinished_ones(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    for n in (10, 2, 100):
        _fake_ckpt(root / f"step-{n}")
    (root / "step-9" / ck.SHARDS_DIR).mkdir(parents=True)  # a sharded checkpoint counts
    _fake_ckpt(root / ".step-200.tmp-1a2b3c4d")  # being written: hidden until complete
    _fake_ckpt(root / "step-300", weights=False)  # no weights
    _fake_ckpt(root / "step-x")
    (root / "step-400").write_text("a file, not a checkpoint")
    found = ck.list_checkpoints(tmp_path / "run")
    assert [p.name for p in found] == ["step-2", "step-9", "step-10", "step-100"]  # numeric, not text, order
    assert ck.list_checkpoints(tmp_path / "nothing-here") == []
    assert ck.resolve_checkpoint(tmp_path / "run") == root / "step-100"


def test_resolve_checkpoint_explains_what_is_wrong(tmp_path):
    with pytest.raises(CheckpointError) as e:
        ck.resolve_checkpoint(tmp_path / "missing")
    assert "does not exist" in _one_line(e)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError) as e:
        ck.resolve_checkpoint(tmp_path / "file")
    assert "is not a directory" in _one_line(e)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError) as e:
        ck.resolve_checkpoint(tmp_path / "empty")
    assert "is not a checkpoint" in _one_line(e)


# ------------------------------------------------------------------------------------------ damaged files
def test_a_cut_weights_file_is_one_line(model, tmp_path):
    d = ck.save_model(model, tmp_path / "ckpt")
    w = d / ck.WEIGHTS
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(CheckpointError) as e:
        ck.load_model(d)
    assert "is not a valid safetensors file" in _one_line(e) and str(w) in str(e.value)


def test_missing_weights_are_one_line(model, tmp_path):
    d = ck.save_model(model, tmp_path / "ckpt")
    (d / ck.WEIGHTS).unlink()
    with pytest.raises(CheckpointError) as e:
        ck.load_model(d)
    assert _one_line(e) == f"{d} has no {ck.WEIGHTS}"


def test_weights_of_another_shape_are_one_line(model, tmp_path):
    d = ck.save_model(model, tmp_path / "ckpt")
    meta = json.loads((d / ck.CONFIG).read_text())
    meta["model"]["n_embd"] = 32
    (d / ck.CONFIG).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as e:
        ck.load_model(d)
    assert "has shape" in _one_line(e) and "the config needs" in str(e.value)
    sd = ck.model_state_dict(model)
    del sd["transformer.ln_f.weight"]
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as e:
        ck.build_model(CFG, sd, "src")
    assert "missing ['transformer.ln_f.weight']" in _one_line(e) and "unexpected ['extra.weight']" in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("{not json", "is not readable JSON"),
    (b"\xff\xfe{}", "is not readable JSON"),
    ("[1, 2]", "does not hold a JSON object"),
])
def test_read_config_json_errors(tmp_path, text, message):
    p = tmp_path / ck.CONFIG
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(CheckpointError) as e:
        ck.read_config_json(tmp_path)
    assert message in _one_line(e) and str(p) in str(e.value)
    with pytest.raises(CheckpointError, match="is not readable JSON"):
        ck.read_config_json(tmp_path / "absent")


def test_newer_format_and_bad_model_config_are_refused(model, tmp_path):
    d = ck.save_model(model, tmp_path / "ckpt")
    meta = json.loads((d / ck.CONFIG).read_text())
    with pytest.raises(CheckpointError) as e:
        ck.checkpoint_config(d, {**meta, "format_version": ck.FORMAT_VERSION + 1})
    assert "newer gptkit" in _one_line(e)
    for bad in ("2", None, 1.5):  # a hand-edited file: one line, not Python's TypeError
        with pytest.raises(CheckpointError) as e:
            ck.checkpoint_config(d, {**meta, "format_version": bad})
        assert "format_version must be an integer" in _one_line(e)
    with pytest.raises(CheckpointError) as e:
        ck.checkpoint_config(d, {**meta, "model": {**meta["model"], "n_head": 3}})  # 16 is not divisible by 3
    assert "bad model config" in _one_line(e)
    with pytest.raises(CheckpointError, match="bad model config"):
        ck.checkpoint_config(d, {k: v for k, v in meta.items() if k != "model"})


def test_an_incomplete_sharded_checkpoint_is_refused(tmp_path):
    (tmp_path / ck.SHARDS_DIR).mkdir()
    (tmp_path / ck.SHARDS_DIR / "rank0.safetensors").write_bytes(b"12345")
    ck.check_shards(tmp_path, {"shards": {"rank0.safetensors": 5}})
    with pytest.raises(CheckpointError) as e:
        ck.check_shards(tmp_path, {"shards": {"rank0.safetensors": 5, "rank1.safetensors": 5}})
    assert "rank1.safetensors is missing" in _one_line(e)
    with pytest.raises(CheckpointError, match="not the size it was written at"):
        ck.check_shards(tmp_path, {"shards": {"rank0.safetensors": 6}})
    with pytest.raises(CheckpointError, match="does not list"):
        ck.check_shards(tmp_path, {})


# ------------------------------------------------------------------------------------------ pickles
class _Payload:
    """An object whose unpickling would run code: it creates a file named in its state."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pytorch_bin_loads_weights_only(model, tmp_path):
    sd = ck.model_state_dict(model)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    back = ck.read_state_dict(tmp_path / "pytorch_model.bin")
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)


def test_a_pickle_carrying_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"w": torch.zeros(2), "evil": _Payload(str(marker))}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as e:
        ck.read_state_dict(tmp_path / "pytorch_model.bin")
    assert "refusing to load" in _one_line(e) and "weights_only=True" in str(e.value)
    assert not marker.exists()


def test_a_pickle_that_is_not_a_dict_of_tensors_is_refused(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.bin")
    with pytest.raises(CheckpointError) as e:
        ck.read_state_dict(tmp_path / "list.bin")
    assert "does not hold a dict of tensors" in _one_line(e)
    (tmp_path / "junk.bin").write_bytes(b"not a pickle at all")
    with pytest.raises(CheckpointError, match="refusing to load"):
        ck.read_state_dict(tmp_path / "junk.bin")
