"""Checkpoints a user broke by hand or on the way: a config.json field of the wrong type or range (gptkit's own or
Hugging Face's), weights that do not fit their config, a trainer_state.pt that is not one. Each stops with one line,
`gptkit: error: ...`, that names the field or the file, before anything is written."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
from pathlib import Path

import pytest
import torch

from cli_helpers import assert_one_line_error, run, save_char_ckpt
from gptkit.checkpoint import read_trainer_state
from gptkit.config import FIELD_RULES, GPTConfig
from gptkit.errors import CheckpointError

SAMPLE = ("--max-new-tokens", "3", "--device", "cpu", "--seed", "0")


@pytest.fixture
def char_ckpt(tmp_path) -> Path:
    return save_char_ckpt(tmp_path / "ckpt")


@pytest.fixture
def hf_dir(char_ckpt, tmp_path, capsys) -> Path:
    out = tmp_path / "hf"
    assert run(capsys, "export-hf", "--ckpt", char_ckpt, "--out", out)[0] == 0
    return out


def edit_config(directory: Path, edit) -> Path:
    """Rewrite directory/config.json with `edit(config dict)` applied."""
    meta = json.loads((directory / "config.json").read_text())
    edit(meta)
    (directory / "config.json").write_text(json.dumps(meta))
    return directory


def set_model_field(name, value):
    return lambda meta: meta["model"].__setitem__(name, value)


# ------------------------------------------------------------------------------- gptkit config.json fields
@pytest.mark.parametrize("name, value, says", [
    ("layer_norm_eps", None, "layer_norm_eps must be a positive number, got null"),
    ("layer_norm_eps", "1e-5", 'layer_norm_eps must be a positive number, got "1e-5"'),
    ("layer_norm_eps", -1, "layer_norm_eps must be a positive number, got -1"),
    ("layer_norm_eps", 0, "layer_norm_eps must be a positive number, got 0"),
    ("init_std", "x", 'init_std must be a number >= 0, got "x"'),
    ("embd_pdrop", "x", 'embd_pdrop must be a number in [0, 1), got "x"'),
    ("resid_pdrop", "x", 'resid_pdrop must be a number in [0, 1), got "x"'),
    ("attn_pdrop", True, "attn_pdrop must be a number in [0, 1), got true"),
    ("final_norm", "x", 'final_norm must be true or false, got "x"'),
    ("tie_embeddings", "no", 'tie_embeddings must be true or false, got "no"'),
    ("bias", 1, "bias must be true or false, got 1"),
    ("n_layer", True, "n_layer must be a positive integer, got true"),
    ("n_inner", "32", 'n_inner must be a positive integer or null, got "32"'),
    ("norm", ["pre"], 'norm must be one of pre, post, got ["pre"]'),
])
def test_a_badly_typed_model_field_is_named(char_ckpt, capsys, name, value, says):
    edit_config(char_ckpt, set_model_field(name, value))
    rc, _, err = run(capsys, "sample", "--ckpt", char_ckpt, *SAMPLE)
    assert_one_line_error(rc, err, f"bad model config in {char_ckpt / 'config.json'}: {says}")


@pytest.mark.parametrize("edit, says", [
    (lambda meta: meta.pop("model"), 'it has no "model" object'),
    (lambda meta: meta.__setitem__("model", [1]), "the model config must be an object of GPTConfig fields, got [1]"),
    (lambda meta: meta.__setitem__("model", None), "the model config must be an object of GPTConfig fields, got null"),
])
def test_a_missing_or_malformed_model_section_is_named(char_ckpt, capsys, edit, says):
    edit_config(char_ckpt, edit)
    rc, _, err = run(capsys, "sample", "--ckpt", char_ckpt, *SAMPLE)
    assert_one_line_error(rc, err, "bad model config in", says)


@pytest.mark.parametrize("command", [
    ("sample", *SAMPLE), ("chat", "--prompt", "he", *SAMPLE), ("info",), ("export-hf", "--out", "{tmp}/hf"),
])
def test_every_command_that_loads_a_checkpoint_refuses_a_bad_field(char_ckpt, tmp_path, capsys, command):
    edit_config(char_ckpt, set_model_field("layer_norm_eps", None))
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, _, err = run(capsys, command[0], "--ckpt", char_ckpt, *(a.format(tmp=tmp_path) for a in command[1:]))
    assert_one_line_error(rc, err, "layer_norm_eps must be a positive number, got null")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_train_init_from_refuses_a_bad_field_before_writing(char_ckpt, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world, the quick brown fox\n" * 40)
    data = tmp_path / "data"
    assert run(capsys, "prepare", "--input", corpus, "--out", data, "--tokenizer-kind", "char", "--quiet")[0] == 0
    edit_config(char_ckpt, set_model_field("init_std", "x"))
    out = tmp_path / "run"
    rc, _, err = run(capsys, "train", "--data", data, "--init-from", char_ckpt, "--out", out, "--max-iters", "1",
                     "--device", "cpu", "--quiet")
    assert_one_line_error(rc, err, 'init_std must be a number >= 0, got "x"')
    assert not out.exists()


def test_an_integer_passes_where_a_number_is_asked(char_ckpt, capsys):
    edit_config(char_ckpt, lambda meta: meta["model"].update(layer_norm_eps=1, init_std=0, embd_pdrop=0))
    rc, _, err = run(capsys, "sample", "--ckpt", char_ckpt, *SAMPLE)
    assert rc == 0, err


def test_every_config_field_has_one_rule():
    import dataclasses

    assert set(FIELD_RULES) == {f.name for f in dataclasses.fields(GPTConfig)}
    with pytest.raises(ValueError, match="n_head must be a positive integer, got true"):
        GPTConfig(n_head=True, n_embd=8)  # True == 1 divides every width: only the rule stops it
    assert GPTConfig(layer_norm_eps=1, attn_pdrop=0, init_std=1).layer_norm_eps == 1


# ---------------------------------------------------------------------------- Hugging Face config.json
@pytest.mark.parametrize("key, value, says", [
    ("layer_norm_epsilon", None, "layer_norm_epsilon must be a positive number, got null"),
    ("layer_norm_epsilon", "x", 'layer_norm_epsilon must be a positive number, got "x"'),
    ("initializer_range", "x", 'initializer_range must be a number >= 0, got "x"'),
    ("resid_pdrop", "x", 'resid_pdrop must be a number in [0, 1), got "x"'),
    ("embd_pdrop", 2, "embd_pdrop must be a number in [0, 1), got 2"),
    ("tie_word_embeddings", "x", 'tie_word_embeddings must be true or false, got "x"'),
    ("n_layer", True, "n_layer must be a positive integer, got true"),
    ("n_positions", 16.0, "n_positions must be a positive integer, got 16.0"),
    ("n_inner", "32", 'n_inner must be a positive integer or null, got "32"'),
])
def test_a_badly_typed_hf_field_is_named_as_hf_names_it(hf_dir, capsys, key, value, says):
    edit_config(hf_dir, lambda meta: meta.__setitem__(key, value))
    for command in (("sample", "--ckpt", hf_dir, *SAMPLE), ("info", "--ckpt", hf_dir)):
        rc, _, err = run(capsys, *command)
        assert_one_line_error(rc, err, f"bad model config in {hf_dir}/config.json: {says}")


def test_an_hf_activation_that_is_not_a_string_is_refused(hf_dir, capsys):
    edit_config(hf_dir, lambda meta: meta.__setitem__("activation_function", ["gelu"]))
    rc, _, err = run(capsys, "sample", "--ckpt", hf_dir, *SAMPLE)
    assert_one_line_error(rc, err, "activation ['gelu'] is not a GELU")


# ------------------------------------------------------------------------------------ info checks weights
def cut_weights(d: Path) -> None:
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])


@pytest.mark.parametrize("damage, says", [
    (lambda d: (d / "model.safetensors").write_text("First Citizen:\nBefore we proceed any further\n" * 20),
     "model.safetensors is not a valid safetensors file"),
    (cut_weights, "model.safetensors is not a valid safetensors file"),
    (lambda d: edit_config(d, lambda meta: meta["model"].update(n_embd=16)), "the config needs (48,)"),
    (lambda d: edit_config(d, lambda meta: meta["model"].update(n_layer=2)), "weights do not match the config"),
    (lambda d: (d / "model.safetensors").unlink(), "has no model.safetensors"),
])
def test_info_refuses_weights_that_sample_refuses(char_ckpt, capsys, damage, says):
    damage(char_ckpt)
    for command in ("info", "sample"):
        rc, _, err = run(capsys, command, "--ckpt", char_ckpt, *(SAMPLE if command == "sample" else ()))
        assert_one_line_error(rc, err, says)


def test_info_refuses_hf_weights_of_another_shape(hf_dir, capsys):
    edit_config(hf_dir, lambda meta: meta.update(n_embd=16))
    rc, _, err = run(capsys, "info", "--ckpt", hf_dir)
    assert_one_line_error(rc, err, "the config needs")


def test_info_reads_only_the_weights_header(char_ckpt, capsys, monkeypatch):
    import safetensors.torch

    def no_loading(*a, **k):
        raise AssertionError("info loaded the weights")

    monkeypatch.setattr(safetensors.torch, "load_file", no_loading)
    rc, out, err = run(capsys, "info", "--ckpt", char_ckpt)
    assert rc == 0, err
    assert "1 layers × 2 heads × 8 wide" in out


# --------------------------------------------------------------------------------------- trainer_state.pt
@pytest.mark.parametrize("write", [
    lambda p: p.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n"),
    lambda p: (torch.save({"step": 3, "optimizer": {}}, p), p.write_bytes(p.read_bytes()[:100])),
    lambda p: p.write_bytes(b"\x80\x04\x95" + bytes(range(200))),
    lambda p: torch.save([1, 2, 3], p),
])
def test_a_trainer_state_gptkit_did_not_write_is_refused_without_torch_advice(tmp_path, write):
    path = tmp_path / "trainer_state.pt"
    write(path)
    with pytest.raises(CheckpointError) as e:
        read_trainer_state(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"{path} cannot be read: it is not a trainer state gptkit wrote" in msg
    assert "weights_only" not in msg and "torch.load" not in msg


def test_a_missing_trainer_state_says_so_and_a_good_one_reads(tmp_path):
    path = tmp_path / "trainer_state.pt"
    with pytest.raises(CheckpointError, match="trainer_state.pt cannot be read \\(No such file or directory\\)"):
        read_trainer_state(path)
    torch.save({"step": 3, "optimizer": {"state": {}}}, path)
    assert read_trainer_state(path)["step"] == 3


# ------------------------------------------------------------------------------ a sharded HF checkpoint
def shard_hf_weights(hf_dir: Path) -> dict:
    """Split hf_dir/model.safetensors into two files and a model.safetensors.index.json, as transformers'
    save_pretrained does for large models; returns the index."""
    from safetensors.torch import load_file, save_file

    sd = load_file(str(hf_dir / "model.safetensors"))
    names = sorted(sd)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in halves.items():
        save_file({k: sd[k] for k in keys}, str(hf_dir / file))
    (hf_dir / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {k: f for f, keys in halves.items() for k in keys}}
    (hf_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    return index


@pytest.mark.parametrize("damage, fragment", [
    (lambda index: "{", "is not a safetensors index"),
    (lambda index: json.dumps({"metadata": {}}), "is not a safetensors index"),
    (lambda index: json.dumps({"weight_map": [1, 2]}), "is not a safetensors index"),
    (lambda index: json.dumps({"weight_map": {}}), "the weight_map names no file"),
    (lambda index: json.dumps({"weight_map": {k: "../x.safetensors" for k in index["weight_map"]}}),
     "must name files in its directory, got '../x.safetensors'")])
def test_a_sharded_hf_checkpoint_loads_and_a_damaged_index_is_one_line(hf_dir, capsys, damage, fragment):
    index = shard_hf_weights(hf_dir)
    rc, text, err = run(capsys, "sample", "--ckpt", hf_dir, "--prompt", "he", *SAMPLE)
    assert rc == 0 and text.startswith("he"), err
    (hf_dir / "model.safetensors.index.json").write_text(damage(index))
    rc, _, err = run(capsys, "sample", "--ckpt", hf_dir, "--prompt", "he", *SAMPLE)
    assert_one_line_error(rc, err, "model.safetensors.index.json", fragment)


# ------------------------------------------------------------------------------------------ NaN weights
def test_weights_with_nan_are_refused_naming_the_tensor(char_ckpt, tmp_path, capsys):
    """A checkpoint whose embedding is NaN sampled end-of-text with exit 0, exported with exit 0, and
    `train --init-from` blamed the learning rate."""
    from safetensors.torch import load_file, save_file

    sd = load_file(str(char_ckpt / "model.safetensors"))
    sd["transformer.wte.weight"][3, :2] = float("nan")
    save_file(sd, str(char_ckpt / "model.safetensors"))
    fragment = "transformer.wte.weight holds 2 NaN or infinite values"
    rc, _, err = run(capsys, "sample", "--ckpt", char_ckpt, "--prompt", "he", *SAMPLE)
    assert_one_line_error(rc, err, fragment)
    rc, _, err = run(capsys, "export-hf", "--ckpt", char_ckpt, "--out", tmp_path / "hf")
    assert_one_line_error(rc, err, fragment)
    assert not (tmp_path / "hf").exists()
