"""`gptkit chat`: driven through a pseudo-terminal (pexpect), the way a person types; the replies are checked
against a ChatSession on the same checkpoint in this process, which uses the server's chat template."""

import os
import subprocess
import sys

import pytest
import torch

from gptkit import GPT, GPTConfig, Tokenizer
from gptkit.chat import ChatSession
from gptkit.chat_template import ChatTemplate
from gptkit.checkpoint import load_model
from gptkit.errors import GptkitError
from gptkit.generate import SamplingParams, complete, prepare_for_inference

pexpect = pytest.importorskip("pexpect", reason="needs pexpect (pip install 'gptkit[test]')")

TEXT = "the quick brown fox jumps over the lazy dog\nSystem: User: Assistant: 0123456789"
BLOCK, REPLY = 96, 14


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tok = Tokenizer.train_char(TEXT)
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32))
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(8.0)  # peaked distributions: varied greedy text
        m.transformer.wte.weight[tok.eot_id] = 0  # greedy replies do not end at once on <|endoftext|>
    m.tokenizer = tok
    path = tmp_path_factory.mktemp("chat") / "ckpt"
    m.save_pretrained(path)
    return path


def session(ckpt, **kw) -> ChatSession:
    model = prepare_for_inference(load_model(ckpt))  # as the command loads it
    return ChatSession(model, model.tokenizer, SamplingParams(max_new_tokens=REPLY, temperature=0.0), **kw)


def ask(s: ChatSession, text: str) -> tuple[str, int]:
    drops: list[int] = []
    return "".join(s.reply(text, on_drop=drops.append)), sum(drops)


def env() -> dict:
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "HF_HUB_OFFLINE": "1"}


def test_a_reply_is_the_template_prompt_continued(ckpt):
    s = session(ckpt, system="the fox")
    reply, dropped = ask(s, "o dog")
    prompt = ChatTemplate().render([{"role": "system", "content": "the fox"}, {"role": "user", "content": "o dog"}])
    tok = s.tokenizer
    want = complete(s.model, [prompt], SamplingParams(max_new_tokens=REPLY, temperature=0.0, stop=("\nUser:",),
                                                      stop_token_ids=(tok.eot_id,)), tokenizer=tok)[0].text
    assert reply == want and len(reply) > 3 and dropped == 0
    assert s.history == [{"role": "user", "content": "o dog"}, {"role": "assistant", "content": want}]


def test_history_keeps_within_the_context_dropping_the_oldest_turns(ckpt):
    s = session(ckpt)
    drops = 0
    for i in range(8):
        _, d = ask(s, f"the {i} fox")
        drops += d
        ids, _ = s.prompt("next")
        assert len(ids) + 8 <= BLOCK  # there is always room for a reply
    assert drops >= 2 and s.history[-2] == {"role": "user", "content": "the 7 fox"}
    assert len(s.history) < 16
    with pytest.raises(GptkitError, match="too long"):
        s.prompt("fox " * 40)
    assert s.command("/clear") == "(conversation cleared)" and s.history == []
    assert s.command("/temperature 0.5") == "(temperature 0.5)" and s.params.temperature == 0.5
    assert "needs a number" in s.command("/temperature -3") and s.params.temperature == 0.5
    assert "unknown command" in s.command("/nope") and s.command("/quit") is None


def crlf(text: str) -> str:
    return text.replace("\n", "\r\n")


def test_interactive_chat_in_a_terminal(ckpt):
    mirror = session(ckpt)
    child = pexpect.spawn(sys.executable, ["-m", "gptkit", "chat", "--ckpt", str(ckpt), "--max-new-tokens",
                                           str(REPLY), "--temperature", "0"], env=env(), encoding="utf-8",
                          timeout=120, dimensions=(40, 200))
    try:
        child.expect_exact(f"context {BLOCK} tokens")
        saw_drop = False
        for i in range(6):
            child.expect_exact("> ")
            child.sendline(f"the {i} dog")
            reply, dropped = ask(mirror, f"the {i} dog")
            if dropped:
                child.expect_exact(f"(context full: dropped the oldest {dropped} turn")
                saw_drop = True
            child.expect_exact(crlf(reply) + "\r\n")  # streamed to the terminal as the mirror computed it
        assert saw_drop
        child.expect_exact("> ")
        child.sendline("/temperature warm")
        child.expect_exact("(/temperature needs a number")
        child.expect_exact("> ")
        child.sendline("/clear")
        child.expect_exact("(conversation cleared)")
        child.expect_exact("> ")
        child.sendline("the 0 dog")  # a fresh conversation: the first reply again
        child.expect_exact(crlf(ask(session(ckpt), "the 0 dog")[0]) + "\r\n")
        child.expect_exact("> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_one_reply_with_prompt_for_scripts(ckpt):
    r = subprocess.run([sys.executable, "-m", "gptkit", "chat", "--ckpt", str(ckpt), "--prompt", "o fox",
                        "--system", "the dog", "--max-new-tokens", str(REPLY), "--temperature", "0"],
                       env=env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ask(session(ckpt, system="the dog"), "o fox")[0] + "\n"


@pytest.mark.parametrize("flags, fragment", [(["--temperature", "-1"], "--temperature"),
                                             (["--max-new-tokens", "0"], "--max-new-tokens"),
                                             (["--top-p", "0"], "--top-p")])
def test_bad_flags_are_one_line(ckpt, capsys, flags, fragment):
    from gptkit.cli import main

    assert main(["chat", "--ckpt", str(ckpt), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptkit: error:") and err.count("\n") == 1 and fragment in err, err


def test_top_k_zero_means_all_tokens_as_in_sample(ckpt, capsys):
    from gptkit.cli import main

    def reply(*flags):
        assert main(["chat", "--ckpt", str(ckpt), "--prompt", "o fox", "--max-new-tokens", str(REPLY),
                     "--seed", "3", *flags]) == 0
        return capsys.readouterr().out

    free = reply()
    assert reply("--top-k", "0") == free  # no filter, as `gptkit sample --top-k 0`
    assert reply("--top-k", "1") == reply("--temperature", "0")  # and a real k still filters


def test_a_piped_chat_names_bytes_that_are_not_utf8_and_its_exit_status_says_a_message_failed(ckpt):
    """From a pipe a byte 0xff came through as the 'character' '\\udcff', and a chat whose every message failed
    still exited 0; the good messages are still answered."""
    r = subprocess.run([sys.executable, "-m", "gptkit", "chat", "--ckpt", str(ckpt), "--max-new-tokens", "3",
                        "--temperature", "0"], env=env(), input=b"the \xff dog\nthe 0 dog\n", capture_output=True,
                       timeout=120)
    err = r.stderr.decode()
    assert "gptkit: error: the message is not UTF-8 text (byte 0xff)" in err and "udcff" not in err, err
    assert r.returncode == 2 and r.stdout.count(b"\n") >= 1
    ok = subprocess.run([sys.executable, "-m", "gptkit", "chat", "--ckpt", str(ckpt), "--max-new-tokens", "3"],
                        env=env(), input=b"the 0 dog\n", capture_output=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
