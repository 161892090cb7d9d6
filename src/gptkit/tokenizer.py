"""Tokenizers: one interface, four kinds.

- ``char``  one id per character of a training text, plus ``<|endoftext|>`` (tiny experiments).
- ``bpe``   byte-level BPE trained here with Hugging Face ``tokenizers`` (GPT-2's recipe on your own corpus).
- ``gpt2``  OpenAI's GPT-2 byte-level BPE, 50,257 ids (GPT-2 §2.2, also GPT-3), run by ``tiktoken``.
- ``gpt1``  OpenAI's GPT-1 BPE, 40,478 ids (GPT-1 §4.1): lower-cased, BERT-style word splitting, ``</w>``
  word ends, run by ``tokenizers`` exactly as ``transformers.OpenAIGPTTokenizer`` configures it.

Every kind answers the same calls (``encode``, ``encode_batch``, ``decode``, ``add_special_tokens``, ``save``,
``Tokenizer.from_pretrained``). Special tokens are handled here, not by the backends: by default a special
token's *string* inside a text is encoded as ordinary text (safe for user data, the way ``tiktoken``'s
``encode_ordinary`` is); ``allowed_special="all"`` (or a set of strings) turns those strings into their ids.

Large texts are cut at points where the backend's own word splitting would cut anyway (a single space or
newline between two non-space characters, see ``split_at_word_boundaries``) and encoded in parallel, which gives the
same ids as one call on the whole text, several times faster.

The backends (``tiktoken``, ``tokenizers``) are imported lazily so that ``import gptkit`` stays light.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .errors import GptkitError
from .io import json_type, parse_json

if TYPE_CHECKING:  # pragma: no cover
    import tiktoken
    import tokenizers

EOT = "<|endoftext|>"
"""The document separator of GPT-2/GPT-3 (id 50256 in GPT-2's vocabulary)."""
CONFIG_NAME = "gptkit_tokenizer.json"
FORMAT_VERSION = 1

# GPT-2's pre-tokenisation regex (the same string as tiktoken_ext.openai_public.r50k_pat_str), used when
# tiktoken_ext cannot be imported.
_GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

# Texts longer than this are cut into pieces of about _CHUNK_CHARS and encoded in parallel.
_PARALLEL_MIN_CHARS = 1 << 16
_CHUNK_CHARS = 1 << 15

AllowedSpecial = Literal["all"] | set[str] | frozenset[str] | None


class TokenizerError(GptkitError, ValueError):
    """A user-facing tokenizer problem (bad path, missing file, unknown character, bad id), one line."""


# --------------------------------------------------------------------------------------------------------------
# helpers


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from the 256 byte values to printable unicode characters.

    GPT-2's vocabulary files spell each token's bytes with these characters so that no token contains
    whitespace or control characters: printable Latin-1 bytes stand for themselves, the other 68 bytes are
    shifted to U+0100.. in byte order (so a space is "Ġ" and a newline "Ċ").
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


@functools.lru_cache(maxsize=1)
def _unicode_to_bytes() -> dict[str, int]:
    return {u: b for b, u in bytes_to_unicode().items()}


def _gpt2_pattern() -> str:
    try:
        from tiktoken_ext.openai_public import r50k_pat_str

        return r50k_pat_str
    except Exception:  # pragma: no cover - tiktoken_ext is shipped with tiktoken
        return _GPT2_PAT_STR


# A single space or newline between two non-space characters. Python's \s is a superset of the Unicode
# White_Space that the backends' regexes use, so "non-space" here is non-space for them too.
_SAFE_CUT = re.compile(r"(?<=\S)[ \n](?=\S)")


def split_at_word_boundaries(text: str, chunk_chars: int = _CHUNK_CHARS) -> list[str]:
    """Cut ``text`` into pieces of about ``chunk_chars`` that tokenize independently to the same ids.

    Each cut is just before a space or newline that sits between two non-space characters. GPT-2's regex
    (``tiktoken``, the ``tokenizers`` ByteLevel pre-tokenizer) always ends a piece at that non-space character
    and starts the next piece at that space/newline (`` ?\\p{L}+``, `` ?\\p{N}+``, `` ?[^\\s\\p{L}\\p{N}]+`` or a
    lone ``\\s``), and BERT's pre-tokenizer (GPT-1) splits at every whitespace. So concatenating the ids of the
    pieces gives exactly the ids of the whole text (the tests check this on every file in shared/data).
    A text without such a point stays in one piece.
    """
    n = len(text)
    pieces: list[str] = []
    start = 0
    while n - start > chunk_chars:
        m = _SAFE_CUT.search(text, start + chunk_chars)
        if m is None:
            break
        pieces.append(text[start : m.start()])
        start = m.start()
    pieces.append(text[start:])
    return pieces


MAX_ID = 2**31 - 1
"""Token ids are whole numbers in [0, MAX_ID]: torch and tiktoken hold them in 32 bits."""


def _whole_number(value: Any, where: str, what: str, low: int = 0, high: int = MAX_ID) -> int:
    """`value` (read from a JSON file) when it is a whole number in [low, high], else a one-line TokenizerError."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise TokenizerError(f"{where}: {what} is {value!r}; expected a whole number from {low:,} to {high:,}")
    return value


def _token_ids(mapping: Any, where: str, what: str = "token") -> dict[str, int]:
    """A token -> id table read from a file, checked: a JSON object whose ids are distinct whole numbers in
    [0, MAX_ID] (a bad id would otherwise fail inside tiktoken or the model's embedding)."""
    if not isinstance(mapping, dict):
        raise TokenizerError(f"{where}: expected a JSON object {what} -> id, got {json_type(mapping)}")
    owner: dict[int, str] = {}
    for tok, i in mapping.items():
        _whole_number(i, where, f"the id of {what} {tok!r}")
        if i in owner:
            raise TokenizerError(f"{where}: {what}s {owner[i]!r} and {tok!r} have the same id {i}")
        owner[i] = tok
    return dict(mapping)


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return parse_json(f.read())
    except FileNotFoundError:
        raise TokenizerError(f"missing tokenizer file {path}") from None
    except (OSError, ValueError) as e:  # ValueError: not UTF-8, not JSON
        raise TokenizerError(f"cannot read {path}: {e}") from None


def _read_merges(path: Path) -> list[tuple[str, str]]:
    """Read a BPE merges file (``merges.txt`` / ``vocab.bpe`` / ``vocab_40000.bpe``): one ``a b`` pair a line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenizerError(f"missing tokenizer file {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TokenizerError(f"cannot read {path}: {e}") from None
    merges: list[tuple[str, str]] = []
    for lineno, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line or (lineno == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise TokenizerError(f"{path}:{lineno}: expected a merge 'a b', got {line[:60]!r}")
        merges.append((parts[0], parts[1]))
    if not merges:  # every entry of the vocabulary beyond the bytes would be taken for a special token
        raise TokenizerError(f"{path}: holds no merges (an empty merges file); a BPE vocabulary needs its merges")
    return merges


def _write_merges(path: Path, merges: Sequence[tuple[str, str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1 if len(obj) < 100 else None)
        f.write("\n")


def _read_hf_added_tokens(directory: Path) -> dict[str, int]:
    """Added tokens of a Hugging Face tokenizer directory (``tokenizer_config.json`` / ``added_tokens.json``)."""
    added: dict[str, int] = {}
    legacy = directory / "added_tokens.json"
    if legacy.is_file():
        obj = _read_json(legacy)
        if isinstance(obj, dict):
            added.update(_token_ids(obj, str(legacy), "added token"))
    cfg = directory / "tokenizer_config.json"
    if cfg.is_file():
        obj = _read_json(cfg)
        decoder = obj.get("added_tokens_decoder") if isinstance(obj, dict) else None
        if isinstance(decoder, dict):
            for i, entry in decoder.items():
                content = entry.get("content") if isinstance(entry, dict) else entry
                if isinstance(content, str):
                    if not i.isdigit():
                        raise TokenizerError(f"{cfg}: added_tokens_decoder has the id {i!r}; expected a number")
                    added[content] = _whole_number(int(i), str(cfg), f"the id of added token {content!r}")
    return added


def read_chat_template(directory: Path) -> str | None:
    """The chat template stored in a tokenizer directory: gptkit_tokenizer.json's ``chat_template``, else
    Hugging Face's (``chat_template`` in tokenizer_config.json: a string, or a list of named templates of which
    "default" is taken; else a ``chat_template.jinja`` file)."""
    for name in (CONFIG_NAME, "tokenizer_config.json"):
        path = directory / name
        obj = _read_json(path) if path.is_file() else None
        found = obj.get("chat_template") if isinstance(obj, dict) else None
        if isinstance(found, list):
            found = next((t.get("template") for t in found if isinstance(t, dict) and t.get("name") == "default"),
                         None)
        if isinstance(found, str):
            return found
    jinja = directory / "chat_template.jinja"
    if not jinja.is_file():
        return None
    try:
        return jinja.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{jinja}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})") \
            from None


def write_chat_template(directory: Path, template: str) -> None:
    """Put ``template`` into ``directory``'s tokenizer_config.json (created when absent), where transformers'
    ``apply_chat_template`` reads it."""
    path = directory / "tokenizer_config.json"
    obj = _read_json(path) if path.is_file() else {}
    _write_json(path, {**(obj if isinstance(obj, dict) else {}), "chat_template": template})


def _hf_added_tokens_decoder(tokens: dict[str, int]) -> dict[str, dict[str, Any]]:
    return {
        str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                 "special": True}
        for t, i in sorted(tokens.items(), key=lambda kv: kv[1])
    }


def _threaded_map(fn: Any, texts: list[str], num_threads: int) -> list[Any]:
    """``[fn(t) for t in texts]`` on ``num_threads`` threads (``fn`` must release the GIL, as tiktoken does).

    Each thread gets a few contiguous slices of about equal length, not one task per text: tiktoken's own
    ``encode_ordinary_batch`` submits one future per text, which costs more than the encoding of a short text
    (docs/benchmarks.md, "Tokenizer throughput").
    """
    total = sum(map(len, texts))
    if num_threads <= 1 or len(texts) < 2 or total < _PARALLEL_MIN_CHARS:
        return [fn(t) for t in texts]
    from concurrent.futures import ThreadPoolExecutor

    target = total / min(len(texts), 4 * num_threads)
    slices: list[list[str]] = []
    current: list[str] = []
    size = 0
    for t in texts:
        current.append(t)
        size += len(t)
        if size >= target:
            slices.append(current)
            current, size = [], 0
    if current:
        slices.append(current)
    with ThreadPoolExecutor(max_workers=min(num_threads, len(slices))) as pool:
        parts = list(pool.map(lambda part: [fn(t) for t in part], slices))
    return [r for part in parts for r in part]


def _encode_with_tokenizers(backend: tokenizers.Tokenizer, text: str) -> list[int]:
    """One text through a `tokenizers` backend: long texts are cut and run on its thread pool.

    ``encode_batch_fast`` skips the character offsets that ``encode`` computes; with the cutting, a long text
    encodes faster than in one ``encode`` call, whose cost grows faster than linearly with length.
    """
    pieces = split_at_word_boundaries(text) if len(text) >= _PARALLEL_MIN_CHARS else [text]
    encodings = backend.encode_batch_fast(pieces, add_special_tokens=False)
    if len(encodings) == 1:
        return encodings[0].ids
    ids: list[int] = []
    for enc in encodings:
        ids.extend(enc.ids)
    return ids


def _default_threads(num_threads: int | None) -> int:
    if num_threads is None:
        try:
            return max(1, len(os.sched_getaffinity(0)))  # the cores this process may use (containers)
        except AttributeError:  # pragma: no cover - macOS, Windows
            return max(1, os.cpu_count() or 1)
    if num_threads < 1:
        raise TokenizerError(f"num_threads must be at least 1, got {num_threads}")
    return int(num_threads)


# --------------------------------------------------------------------------------------------------------------
# the interface


class Tokenizer:
    """Text <-> token ids. Subclasses: ``CharTokenizer``, ``BPETokenizer``, ``GPT2Tokenizer``, ``GPT1Tokenizer``.

    Build one with ``Tokenizer.from_pretrained(path)``, ``Tokenizer.train_char(text)`` or
    ``Tokenizer.train_bpe(texts, vocab_size)``.
    """

    kind: str = "base"
    chat_template: str | None = None
    """A Jinja chat template (Hugging Face's convention, see gptkit.chat_template), saved and loaded with the
    tokenizer (``chat_template`` in gptkit_tokenizer.json and tokenizer_config.json); None: a plain transcript."""

    def __init__(self, special_tokens: dict[str, int] | None = None):
        self._special: dict[str, int] = dict(special_tokens or {})
        self._special_re: dict[frozenset[str], re.Pattern[str]] = {}

    # ---- what a subclass provides -------------------------------------------------------------------------

    def _encode_ordinary(self, text: str) -> list[int]:
        raise NotImplementedError

    def _encode_ordinary_batch(self, texts: list[str], num_threads: int | None) -> list[list[int]]:
        return [self._encode_ordinary(t) for t in texts]

    def _decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def _vocab_size(self) -> int:
        raise NotImplementedError

    def _base_token_to_id(self, token: str) -> int | None:
        raise NotImplementedError

    def _base_id_to_token(self, id: int) -> str | None:
        raise NotImplementedError

    def _register_special(self, token: str, id: int) -> None:
        """Make a new special token (id == the old vocab_size) known to the backend."""
        raise NotImplementedError

    def _save_files(self, directory: Path) -> dict[str, Any]:
        """Write the backend's files; return extra fields for gptkit_tokenizer.json."""
        raise NotImplementedError

    # ---- public API ----------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (the model's embedding needs this many rows)."""
        return self._vocab_size()

    def __len__(self) -> int:
        return self._vocab_size()

    @property
    def eot_id(self) -> int | None:
        """Id of ``<|endoftext|>``, or None when this vocabulary has none (GPT-1)."""
        return self._special.get(EOT)

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special token string -> id (a copy)."""
        return dict(self._special)

    def encode(self, text: str, *, allowed_special: AllowedSpecial = None) -> list[int]:
        """Token ids of ``text``.

        By default the strings of special tokens (``"<|endoftext|>"``, ...) inside ``text`` are encoded as
        ordinary text, so user data can never inject a document boundary. ``allowed_special="all"`` or a set
        of special-token strings maps those occurrences to their ids instead.
        """
        if not isinstance(text, str):
            raise TokenizerError(f"encode() expects a str, got {type(text).__name__}")
        allowed = self._resolve_allowed(allowed_special)
        if not allowed:
            return self._encode_ordinary(text)
        # Cut at the allowed special tokens; the text between them is encoded ordinarily (as tiktoken and
        # tokenizers do), all pieces in one batch call, e.g. many documents joined by <|endoftext|>.
        pieces: list[str] = []
        specials: list[int] = []
        start = 0
        for m in self._special_regex(allowed).finditer(text):
            pieces.append(text[start : m.start()])
            specials.append(self._special[m.group()])
            start = m.end()
        if not specials:
            return self._encode_ordinary(text)
        pieces.append(text[start:])
        if max(map(len, pieces)) >= _PARALLEL_MIN_CHARS:
            encoded = [self._encode_ordinary(p) for p in pieces]  # big pieces are cut and run in parallel
        else:
            encoded = self._encode_ordinary_batch(pieces, None)
        ids: list[int] = []
        for piece_ids, special in zip(encoded, specials):
            ids.extend(piece_ids)
            ids.append(special)
        ids.extend(encoded[-1])
        return ids

    def encode_batch(self, texts: Sequence[str], *, num_threads: int | None = None,
                     allowed_special: AllowedSpecial = None) -> list[list[int]]:
        """``[encode(t) for t in texts]``, in parallel where the backend allows.

        ``num_threads`` (default: all cores) is honoured by tiktoken (gpt2). The ``tokenizers`` backends (bpe,
        gpt1) use their own global thread pool (``RAYON_NUM_THREADS``); ``num_threads=1`` makes them sequential.
        """
        if isinstance(texts, str):
            raise TokenizerError("encode_batch() expects a list of str, got a single str (use encode())")
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                raise TokenizerError(f"encode_batch() expects a list of str, found a {type(t).__name__}")
        if self._resolve_allowed(allowed_special):
            return [self.encode(t, allowed_special=allowed_special) for t in texts]
        if not texts:
            return []
        return self._encode_ordinary_batch(texts, num_threads)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (a list/tuple of ints; numpy arrays and 1-D tensors work too).

        Exact inverse of ``encode`` for char, bpe and gpt2. GPT-1's decode is lossy by design: its encoder
        lower-cases, strips accents and drops the spacing around punctuation.
        """
        ids = self._as_id_list(ids)
        return self._decode(ids) if ids else ""

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
        return [self.decode(ids) for ids in batch]

    def add_special_tokens(self, tokens: Sequence[str]) -> list[int]:
        """Add special tokens (e.g. GPT-1's start / delimiter / extract tokens) and return their ids.

        New tokens get the next ids at the end of the vocabulary, in order. A token that already exists (as a
        special token or as an ordinary vocabulary entry) keeps its id, so calling this twice is harmless.
        """
        if isinstance(tokens, str):
            raise TokenizerError(f"add_special_tokens() expects a list of str, got the str {tokens!r}")
        ids = []
        for tok in tokens:
            if not isinstance(tok, str) or not tok:
                raise TokenizerError(f"a special token must be a non-empty str, got {tok!r}")
            if tok in self._special:
                ids.append(self._special[tok])
                continue
            existing = self._base_token_to_id(tok)
            if existing is not None:
                self._special[tok] = existing
            else:
                new_id = self._vocab_size()
                self._register_special(tok, new_id)
                self._special[tok] = new_id
            self._special_re.clear()
            ids.append(self._special[tok])
        return ids

    def token_to_id(self, token: str) -> int | None:
        """Id of one token, spelled as in the vocabulary files (GPT-2: ``"Ġthe"``, GPT-1: ``"the</w>"``)."""
        if token in self._special:
            return self._special[token]
        return self._base_token_to_id(token)

    def id_to_token(self, id: int) -> str | None:
        """The vocabulary spelling of one id (inverse of ``token_to_id``), None when out of range."""
        if not 0 <= id < self._vocab_size():
            return None
        return self._base_id_to_token(id)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write this tokenizer into ``directory`` (created if needed); ``from_pretrained`` reads it back.

        Always writes ``gptkit_tokenizer.json``; plus the backend's own files: gpt2/gpt1 ``vocab.json`` +
        ``merges.txt`` + ``tokenizer_config.json`` (loadable by ``transformers.AutoTokenizer``), bpe
        ``tokenizer.json``, char nothing else.
        """
        d = Path(directory)
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TokenizerError(f"cannot create tokenizer directory {d}: {e}") from None
        extra = self._save_files(d)
        cfg = {"format_version": FORMAT_VERSION, "kind": self.kind, "vocab_size": self.vocab_size,
               "eot_id": self.eot_id, "special_tokens": self.special_tokens, **extra}
        if self.chat_template is not None:
            cfg["chat_template"] = self.chat_template
            if (d / "tokenizer_config.json").is_file():  # where transformers reads it
                write_chat_template(d, self.chat_template)
        _write_json(d / CONFIG_NAME, cfg)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load a tokenizer from a directory (or a gptkit checkpoint holding one in ``tokenizer/``).

        Recognised, in this order: ``gptkit_tokenizer.json`` (saved by ``save``); ``encoder.json`` +
        ``vocab.bpe`` (GPT-2's original files); ``vocab.json`` + ``merges.txt`` (Hugging Face GPT-2, or GPT-1
        when the tokens end in ``</w>``); ``encoder_bpe_40000.json`` + ``vocab_40000.bpe`` (GPT-1's original
        files); ``tokenizer.json`` (a Hugging Face ``tokenizers`` file, loaded as kind "bpe").
        """
        p = Path(path).expanduser()
        if not p.exists():
            raise TokenizerError(f"tokenizer path {p} does not exist")
        if p.is_file():
            if p.name in (CONFIG_NAME, "tokenizer.json", "encoder.json", "vocab.json"):
                p = p.parent
            else:
                raise TokenizerError(f"{p} is a file; expected a tokenizer directory")
        for d in (p, p / "tokenizer"):
            if d.is_dir():
                tok = _load_directory(d)
                if tok is not None:
                    tok.chat_template = read_chat_template(d)
                    return tok
        raise TokenizerError(
            f"{p} is not a tokenizer directory: expected {CONFIG_NAME}, encoder.json+vocab.bpe, "
            "vocab.json+merges.txt, encoder_bpe_40000.json+vocab_40000.bpe or tokenizer.json "
            "(in it or in its tokenizer/ subdirectory)")

    @classmethod
    def train_char(cls, text: str) -> CharTokenizer:
        """A character vocabulary: the sorted set of characters of ``text``, then ``<|endoftext|>`` as last id."""
        if not isinstance(text, str) or not text:
            raise TokenizerError("train_char() needs a non-empty str")
        chars = sorted(set(text))
        return CharTokenizer(chars, {EOT: len(chars)})

    @classmethod
    def train_bpe(cls, texts: Iterable[str] | str, vocab_size: int) -> BPETokenizer:
        """Train a byte-level BPE (GPT-2's scheme) on ``texts`` with Hugging Face ``tokenizers``.

        The 256 byte values are always in the vocabulary, so any Unicode text round-trips. ``vocab_size``
        counts them and the ``<|endoftext|>`` special token (id 0); a small corpus may give fewer merges.
        """
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if not isinstance(vocab_size, int) or vocab_size < 257:
            raise TokenizerError(f"train_bpe() needs vocab_size >= 257 (256 bytes + {EOT}), got {vocab_size}")
        if isinstance(texts, str):
            texts = [texts]
        backend = HFTokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        backend.train_from_iterator(texts, trainer=trainer)
        return BPETokenizer(backend)

    # ---- shared machinery ----------------------------------------------------------------------------------

    def _resolve_allowed(self, allowed_special: AllowedSpecial) -> frozenset[str]:
        if allowed_special is None:
            return frozenset()
        if isinstance(allowed_special, str):
            if allowed_special == "all":
                return frozenset(self._special)
            raise TokenizerError(f"allowed_special must be 'all', a set of special tokens or None, "
                                 f"got the str {allowed_special!r}")
        allowed = frozenset(allowed_special)
        unknown = allowed - self._special.keys()
        if unknown:
            raise TokenizerError(f"allowed_special names tokens that are not special tokens of this tokenizer: "
                                 f"{sorted(unknown)}")
        return allowed

    def _special_regex(self, allowed: frozenset[str]) -> re.Pattern[str]:
        rx = self._special_re.get(allowed)
        if rx is None:  # longest first, so "<|a|>b" wins over "<|a|>" at the same position
            rx = re.compile("|".join(re.escape(t) for t in sorted(allowed, key=len, reverse=True)))
            self._special_re[allowed] = rx
        return rx

    def _as_id_list(self, ids: Any) -> list[int]:
        if hasattr(ids, "tolist"):  # numpy array / torch tensor
            ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
        if not isinstance(ids, list):
            try:
                ids = list(ids)
            except TypeError:
                raise TokenizerError(f"decode() expects a sequence of ints, got {type(ids).__name__}") from None
        if ids:
            try:
                lo, hi = min(ids), max(ids)
            except TypeError:
                lo = hi = None
            if not isinstance(lo, int) or not isinstance(hi, int):
                bad = next(i for i in ids if not isinstance(i, int))
                raise TokenizerError(f"decode() expects ints, got {type(bad).__name__} {bad!r}")
            n = self._vocab_size()
            if lo < 0 or hi >= n:
                raise TokenizerError(f"token id {lo if lo < 0 else hi} is out of range for this "
                                     f"{self.kind} tokenizer (vocab_size {n})")
        return ids

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Unpickling (e.g. in DataLoader workers) rebuilds a `tokenizers` backend without this runtime flag.
        self.__dict__.update(state)
        backend = state.get("_backend")
        if backend is not None:
            backend.encode_special_tokens = True

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, eot_id={self.eot_id})"


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Same as ``Tokenizer.from_pretrained(path)``."""
    return Tokenizer.from_pretrained(path)


# --------------------------------------------------------------------------------------------------------------
# char


class CharTokenizer(Tokenizer):
    """One id per character, then the special tokens (``<|endoftext|>`` first).

    Encoding a character that is not in the vocabulary raises ``TokenizerError`` naming it (there is no
    unknown token: a silent substitute would corrupt training data). Decoding is exact.
    """

    kind = "char"

    def __init__(self, chars: Sequence[str], special_tokens: dict[str, int] | None = None):
        chars = list(chars)
        if any(not isinstance(c, str) or len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise TokenizerError("a char vocabulary must be distinct single characters")
        special_tokens = dict(special_tokens or {})
        super().__init__(special_tokens)
        self._chars = chars
        self._stoi = {c: i for i, c in enumerate(chars)}
        self._itos: list[str] = list(chars)
        for tok, i in sorted(special_tokens.items(), key=lambda kv: kv[1]):
            if i < len(chars) and chars[i] == tok:
                continue
            if i != len(self._itos):
                raise TokenizerError(f"special token {tok!r} has id {i}; expected {len(self._itos)}")
            self._itos.append(tok)

    def _vocab_size(self) -> int:
        return len(self._itos)

    def _encode_ordinary(self, text: str) -> list[int]:
        # A list comprehension of dict lookups (~30 M chars/s) beats a numpy lookup table here, because
        # turning the array back into a list of Python ints costs more than the lookups themselves.
        stoi = self._stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            self._raise_unknown(text)
            raise  # pragma: no cover

    def _raise_unknown(self, text: str) -> None:
        for pos, c in enumerate(text):
            if c not in self._stoi:
                raise TokenizerError(f"character {c!r} (U+{ord(c):04X}, at position {pos}) is not in this "
                                     f"char tokenizer's vocabulary of {len(self._chars)} characters")

    def _decode(self, ids: list[int]) -> str:
        itos = self._itos
        return "".join([itos[i] for i in ids])

    def _base_token_to_id(self, token: str) -> int | None:
        return self._stoi.get(token)

    def _base_id_to_token(self, id: int) -> str | None:
        return self._itos[id]

    def _register_special(self, token: str, id: int) -> None:
        self._itos.append(token)

    def _save_files(self, directory: Path) -> dict[str, Any]:
        return {"chars": self._chars}


# --------------------------------------------------------------------------------------------------------------
# shared by the kinds run by Hugging Face tokenizers


class _TokenizersBacked(Tokenizer):
    """What the kinds run by a Hugging Face ``tokenizers.Tokenizer`` (``self._backend``) share.

    The backend never matches special tokens itself (``encode_special_tokens = True``): ``Tokenizer.encode``
    does, and only when allowed. New special tokens are added to the backend, which appends them at the end.
    """

    _backend: tokenizers.Tokenizer

    def _vocab_size(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    def _encode_ordinary(self, text: str) -> list[int]:
        return _encode_with_tokenizers(self._backend, text)

    def _encode_ordinary_batch(self, texts: list[str], num_threads: int | None) -> list[list[int]]:
        if _default_threads(num_threads) == 1:
            return [self._backend.encode(t, add_special_tokens=False).ids for t in texts]
        return [e.ids for e in self._backend.encode_batch_fast(texts, add_special_tokens=False)]

    def _decode(self, ids: list[int]) -> str:
        return self._backend.decode(ids, skip_special_tokens=False)

    def _base_token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def _base_id_to_token(self, id: int) -> str | None:
        return self._backend.id_to_token(id)

    def _register_special(self, token: str, id: int) -> None:
        from tokenizers import AddedToken

        self._backend.add_special_tokens([AddedToken(token, special=True, normalized=False)])
        got = self._backend.token_to_id(token)
        if got != id:  # pragma: no cover - tokenizers appends added tokens at the end
            raise TokenizerError(f"the tokenizers backend gave {token!r} id {got}, expected {id}")


# --------------------------------------------------------------------------------------------------------------
# byte-level BPE trained here (Hugging Face tokenizers)


class BPETokenizer(_TokenizersBacked):
    """A Hugging Face ``tokenizers`` model; trained by ``Tokenizer.train_bpe`` as byte-level BPE.

    Special tokens are the backend's added tokens marked special. Saved as ``tokenizer.json``.
    """

    kind = "bpe"

    def __init__(self, backend: tokenizers.Tokenizer):
        specials = {t.content: i for i, t in backend.get_added_tokens_decoder().items() if t.special}
        super().__init__(specials)
        self._backend = backend
        # Special tokens are matched by Tokenizer.encode (only when allowed), never by the backend.
        backend.encode_special_tokens = True

    def _save_files(self, directory: Path) -> dict[str, Any]:
        self._backend.save(str(directory / "tokenizer.json"))
        return {"files": ["tokenizer.json"]}

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        try:
            return cls(HFTokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises plain Exception subclasses
            raise TokenizerError(f"cannot load {path} as a Hugging Face tokenizers file: {e}") from None


# --------------------------------------------------------------------------------------------------------------
# GPT-2 (tiktoken)


class GPT2Tokenizer(Tokenizer):
    """OpenAI's GPT-2 byte-level BPE (also GPT-3's), encoded by ``tiktoken`` built from local files.

    ``vocab`` maps tokens spelled with ``bytes_to_unicode`` to ids (``encoder.json`` / ``vocab.json``); the
    merges (``vocab.bpe`` / ``merges.txt``) are kept to write the files back. tiktoken merges the adjacent pair
    whose concatenation has the lowest id, which equals GPT-2's merge-priority order because the merged tokens'
    ids increase with their merge's line number (checked here). Vocabulary entries no merge can produce, such
    as ``<|endoftext|>``, are special tokens.
    """

    kind = "gpt2"

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]],
                 special_tokens: dict[str, int] | None = None, *, source: str = "vocabulary"):
        vocab = _token_ids(vocab, source)
        special_tokens = _token_ids(special_tokens or {}, source, "special token")
        byte_of = _unicode_to_bytes()
        merged = {a + b for a, b in merges}
        ranks: dict[bytes, int] = {}
        specials: dict[str, int] = {}
        for tok, i in vocab.items():
            if (len(tok) == 1 and tok in byte_of) or tok in merged:
                try:
                    ranks[bytes(byte_of[c] for c in tok)] = int(i)
                except KeyError:
                    raise TokenizerError(f"{source}: token {tok!r} is not spelled with GPT-2's byte alphabet; "
                                         "not a byte-level BPE vocabulary") from None
            else:
                specials[tok] = int(i)
        if len({r for b, r in ranks.items() if len(b) == 1}) != 256:
            raise TokenizerError(f"{source}: a byte-level vocabulary must contain all 256 single bytes")
        prev = -1
        for lineno, (a, b) in enumerate(merges, 2):
            i = vocab.get(a + b)
            if i is None:
                raise TokenizerError(f"{source}: merge {a!r} {b!r} (line {lineno}) makes a token not in the vocab")
            if i <= prev:
                raise TokenizerError(f"{source}: merged tokens' ids do not increase with the merge order "
                                     f"(line {lineno}); tiktoken needs GPT-2-style ids")
            prev = i
        base_size = max([*ranks.values(), *specials.values()]) + 1
        super().__init__(specials)
        self._vocab = dict(vocab)
        self._merges = list(merges)
        self._ranks = ranks
        self._rank_ids = frozenset(ranks.values())
        self._base_size = base_size
        self._id_to_str: list[str] | None = None
        self._size = base_size
        self._pat_str = _gpt2_pattern()
        self._enc: tiktoken.Encoding | None = None
        for tok, i in sorted(special_tokens.items(), key=lambda kv: kv[1]):
            known = self.token_to_id(tok)
            if known == i:
                self._special[tok] = i
                continue
            if known is not None or i != self._size:
                raise TokenizerError(f"{source}: special token {tok!r} has id {i}; expected "
                                     f"{known if known is not None else self._size}")
            self._special[tok] = i
            self._size += 1
        self._build_encoding()

    @classmethod
    def from_files(cls, vocab_json: str | os.PathLike[str], merges_txt: str | os.PathLike[str],
                   special_tokens: dict[str, int] | None = None) -> GPT2Tokenizer:
        """From ``encoder.json`` + ``vocab.bpe`` (OpenAI) or ``vocab.json`` + ``merges.txt`` (Hugging Face)."""
        vocab = _read_json(Path(vocab_json))
        if not isinstance(vocab, dict):
            raise TokenizerError(f"{vocab_json}: expected a JSON object token -> id")
        return cls(vocab, _read_merges(Path(merges_txt)), special_tokens, source=str(vocab_json))

    def _build_encoding(self) -> None:
        import tiktoken

        # Specials that are also ordinary tokens (added with their existing id) are not tiktoken specials.
        specials = {t: i for t, i in self._special.items() if i not in self._rank_ids}
        self._enc = tiktoken.Encoding("gptkit-gpt2", pat_str=self._pat_str, mergeable_ranks=self._ranks,
                                      special_tokens=specials)

    @property
    def encoding(self) -> tiktoken.Encoding:
        """The underlying ``tiktoken.Encoding`` (knows our special tokens)."""
        assert self._enc is not None
        return self._enc

    def _vocab_size(self) -> int:
        return self._size

    def _encode_ordinary(self, text: str) -> list[int]:
        enc = self.encoding
        threads = _default_threads(None)
        if len(text) >= _PARALLEL_MIN_CHARS and threads > 1:
            pieces = split_at_word_boundaries(text)
            if len(pieces) > 1:
                ids: list[int] = []
                for part in _threaded_map(enc.encode_ordinary, pieces, threads):
                    ids.extend(part)
                return ids
        return enc.encode_ordinary(text)

    def _encode_ordinary_batch(self, texts: list[str], num_threads: int | None) -> list[list[int]]:
        return _threaded_map(self.encoding.encode_ordinary, texts, _default_threads(num_threads))

    def _decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids)

    def _base_token_to_id(self, token: str) -> int | None:
        return self._vocab.get(token)

    def _base_id_to_token(self, id: int) -> str | None:
        if self._id_to_str is None:
            table = [""] * self._base_size
            for t, i in self._vocab.items():
                table[i] = t
            self._id_to_str = table
        if id < self._base_size:
            return self._id_to_str[id]
        return next((t for t, i in self._special.items() if i == id), None)

    def _register_special(self, token: str, id: int) -> None:
        self._size = id + 1
        self._special[token] = id
        self._build_encoding()

    def _save_files(self, directory: Path) -> dict[str, Any]:
        _write_json(directory / "vocab.json", self._vocab)
        _write_merges(directory / "merges.txt", self._merges)
        added = {t: i for t, i in self._special.items() if i >= self._base_size}
        hf: dict[str, Any] = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False}
        if EOT in self._vocab:
            hf.update(bos_token=EOT, eos_token=EOT, unk_token=EOT)
        if added:
            hf["added_tokens_decoder"] = _hf_added_tokens_decoder(added)
        _write_json(directory / "tokenizer_config.json", hf)
        return {"files": ["vocab.json", "merges.txt", "tokenizer_config.json"]}


# --------------------------------------------------------------------------------------------------------------
# GPT-1 (tokenizers, configured like transformers.OpenAIGPTTokenizer)


class GPT1Tokenizer(_TokenizersBacked):
    """OpenAI's GPT-1 BPE (40,478 ids), giving the same ids as ``transformers.OpenAIGPTTokenizer``.

    What that tokenizer does in transformers 5.x (a ``tokenizers`` pipeline; the same steps that 4.x's slow
    tokenizer took through BERT's BasicTokenizer when ftfy/spaCy were missing): BERT's text cleanup (drop
    control characters and U+FFFD, every whitespace becomes a space), a space around every CJK ideograph,
    lower-casing *and accent stripping* (NFD, then drop combining marks: "café" -> "cafe"), a split at
    whitespace and around every punctuation character, then BPE inside each word with ``</w>`` marking the
    word's end. Characters outside the vocabulary become ``<unk>`` (id 0). OpenAI's original code
    (finetune-transformer-lm) instead fixed text with ftfy, normalised some punctuation, split words with spaCy
    and only lower-cased (its vocabulary has "é"), so its ids differ on accented or unusual text.

    ``decode`` is lossy: it joins words with single spaces ("Don't!" -> "don ' t !").
    ``<unk>`` is a special token: the literal text "<unk>" (WikiText uses it) is encoded as characters by
    default and as id 0 with ``allowed_special="all"`` (which is what ``OpenAIGPTTokenizer.encode`` does).
    """

    kind = "gpt1"
    UNK = "<unk>"

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]],
                 special_tokens: dict[str, int] | None = None, *, source: str = "vocabulary"):
        from tokenizers import AddedToken, decoders, normalizers, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers.models import BPE

        vocab = _token_ids(vocab, source)
        special_tokens = _token_ids(special_tokens or {}, source, "special token")
        if self.UNK not in vocab:
            raise TokenizerError(f"{source}: a GPT-1 vocabulary needs the token {self.UNK!r}")
        self._vocab = dict(vocab)
        self._merges = [tuple(m) for m in merges]
        try:
            model = BPE(vocab=self._vocab, merges=self._merges, dropout=None, unk_token=self.UNK,
                        continuing_subword_prefix="", end_of_word_suffix="</w>", fuse_unk=False)
        except Exception as e:
            raise TokenizerError(f"{source}: not a valid BPE vocabulary/merges pair: {e}") from None
        backend = HFTokenizer(model)
        backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                        strip_accents=None, lowercase=True)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.BPEDecoder(suffix="</w>")
        backend.add_special_tokens([AddedToken(self.UNK, special=True, normalized=False)])
        backend.encode_special_tokens = True  # special strings are matched by Tokenizer.encode when allowed
        self._backend = backend
        self._base_size = max(self._vocab.values()) + 1
        super().__init__({self.UNK: self._vocab[self.UNK]})
        for tok, i in sorted(special_tokens.items(), key=lambda kv: kv[1]):
            known = self.token_to_id(tok)
            if known == i:
                self._special[tok] = i
                continue
            if known is not None or i != self._vocab_size():
                raise TokenizerError(f"{source}: special token {tok!r} has id {i}; expected "
                                     f"{known if known is not None else self._vocab_size()}")
            self._register_special(tok, i)
            self._special[tok] = i

    @classmethod
    def from_files(cls, vocab_json: str | os.PathLike[str], merges_txt: str | os.PathLike[str],
                   special_tokens: dict[str, int] | None = None) -> GPT1Tokenizer:
        """From ``encoder_bpe_40000.json`` + ``vocab_40000.bpe`` (OpenAI) or ``vocab.json`` + ``merges.txt``."""
        vocab = _read_json(Path(vocab_json))
        if not isinstance(vocab, dict):
            raise TokenizerError(f"{vocab_json}: expected a JSON object token -> id")
        return cls(vocab, _read_merges(Path(merges_txt)), special_tokens, source=str(vocab_json))

    def _save_files(self, directory: Path) -> dict[str, Any]:
        _write_json(directory / "vocab.json", self._vocab)
        _write_merges(directory / "merges.txt", self._merges)
        added = {t: i for t, i in self._special.items() if i >= self._base_size}
        hf: dict[str, Any] = {"tokenizer_class": "OpenAIGPTTokenizer", "unk_token": self.UNK}
        if added:
            hf["added_tokens_decoder"] = _hf_added_tokens_decoder(added)
        _write_json(directory / "tokenizer_config.json", hf)
        return {"files": ["vocab.json", "merges.txt", "tokenizer_config.json"]}


# --------------------------------------------------------------------------------------------------------------
# loading


def _looks_like_gpt1(vocab: Any) -> bool:
    """GPT-1 marks word ends with "</w>" (most of its 40,478 tokens); GPT-2's byte-level vocab never does."""
    if not isinstance(vocab, dict) or not vocab:
        return False
    return sum(1 for k in vocab if isinstance(k, str) and k.endswith("</w>")) >= 0.1 * len(vocab)


def _load_directory(d: Path) -> Tokenizer | None:
    """The tokenizer stored in ``d``, or None when ``d`` holds none of the known layouts."""
    cfg_path = d / CONFIG_NAME
    if cfg_path.is_file():
        return _load_gptkit(d, _read_json(cfg_path))
    if (d / "encoder.json").is_file() and (d / "vocab.bpe").is_file():
        return GPT2Tokenizer.from_files(d / "encoder.json", d / "vocab.bpe")
    if (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
        vocab = _read_json(d / "vocab.json")
        if not isinstance(vocab, dict):
            raise TokenizerError(f"{d / 'vocab.json'}: expected a JSON object token -> id")
        added = {t: i for t, i in _read_hf_added_tokens(d).items() if t not in vocab}
        cls = GPT1Tokenizer if _looks_like_gpt1(vocab) else GPT2Tokenizer
        return cls(vocab, _read_merges(d / "merges.txt"), added, source=str(d / "vocab.json"))
    if (d / "encoder_bpe_40000.json").is_file() and (d / "vocab_40000.bpe").is_file():
        return GPT1Tokenizer.from_files(d / "encoder_bpe_40000.json", d / "vocab_40000.bpe")
    if (d / "tokenizer.json").is_file():
        return BPETokenizer.from_file(d / "tokenizer.json")
    return None


def _load_gptkit(d: Path, cfg: Any) -> Tokenizer:
    where = d / CONFIG_NAME
    if not isinstance(cfg, dict) or "kind" not in cfg:
        raise TokenizerError(f"{where}: expected a JSON object with a 'kind'")
    if _whole_number(cfg.get("format_version", 1), str(where), "format_version", 1) > FORMAT_VERSION:
        raise TokenizerError(f"{where}: format_version {cfg['format_version']} is newer than this gptkit "
                             f"understands ({FORMAT_VERSION}); upgrade gptkit")
    kind = cfg["kind"]
    specials = _token_ids(cfg.get("special_tokens") or {}, f"{where}: special_tokens", "special token")
    tok: Tokenizer
    if kind == "char":
        if not isinstance(cfg.get("chars"), list):
            raise TokenizerError(f"{where}: a char tokenizer needs a 'chars' list")
        tok = CharTokenizer(cfg["chars"], specials)
    elif kind == "bpe":
        tok = BPETokenizer.from_file(d / "tokenizer.json")
    elif kind == "gpt2":
        tok = GPT2Tokenizer.from_files(d / "vocab.json", d / "merges.txt", specials)
    elif kind == "gpt1":
        tok = GPT1Tokenizer.from_files(d / "vocab.json", d / "merges.txt", specials)
    else:
        raise TokenizerError(f"{where}: unknown tokenizer kind {kind!r} (expected char, bpe, gpt2 or gpt1)")
    for t, i in specials.items():  # e.g. a bpe vocabulary entry promoted to special by add_special_tokens
        if t not in tok._special and tok._base_token_to_id(t) == i:
            tok._special[t] = i
    if tok.special_tokens != specials:
        raise TokenizerError(f"{where}: special tokens {specials} do not match the tokenizer files "
                             f"({tok.special_tokens})")
    if "vocab_size" in cfg and _whole_number(cfg["vocab_size"], str(where), "vocab_size", 1) != tok.vocab_size:
        raise TokenizerError(f"{where}: vocab_size {cfg['vocab_size']} does not match the tokenizer files "
                             f"({tok.vocab_size})")
    return tok


__all__ = [
    "EOT",
    "BPETokenizer",
    "CharTokenizer",
    "GPT1Tokenizer",
    "GPT2Tokenizer",
    "Tokenizer",
    "TokenizerError",
    "bytes_to_unicode",
    "load_tokenizer",
]
