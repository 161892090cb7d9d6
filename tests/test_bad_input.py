"""User mistakes that used to lose work or print a traceback: each now stops with one line, `gptkit: error: ...`,
before anything is written or deleted."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import shutil
from pathlib import Path

import pytest

from cli_helpers import assert_one_line_error, run, save_char_ckpt
from gptkit.cli import main


@pytest.fixture
def char_ckpt(tmp_path) -> Path:
    return save_char_ckpt(tmp_path / "ckpt")


# ------------------------------------------------------------------------------------------- export-hf
def test_export_hf_refuses_to_overwrite_its_own_checkpoint(char_ckpt, tmp_path, capsys):
    before = sorted(p.name for p in char_ckpt.iterdir())
    rc, _, err = run(capsys, "export-hf", "--ckpt", char_ckpt, "--out", char_ckpt)
    assert_one_line_error(rc, err, "checkpoint being exported")
    assert sorted(p.name for p in char_ckpt.iterdir()) == before
    rc, _, err = run(capsys, "export-hf", "--ckpt", char_ckpt, "--out", tmp_path)  # the folder holding it
    assert_one_line_error(rc, err, "checkpoint being exported")
    assert char_ckpt.is_dir()


def test_export_hf_refuses_an_unrelated_directory_or_a_file(char_ckpt, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text("{}")
    rc, _, err = run(capsys, "export-hf", "--ckpt", char_ckpt, "--out", data)
    assert_one_line_error(rc, err, "not a `gptkit export-hf` output")
    assert (data / "manifest.json").read_text() == "{}"
    f = tmp_path / "some.txt"
    f.write_text("keep me")
    rc, _, err = run(capsys, "export-hf", "--ckpt", char_ckpt, "--out", f)
    assert_one_line_error(rc, err, "is not a directory")
    assert f.read_text() == "keep me"


def test_export_hf_replaces_an_earlier_export_and_the_export_samples(char_ckpt, tmp_path, capsys):
    out = tmp_path / "hf"
    assert run(capsys, "export-hf", "--ckpt", char_ckpt, "--out", out)[0] == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "gpt2"
    assert run(capsys, "export-hf", "--ckpt", char_ckpt, "--out", out)[0] == 0  # an earlier export: replaced
    rc, text, err = run(capsys, "sample", "--ckpt", out, "--prompt", "hello", "--max-new-tokens", "3",
                        "--seed", "0")
    assert rc == 0, err
    assert text.startswith("hello")


# ------------------------------------------------------------------------------------------ quickstart
@pytest.mark.parametrize("flags, fragment", [
    (["--max-iters", "0"], "--max-iters"), (["--tokens", "-1"], "--tokens"), (["--device", "tpu"], "tpu"),
    (["--resume"], "no quickstart run to resume"), (["--minutes", "nan"], "--minutes")])
def test_quickstart_checks_flags_before_copying_the_corpus(tmp_path, capsys, flags, fragment):
    out = tmp_path / "qs"
    rc, _, err = run(capsys, "quickstart", "--out", out, "--quiet", *flags)
    assert_one_line_error(rc, err, fragment)
    assert not out.exists()  # no corpus copied, nothing prepared


def test_quickstart_checks_the_prompt_before_training(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("abc abc abc\n" * 200)
    out = tmp_path / "qs"
    rc, _, err = run(capsys, "quickstart", "--input", corpus, "--out", out, "--max-iters", "1", "--quiet",
                     "--device", "cpu", "--prompt", "XYZ")
    last = err.splitlines()[-1] + "\n"  # after the "corpus: ..." progress line
    assert_one_line_error(rc, last, "--prompt", "'X'")
    assert "Traceback" not in err
    assert not out.exists()  # stopped before training, and what it had written for it removed
    keep = tmp_path / "keep"
    (keep / "mine").mkdir(parents=True)  # an --out that existed before: only what the command made goes
    rc, _, err = run(capsys, "quickstart", "--input", corpus, "--out", keep, "--max-iters", "1", "--quiet",
                     "--device", "cpu", "--prompt", "XYZ")
    assert rc == 2 and sorted(p.name for p in keep.iterdir()) == ["mine"]


def test_quickstart_says_a_corpus_too_small_in_its_own_terms(tmp_path, capsys):
    """train's error suggested a --block-size, which the quickstart does not take."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("abc abd\n" * 100)  # 800 characters: val has 81 of the 129 one context needs
    out = tmp_path / "qs"
    rc, _, err = run(capsys, "quickstart", "--input", corpus, "--out", out, "--max-iters", "1", "--quiet",
                     "--device", "cpu")
    assert_one_line_error(rc, err.splitlines()[-1] + "\n", "too small for the quickstart", "val 81",
                          "at least 1,290 characters")
    assert "--block-size" not in err and not out.exists()


