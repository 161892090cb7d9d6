"""What the CLI tests share: run `gptkit` in-process and check the one-line error of a user's mistake."""

from __future__ import annotations

from gptkit.cli import main


def run(capsys, *argv) -> tuple[int, str, str]:
    """`gptkit ARGV` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, err: str, *fragments: str) -> None:
    """A user's mistake: exit status 2 and exactly one line, `gptkit: error: ...`, holding every fragment."""
    assert rc == 2, (rc, err)
    assert "Traceback" not in err
    assert err.startswith("gptkit: error:"), err
    assert err.endswith("\n") and err.count("\n") == 1, err  # exactly one line
    for f in fragments:
        assert f in err, (f, err)


def save_char_ckpt(path):
    """A tiny character-level gptkit checkpoint at `path` (1 layer, width 8): enough to load, sample, evaluate."""
    from gptkit import GPT, GPTConfig
    from gptkit.tokenizer import Tokenizer

    tok = Tokenizer.train_char("hello world, the quick brown fox")
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8))
    model.tokenizer = tok
    model.save_pretrained(path)
    return path
