"""`gptkit chat`: a conversation in the terminal, rendered through the same chat template as the server's
/v1/chat/completions (gptkit.chat_template), each reply streamed as it is generated.

The history is kept within the model's context: before each reply, the oldest turns are dropped (and the user is
told) until the rendered conversation plus room for the reply fits. Commands: /clear, /temperature X, /quit
(Ctrl-D also quits; Ctrl-C stops a reply).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from .chat_template import ChatTemplate
from .errors import GptkitError
from .generate import SamplingParams, iter_generations

if TYPE_CHECKING:
    from .model import GPT
    from .tokenizer import Tokenizer

MIN_REPLY = 8
"""Fewest tokens a reply gets room for before a turn must be dropped."""
HELP = "commands: /clear forgets the conversation, /temperature X sets the temperature, /quit ends (or Ctrl-D)"


@dataclass
class ChatSession:
    """A conversation with `model`: the system message, the turns so far, and how replies are sampled."""

    model: GPT
    tokenizer: Tokenizer
    params: SamplingParams
    system: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)
    template: ChatTemplate | None = None

    def __post_init__(self) -> None:
        if self.template is None:
            self.template = ChatTemplate.of(self.tokenizer)
        eot = self.tokenizer.eot_id
        self.params = dataclasses.replace(self.params, stop=self.params.stop or self.template.stop,
                                          stop_token_ids=(eot,) if eot is not None else ())

    def prompt(self, user: str) -> tuple[list[int], int]:
        """The token ids of the conversation with `user`'s new message, ready for the reply, and how many of
        the oldest turns (a user message and its reply each) must be left out to leave the reply room."""
        block = self.model.config.block_size
        room = min(self.params.max_new_tokens, MIN_REPLY)
        for dropped in range(len(self.history) // 2 + 1):
            messages = [{"role": "system", "content": self.system}] if self.system else []
            messages += self.history[2 * dropped:] + [{"role": "user", "content": user}]
            text = self.template.render(messages)
            ids = (self.tokenizer.encode(text) if self.template.source is None
                   else self.tokenizer.encode(text, allowed_special="all"))
            if len(ids) + room <= block:
                return ids, dropped
        raise GptkitError(f"the message is too long: {len(ids)} tokens with the chat template, and the model's "
                          f"context is {block}")

    def reply(self, user: str, on_drop: Callable[[int], None] = lambda n: None) -> Iterator[str]:
        """Stream the assistant's reply to `user` (pieces of text), first forgetting the oldest turns that no
        longer fit (`on_drop(n)` tells); the turn joins the history when it ends (also when the caller stops
        early, with what was generated)."""
        ids, dropped = self.prompt(user)
        if dropped:
            del self.history[:2 * dropped]
            on_drop(dropped)
        room = self.model.config.block_size - len(ids)
        params = dataclasses.replace(self.params, max_new_tokens=min(self.params.max_new_tokens, room))
        text = ""
        try:
            for ev in iter_generations(self.model, [ids], params, tokenizer=self.tokenizer):
                text += ev.text
                yield ev.text
        finally:
            self.history += [{"role": "user", "content": user}, {"role": "assistant", "content": text}]

    def command(self, line: str) -> str | None:
        """Run a /command; return what to tell the user, or None for /quit."""
        name, _, arg = line.strip().partition(" ")
        if name in ("/quit", "/exit"):
            return None
        if name == "/clear":
            self.history.clear()
            return "(conversation cleared)"
        if name == "/temperature":
            try:
                value = float(arg)
                self.params = dataclasses.replace(self.params, temperature=value).validate()
            except (ValueError, GptkitError):
                return f"(/temperature needs a number in [0, 100], got {arg.strip()!r})"
            return f"(temperature {value:g})"
        return f"(unknown command {name}; {HELP})"


def utf8_text(text: str) -> str:
    """`text` as typed, or a GptkitError naming the first byte that was not UTF-8 (Python reads such a byte from a
    pipe or the command line as a lone surrogate, U+DC80-U+DCFF, which no tokenizer knows)."""
    bad = next((c for c in text if "\udc80" <= c <= "\udcff"), None)
    if bad is not None:
        raise GptkitError(f"the message is not UTF-8 text (byte {ord(bad) - 0xDC00:#04x})")
    return text


def run(session: ChatSession, prompt: str | None = None, out: TextIO | None = None,
        err: TextIO | None = None) -> int:
    """With `prompt`: one reply, printed, then exit. Otherwise a loop reading the user's lines from the
    terminal (with line editing where Python has readline). `out`, `err`: sys.stdout and sys.stderr as they are
    when called (not when this module was imported)."""
    out, err = out or sys.stdout, err or sys.stderr

    def dropped(n: int) -> None:
        print(f"(context full: dropped the oldest {n} turn{'s' if n > 1 else ''})", file=err, flush=True)

    def answer(text: str) -> None:
        for piece in session.reply(text, on_drop=dropped):
            out.write(piece)
            out.flush()
        out.write("\n")
        out.flush()

    if prompt is not None:
        answer(utf8_text(prompt))
        return 0
    print(f"gptkit chat: context {session.model.config.block_size} tokens. {HELP}", file=err, flush=True)
    try:
        import readline  # noqa: F401 (input() then edits lines and keeps their history)
    except ImportError:
        pass
    failed = False  # a message that failed, in a chat read from a pipe: the exit status says so
    while True:
        try:
            try:
                line = input("> ").strip()
            except EOFError:  # Ctrl-D
                out.write("\n")
                return 2 if failed and not sys.stdin.isatty() else 0
            if not line:
                continue
            if line.startswith("/"):
                said = session.command(line)
                if said is None:
                    return 2 if failed and not sys.stdin.isatty() else 0
                print(said, file=err, flush=True)
                continue
            answer(utf8_text(line))
        except KeyboardInterrupt:
            print("\n(stopped)", file=err, flush=True)
        except GptkitError as e:
            failed = True
            print(f"gptkit: error: {e}", file=err, flush=True)