def test_quickstart_resume_of_a_finished_run_samples_again(tmp_path, capsys):
    """`--resume` on a quickstart that has nothing left to train says so and samples (it crashed formatting a
    missing val loss, after rewriting the run's train_config.json)."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("abc abd abe\n" * 200)
    out = tmp_path / "qs"
    cmd = ["quickstart", "--input", corpus, "--out", out, "--max-iters", "1", "--quiet", "--device", "cpu",
           "--max-new-tokens", "3", "--prompt", "ab"]
    assert run(capsys, *cmd)[0] == 0
    saved = (out / "run" / "train_config.json").read_bytes()
    rc, text, err = run(capsys, *cmd, "--resume")
    assert rc == 0, err
    assert "nothing left to train" in err and text.startswith("ab")
    assert (out / "run" / "train_config.json").read_bytes() == saved


# ------------------------------------------------------------------------------------------ train --resume
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[list[str], Path]:
    """A 2-step char run over a small corpus, made once for the module, and the `gptkit train` command that made
    it (its --out last but one flag pair: cmd[4])."""
    tmp = tmp_path_factory.mktemp("trained")
    corpus = tmp / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 300)
    data = tmp / "data"
    assert main(["prepare", "--input", str(corpus), "--out", str(data), "--tokenizer-kind", "char", "--quiet"]) == 0
    out = tmp / "run"
    cmd = ["train", "--data", data, "--out", out, "--preset", "gpt-nano", "--block-size", "16", "--batch-size", "2",
           "--eval-iters", "1", "--device", "cpu", "--quiet"]
    assert main([str(a) for a in [*cmd, "--max-iters", "2"]]) == 0
    return cmd, out


@pytest.fixture
def tiny_run(trained, tmp_path) -> tuple[list[str], Path]:
    """A copy of the module's trained run for one test to resume or damage, and the command, now with its --out."""
    cmd, out = trained
    mine = tmp_path / "run"
    shutil.copytree(out, mine)
    return [*cmd[:4], mine, *cmd[5:]], mine


def test_a_resume_that_fails_before_its_first_step_leaves_the_runs_settings(tiny_run, capsys, monkeypatch):
    """train_config.json is rewritten only once a resumed run has trained a step: a resume that fails before (it
    wrote the rejected settings first, e.g. a --grad-accum the machine could not take) leaves it as it was."""
    import gptkit.train

    cmd, out = tiny_run
    saved = (out / "train_config.json").read_bytes()

    def fails(self, step):
        raise RuntimeError("the first step failed")

    monkeypatch.setattr(gptkit.train.Trainer, "step", fails)
    with pytest.raises(RuntimeError, match="first step failed"):
        run(capsys, *cmd, "--max-iters", "4", "--grad-accum", "3", "--resume")
    assert (out / "train_config.json").read_bytes() == saved
    monkeypatch.undo()
    assert run(capsys, *cmd, "--max-iters", "4", "--grad-accum", "3", "--resume")[0] == 0
    assert json.loads((out / "train_config.json").read_text())["grad_accum"] == 3


def test_a_resume_reads_a_damaged_metrics_file_and_refuses_bad_saved_settings(tiny_run, capsys):
    cmd, out = tiny_run
    with open(out / "metrics.jsonl", "ab") as f:
        f.write(b"\xff\xfe not json\n")  # a line cut or damaged: dropped, not a UnicodeDecodeError
    assert run(capsys, *cmd, "--max-iters", "3", "--resume")[0] == 0
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()][-1] == 3
    ckpt = sorted((out / "checkpoints").iterdir())[-1] / "config.json"
    config = json.loads(ckpt.read_text())
    config["train"]["batch_size"] = "x"
    ckpt.write_text(json.dumps(config))
    rc, _, err = run(capsys, *cmd, "--max-iters", "4", "--resume")
    assert_one_line_error(rc, err, "train.batch_size must be an integer")


# ------------------------------------------------------------------------------------------ the parser
@pytest.mark.parametrize("argv, fragments", [
    (["sample", "--ckpt", "x", "--seed", "abc"], ["--seed: invalid int value: 'abc'", "`gptkit sample --help`"]),
    (["serve", "--ckpt", "x", "--port", "abc"], ["--port"]),
    (["train", "--max-iters", "2.5"], ["--max-iters"]),
    (["scale", "fit", "--unit", "foo", "run"], ["--unit", "'foo'", "`gptkit scale fit --help`"]),
    (["nonexistent"], ["'nonexistent'", "`gptkit --help`"]),
    (["sample"], ["required: --ckpt"]),
    (["data"], ["`gptkit data` needs a command: clean, quality, dedup"]),
    (["data", "quality"], ["`gptkit data quality` needs a command: train, filter"])])
