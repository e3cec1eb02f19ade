"""Pre-call token estimation: how many prompt tokens a request will be billed for, at most.

The Tracker reserves quota *before* the provider answers, so the estimate must not be lower
than what the provider will report for ordinary text. Two ways to count:

* **tiktoken**, for OpenAI models, when its encoding can be loaded *offline*. tiktoken
  downloads encodings from the internet on first use and caches them in ``TIKTOKEN_CACHE_DIR``
  (or ``DATA_GYM_CACHE_DIR``, or ``<tmp>/data-gym-cache``). We only call tiktoken when the
  cached file is already there and its SHA-256 matches, so counting never touches the network
  and never hangs. To enable it on an offline machine, copy the ``*.tiktoken`` files into that
  directory under tiktoken's cache names (``sha1(url)``), e.g. from a machine that has them.
* **A conservative byte heuristic** everywhere else (Anthropic, Gemini and xAI use their own
  tokenizers, which tiktoken does not model), see :func:`estimate_text_tokens`.

Every function here is total: any ``str`` (including lone surrogates), ``None``, lists of
content parts or odd objects give a number, never an exception.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

__all__ = [
    "IMAGE_TOKEN_ALLOWANCE",
    "MESSAGE_OVERHEAD_TOKENS",
    "REPLY_PRIMING_TOKENS",
    "count_message_tokens",
    "count_text_tokens",
    "estimate_text_tokens",
    "tiktoken_encoding_for",
]

MESSAGE_OVERHEAD_TOKENS = 4
"""Tokens each message costs beyond its text (role and delimiters). OpenAI's cookbook counts 3
per message for current chat models (plus 1 for a ``name``); we use 4 for every provider so that
Anthropic's and Gemini's turn markers are covered too."""

REPLY_PRIMING_TOKENS = 3
"""Every reply is primed with ``<|start|>assistant<|message|>`` (3 tokens, OpenAI cookbook)."""

IMAGE_TOKEN_ALLOWANCE = 2_600
"""Tokens assumed for one image/audio/file part. Upper end of what providers bill for a single
image: OpenAI high detail 85 + 170 per 512-px tile (≤ 1,105 for 768x1536), patch-based models
up to 1,536 patches x 1.62 ≈ 2,490; Anthropic ≈ width x height / 750 (≈ 1,600 at its 1.15 MP
cap); Gemini 258 per tile. Base64 payloads are *not* counted as text."""

_ASCII_BYTES_PER_TOKEN = 3
"""English BPE tokens average ~4 characters (OpenAI's and Gemini's docs say "about 4"; Claude's
tokenizer is nearer 3.5). Dividing by 3 over-counts typical prose by ~30-50 %."""

_NON_ASCII_BYTES_PER_TOKEN = 2
"""Accented Latin (2 UTF-8 bytes) is usually part of a longer token; CJK (3 bytes) is about one
token per character in o200k/Claude and up to 2 in cl100k for rarer characters; emoji (4 bytes)
(4 bytes, outside the BMP) are counted apart, see ``_ASTRAL_TOKENS``. Two bytes per token
covers the rest."""

_ASTRAL_TOKENS = 3
"""Tokens per character outside the Basic Multilingual Plane (emoji, rare CJK): byte-level BPE
spends 1-4 tokens on their 4 UTF-8 bytes; 3 covers common emoji in cl100k and o200k."""

# A lower bound of the real count: the pre-tokenizer of cl100k/o200k (approximated with `re`)
# splits text into pieces that BPE never merges across, so there is at least one token per
# piece. max(bytes heuristic, pieces) protects texts of many one-letter words, digits (split in
# groups of three, the space before them a token of its own), punctuation and newlines.
_PIECES = re.compile(
    r"[^\r\n\w]?[^\W\d_]+|\d{1,3}| ?[^\s\w]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+|_+",
    re.UNICODE,
)

_PIECES_MARGIN = 1.15
"""Headroom for what the ``re`` approximation of the pre-tokenizer misses. Measured against
cl100k and o200k on ~800 local files (docs, release notes, Python source): every file of prose
or code came out >= 1.0x (median 1.76x); only machine-made tables (unicode escape tables,
keyword lists) fell below, to 0.66x."""

_PUNCT_RUN = re.compile(r"[^\w\s]{3,}")

# Runs of 20+ non-space ASCII characters (URLs, paths, identifiers, base64, hashes) tokenize
# at 1.5-2 characters per token (random base64 ~1.9), not 4.
_LONG_RUN = re.compile(r"[!-~]{20,}")
_LONG_RUN_CHARS_PER_TOKEN = 1.5

# OpenAI encodings tiktoken can load offline, by name: (download url, sha256 tiktoken expects).
_TIKTOKEN_FILES: dict[str, tuple[str, str]] = {
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
}

_IMAGE_PART_TYPES = frozenset(
    {
        "image",
        "image_url",
        "input_image",
        "input_audio",
        "input_file",
        "audio",
        "file",
        "document",
        "inline_data",
        "inlineData",
        "file_data",
        "fileData",
    }
)


def estimate_text_tokens(text: str | None) -> int:
    """A conservative token count for ``text`` without any tokenizer.

    The larger of two figures:

    * by bytes: ASCII at 3 characters per token (1.5 inside 20+ character runs without spaces:
      URLs, identifiers, base64), BMP non-ASCII at 2 UTF-8 bytes per token, 3 tokens per emoji
      or other astral character;
    * by pieces: one token per pre-tokenizer piece (see ``_PIECES``), one per 2 characters of
      punctuation runs, plus 15 % headroom.

    For English prose this is ~1.55x the cl100k/o200k count (Claude's tokenizer, at ~3.5
    characters per token, and Gemini's, at ~4, are covered by the 3-per-token byte rate). It is
    at least the real count for ordinary text; machine-made strings (unicode tables, random
    hex/base64 beyond ~50 % digits) can exceed it.
    """
    if not text:
        return 0
    if not isinstance(text, str):
        text = str(text)
    long_runs = sum(len(m.group()) for m in _LONG_RUN.finditer(text))
    ascii_chars = 0
    multi_bytes = 0
    astral = 0
    for ch in text:
        code = ord(ch)
        if code < 0x80:
            ascii_chars += 1
        elif code > 0xFFFF:
            astral += 1
        else:
            multi_bytes += 2 if code < 0x800 else 3
    by_bytes = (
        math.ceil((ascii_chars - long_runs) / _ASCII_BYTES_PER_TOKEN)
        + math.ceil(long_runs / _LONG_RUN_CHARS_PER_TOKEN)
        + math.ceil(multi_bytes / _NON_ASCII_BYTES_PER_TOKEN)
        + astral * _ASTRAL_TOKENS
    )
    pieces = 0
    for m in _PIECES.finditer(text):
        piece = m.group().strip()
        # BPE splits long punctuation runs ("|---|---|", "]]]"): allow one token per 2 chars.
        pieces += max(1, math.ceil(len(piece) / 2)) if _PUNCT_RUN.fullmatch(piece) else 1
    return max(by_bytes, math.ceil(pieces * _PIECES_MARGIN))


def _tiktoken_cache_dir() -> str | None:
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return os.environ[var] or None  # "" disables tiktoken's cache: nothing offline
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


@lru_cache(maxsize=8)
def _load_encoding(name: str, cache_dir: str | None) -> Any:
    """The tiktoken Encoding ``name`` if it loads without the network, else None."""
    if cache_dir is None or name not in _TIKTOKEN_FILES:
        return None
    url, expected = _TIKTOKEN_FILES[name]
    path = os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest())
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError:
        return None
    # tiktoken deletes a mismatching file and downloads again; check first so it never does.
    if hashlib.sha256(blob).hexdigest() != expected:
        return None
    try:
        import tiktoken
    except ImportError:
        return None
    try:
        return tiktoken.get_encoding(name)
    except Exception:  # a broken install must not break estimation
        return None


def tiktoken_encoding_for(provider: str, model: str) -> Any:
    """tiktoken's Encoding for an OpenAI model when available offline, else None.

    Only ``openai`` models are counted with tiktoken; other providers' tokenizers differ.
    """
    if provider.strip().lower() != "openai":
        return None
    try:
        import tiktoken.model as tm
    except ImportError:
        return None
    try:
        name = tm.encoding_name_for_model(model)
    except Exception:
        # Unknown (newer) OpenAI model names: every current model uses o200k_base.
        name = "o200k_base"
    return _load_encoding(name, _tiktoken_cache_dir())


def count_text_tokens(text: str | None, *, provider: str = "", model: str = "") -> int:
    """Tokens of ``text``: tiktoken's exact count when available offline, else the estimate."""
    if not text:
        return 0
    if not isinstance(text, str):
        text = str(text)
    enc = tiktoken_encoding_for(provider, model) if provider else None
    if enc is not None:
        try:
            return len(enc.encode(text, disallowed_special=()))
        except Exception:  # lone surrogates and the like
            pass
    return estimate_text_tokens(text)


def _message_parts(message: Any) -> tuple[str, str | None, Any]:
    """(role, name, content) of a Message model, a dict or anything else."""
    if isinstance(message, Mapping):
        return str(message.get("role") or ""), message.get("name"), message.get("content")
    role = getattr(message, "role", "")
    content = getattr(message, "content", message)
    return str(role or ""), getattr(message, "name", None), content


def _content_texts(content: Any) -> tuple[list[str], int]:
    """Texts to count and the number of non-text (image, audio, file) parts in ``content``."""
    if content is None:
        return [], 0
    if isinstance(content, str):
        return [content], 0
    if isinstance(content, Mapping):
        content = [content]
    if not isinstance(content, Iterable) or isinstance(content, (bytes, bytearray)):
        return [str(content)], 0
    texts: list[str] = []
    media = 0
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, Mapping):
            kind = part.get("type")
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind in _IMAGE_PART_TYPES or any(k in part for k in _IMAGE_PART_TYPES):
                media += 1
            else:
                # Tool calls/results and unknown parts: count their JSON, which over-counts.
                try:
                    texts.append(json.dumps(part, ensure_ascii=False, default=str))
                except (TypeError, ValueError):
                    texts.append(str(part))
        else:
            texts.append(str(part))
    return texts, media


def count_message_tokens(provider: str, model: str, messages: Iterable[Any]) -> int:
    """Prompt tokens of ``messages`` for ``provider``/``model``, never lower than the real count
    for ordinary text: content tokens + ``MESSAGE_OVERHEAD_TOKENS`` per message (+1 for a name)
    + ``REPLY_PRIMING_TOKENS``. Accepts :class:`quotaflow.models.Message` objects or dicts whose
    content is a string or a list of parts. Never raises.
    """
    total = REPLY_PRIMING_TOKENS
    try:
        items = list(messages)
    except TypeError:
        items = [messages]
    for message in items:
        try:
            role, name, content = _message_parts(message)
            texts, media = _content_texts(content)
            total += MESSAGE_OVERHEAD_TOKENS + media * IMAGE_TOKEN_ALLOWANCE
            total += count_text_tokens(role, provider=provider, model=model)
            if name:
                total += 1 + count_text_tokens(str(name), provider=provider, model=model)
            for text in texts:
                total += count_text_tokens(text, provider=provider, model=model)
        except Exception:  # defensive: estimation must never fail a call
            total += MESSAGE_OVERHEAD_TOKENS + estimate_text_tokens(repr(message))
    return total
