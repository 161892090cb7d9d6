"""Chat messages → one prompt, for /v1/chat/completions and `gptkit chat`.

A GPT-2/GPT-3-class base model was never trained on conversations, but it continues a transcript well:

    System: You are terse.
    User: Hello
    Assistant:

is continued with the assistant's reply, and then usually with "\\nUser:" — the turn separator, which is the
default stop sequence, so the model does not write the user's next turn. That plain transcript is the template
of every tokenizer that stores none. A tokenizer may store its own `chat_template`, a Jinja template in Hugging
Face's convention (the `chat_template` field of tokenizer_config.json: variables `messages`, `add_generation_prompt`,
`bos_token`, `eos_token`, and a `raise_exception(message)` function), rendered in Jinja's sandbox; such a model
ends its turn with its end-of-text token, so a stored template has no default stop sequence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import GptkitError

if TYPE_CHECKING:
    from .tokenizer import Tokenizer

ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
"""Message roles a chat may hold → the speaker names of the plain transcript."""
TURN_SEPARATOR = "\nUser:"


class ChatTemplateError(GptkitError, ValueError):
    """The messages cannot be rendered (an unknown role, or the template's own raise_exception)."""


class BrokenChatTemplate(ChatTemplateError):
    """The template itself failed (not valid Jinja, or a Python error while it ran, e.g. `{{ m.content + 1 }}`):
    the fault of whoever wrote it, not of the messages."""


@dataclass(frozen=True)
class ChatTemplate:
    """How a conversation becomes a prompt. `source` None is the plain transcript; else a Jinja template."""

    source: str | None = None
    bos_token: str = ""
    eos_token: str = ""

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> ChatTemplate:
        """The template stored with `tokenizer` (its `chat_template`), else the plain transcript."""
        eos = "<|endoftext|>" if tokenizer.eot_id is not None else ""
        return cls(getattr(tokenizer, "chat_template", None), eos, eos)

    @property
    def stop(self) -> tuple[str, ...]:
        """The default stop sequences: the plain transcript's turn separator; none for a stored template."""
        return (TURN_SEPARATOR,) if self.source is None else ()

    def check(self) -> ChatTemplate:
        """Raise ChatTemplateError when a stored template is not valid Jinja; return self."""
        if self.source is not None:
            import jinja2
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            try:
                ImmutableSandboxedEnvironment().parse(self.source)
            except jinja2.TemplateSyntaxError as e:
                raise BrokenChatTemplate(f"the chat template is not valid Jinja: {e.message} (line {e.lineno})") \
                    from None
        return self

    def render(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> str:
        """The prompt for `messages` ({"role", "content"} each); with add_generation_prompt it ends where the
        assistant's reply begins."""
        for m in messages:
            if m.get("role") not in ROLES:
                raise ChatTemplateError(f"unsupported message role {m.get('role')!r} (expected one of "
                                        f"{', '.join(ROLES)})")
        if self.source is None:
            lines = [f"{ROLES[m['role']]}: {(m.get('content') or '').strip()}\n" for m in messages]
            return "".join(lines) + ("Assistant:" if add_generation_prompt else "")
        return self._render_jinja(messages, add_generation_prompt)

    def _render_jinja(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool) -> str:
        def raise_exception(message: str) -> None:
            raise ChatTemplateError(f"the chat template refused the messages: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        try:
            return env.from_string(self.source).render(
                messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token, eos_token=self.eos_token)
        except ChatTemplateError:
            raise  # raise_exception: the template refused these messages
        except jinja2.TemplateError as e:
            raise BrokenChatTemplate(f"the chat template failed: {e}") from None
        except (ArithmeticError, LookupError, TypeError, ValueError, AttributeError) as e:  # a bug in the template
            raise BrokenChatTemplate(f"the chat template failed: {type(e).__name__}: {e}") from None


def check_stored_template(tokenizer: Tokenizer, ckpt: str) -> None:
    """The chat template stored with a checkpoint's tokenizer, checked to be valid Jinja before a chat or a server
    starts (else every chat request fails on it), or a one-line error that says so."""
    try:
        ChatTemplate.of(tokenizer).check()
    except BrokenChatTemplate as e:
        raise BrokenChatTemplate(f"{ckpt}: {str(e).replace('the chat template', 'its stored chat template', 1)}") \
            from None