def test_the_parsers_own_errors_are_one_line(argv, fragments, capsys):
    """A flag of the wrong type, a missing required flag, an unknown or missing command: one `gptkit: error:`
    line naming the help to read, exit status 2 (argparse printed its 10-24 line usage block first)."""
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    assert_one_line_error(rc, capsys.readouterr().err, *fragments)


# ------------------------------------------------------------------------------------------ sizes
@pytest.mark.parametrize("flags, fragment", [
    (["--batch-size", "99999999999999999999"], "--batch-size 99999999999999999999 is out of range"),
    (["--grad-accum", "99999999999999999999"], "--grad-accum 99999999999999999999 is out of range"),
    (["--n-embd", "-99999999999999999999"], "--n-embd -99999999999999999999 is out of range"),
    (["--grad-accum", "3000000000"], "--grad-accum must be at most 2,147,483,647"),
    (["--batch-size", "2147483647"], "GiB of memory"),  # fits every check but the machine
    (["--n-layer", "1000", "--n-embd", "2048", "--n-head", "16"], "50,358,368,256 parameters")])
def test_sizes_past_what_torch_or_the_machine_can_hold_are_one_line(trained, flags, fragment, capsys, tmp_path,
                                                                    monkeypatch):
    """Sizes that overflowed inside torch or numpy (a traceback), or that the kernel's out-of-memory killer would
    have ended part way (no word at all), are refused before the run directory is made."""
    import gptkit.train

    monkeypatch.setattr(gptkit.train, "device_memory", lambda device: 24 * 2**30)  # this machine's, on any other
    cmd, _ = trained
    out = tmp_path / "big"
    rc, _, err = run(capsys, *cmd[:4], out, *cmd[5:], "--max-iters", "1", *flags)
    assert_one_line_error(rc, err, fragment)
    assert not out.exists()


def test_running_out_of_memory_part_way_is_one_line(tiny_run, capsys, monkeypatch):
    """torch's allocator failing inside a step (what a model or batch too large gives where no estimate caught it)
    is one line, `out of memory (...)`, exit 2."""
    import gptkit.train

    def fails(self, step):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 1099511627776 bytes.\nmore detail")

    monkeypatch.setattr(gptkit.train.Trainer, "step", fails)
    cmd, _ = tiny_run
    rc, _, err = run(capsys, *cmd, "--max-iters", "4", "--resume")
    assert_one_line_error(rc, err, "out of memory (", "can't allocate memory", "use a smaller model, batch")


@pytest.mark.parametrize("command", ["sample", "chat"])
def test_a_negative_top_k_is_one_line(command, char_ckpt, capsys):
    """`--top-k 0` means all tokens; a negative k was taken as 0 with exit 0 (Hugging Face refuses it too)."""
    extra = ["--prompt", "hello"] if command == "chat" else []
    rc, _, err = run(capsys, command, "--ckpt", char_ckpt, "--top-k", "-3", "--max-new-tokens", "2", *extra)
    assert_one_line_error(rc, err, "--top-k must be >= 0", "got -3")


@pytest.mark.parametrize("garbage", [b"not a checkpoint\n", b"PK\x03\x04cut", b"\x80\x02]q\x00."])
def test_resume_from_a_trainer_state_gptkit_did_not_write_is_one_line(tiny_run, garbage, capsys):
    """It printed torch's advice cut mid-sentence, pointing at the unsafe weights_only=False."""
    cmd, out = tiny_run
    (sorted((out / "checkpoints").iterdir())[-1] / "trainer_state.pt").write_bytes(garbage)
    rc, _, err = run(capsys, *cmd, "--max-iters", "4", "--resume")
    assert_one_line_error(rc, err, "not a trainer state gptkit wrote", "resume from an earlier checkpoint")
    assert "weights_only" not in err


def test_train_refuses_a_prepare_output_as_its_run_directory(trained, capsys):
    """A run inside prepared data: a later `prepare --out` there (a previous prepare output, so replaced) would
    delete its checkpoints."""
    cmd, _ = trained
    data = cmd[2]
    rc, _, err = run(capsys, *cmd[:4], data, *cmd[5:], "--max-iters", "1")
    assert_one_line_error(rc, err, "is a `gptkit prepare` output")
    assert not (Path(data) / "checkpoints").exists()


# ------------------------------------------------------------------------------------------ chat templates
@pytest.mark.parametrize("damage, fragment", [
    (lambda tok: (tok / "chat_template.jinja").write_bytes(b"\xff\xfe{{ x }}"), "chat_template.jinja: not UTF-8"),
    (lambda tok: (tok / "chat_template.jinja").write_text("{% for m in messages %}"),
     "its stored chat template is not valid Jinja")])
def test_a_damaged_stored_chat_template_is_one_line(char_ckpt, capsys, damage, fragment):
    """A stored template that is not UTF-8 was a traceback in every command that loads the model; one that is not
    valid Jinja started a server whose every chat request failed (blaming the client with a 400)."""
    damage(char_ckpt / "tokenizer")
    rc, _, err = run(capsys, "chat", "--ckpt", char_ckpt, "--prompt", "hello", "--max-new-tokens", "2")
    assert_one_line_error(rc, err, fragment)
    rc, _, err = run(capsys, "serve", "--ckpt", char_ckpt, "--port", "0")
    assert_one_line_error(rc, err, fragment)


def test_a_python_error_inside_a_chat_template_is_one_line(char_ckpt, capsys):
    from gptkit.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(char_ckpt / "tokenizer")
    tok.chat_template = "{% for m in messages %}{{ m.content + 1 }}{% endfor %}"
    tok.save(char_ckpt / "tokenizer")
    rc, _, err = run(capsys, "chat", "--ckpt", char_ckpt, "--prompt", "hello", "--max-new-tokens", "2")
    assert_one_line_error(rc, err, "the chat template failed: TypeError")


# ------------------------------------------------------------------------------------------ JSON limits
DEEP = "[" * 100_000 + "]" * 100_000  # json.loads: RecursionError, not a JSONDecodeError
BIG = '{"a": ' + "1" * 5_000 + "}"  # json.loads: ValueError, "Exceeds the limit (4300 digits)"


@pytest.mark.parametrize("text, fragment", [(DEEP, "nested too deeply"), (BIG, "more than 4,300 digits")])
def test_json_nested_too_deep_or_with_a_huge_number_is_one_line(char_ckpt, tmp_path, capsys, text, fragment):
    """Python's JSON reader fails on these with RecursionError or a bare ValueError, which every reader let through
    as a traceback: a checkpoint's config.json, its tokenizer file, a JSONL line of eval or fine-tuning data; the
    data passes skip such a line as they skip any bad one."""
    config = char_ckpt / "config.json"
    good = config.read_text()
    config.write_text(text)
    rc, _, err = run(capsys, "sample", "--ckpt", char_ckpt, "--max-new-tokens", "2")
    assert_one_line_error(rc, err, "config.json", fragment)
    config.write_text(good)
    (char_ckpt / "tokenizer" / "gptkit_tokenizer.json").write_text(text)
    rc, _, err = run(capsys, "sample", "--ckpt", char_ckpt, "--max-new-tokens", "2")
    assert_one_line_error(rc, err, "gptkit_tokenizer.json", fragment)
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "hello world", "label": "x"}\n' + text + "\n")
    rc, _, err = run(capsys, "finetune", "--ckpt", char_ckpt, "--format", "jsonl", "--task-type", "classification",
                     "--train", data, "--valid-from-train", "1", "--out", tmp_path / "ft")
    assert_one_line_error(rc, err, f"{data}:2: not valid JSON", fragment)
    rc, out, err = run(capsys, "data", "clean", "--input", data, "--out", tmp_path / "c.jsonl", "--quiet")
    assert rc == 0 and "Traceback" not in err
    assert [json.loads(line)["text"] for line in (tmp_path / "c.jsonl").read_text().splitlines()] == ["hello world"]


def test_the_memory_floor_counts_activation_checkpointing_and_16_bit_autocast(monkeypatch):
    """GPT-2 medium's shape at batch 24 on a 20 GiB machine: refused in float32 (32 GiB at the least), but not with
    --activation-checkpointing (each layer keeps its input only), the flag a user adds to fit; the advice names it."""
    import gptkit.train as T
    from gptkit.config import GPTConfig
    from gptkit.errors import MachineTooSmall
    from gptkit.options.train import TrainConfig

    monkeypatch.setattr(T, "device_memory", lambda device: 20 * 2**30)
    mc = GPTConfig(n_layer=24, n_head=16, n_embd=1024, block_size=1024)
    with pytest.raises(MachineTooSmall, match="or --activation-checkpointing$"):
        T.check_memory(TrainConfig(data="d", batch_size=24, dtype="float32"), mc, 1)
    T.check_memory(TrainConfig(data="d", batch_size=24, dtype="float32", activation_checkpointing=True), mc, 1)
    T.check_memory(TrainConfig(data="d", batch_size=24, dtype="auto"), mc, 1)  # bf16 where the CPU has it: 19 GiB
