"""Pre-call token estimation never raises, never undercounts ordinary text, and only uses
tiktoken when its encoding is on disk (no network)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from quotaflow import tokens
from quotaflow.models import Message
from quotaflow.tokens import (
    IMAGE_TOKEN_ALLOWANCE,
    MESSAGE_OVERHEAD_TOKENS,
    REPLY_PRIMING_TOKENS,
    count_message_tokens,
    count_text_tokens,
    estimate_text_tokens,
    tiktoken_encoding_for,
)

# Real o200k_base / cl100k_base counts (the larger of the two), computed with tiktoken.
KNOWN_COUNTS = [
    (
        "The quick brown fox jumps over the lazy dog. In the beginning, quotaflow tracked every "
        "call an application made to a large language model, priced it in SQL, and refused calls "
        "that would overspend a quota.",
        44,
    ),
    ("a b c d e f g h i j k l m n o p q r s t u v w x y z I a an is it to of on in at by", 37),
    ("1 2 3 4 5 6 7 8 9 10 11 12 123456789 3.14159 2026-01-01 12:00:00 $1,234.56 0.0001", 56),
    (
        "def f(x):\n    return {k: v for k, v in x.items() if v is not None}\n\nfor i in "
        "range(10):\n    print(i ** 2, end=', ')\n",
        41,
    ),
    ("Die Größe des Übergangs hängt von der Äußerung ab; Straßenbahnhaltestelle.", 26),
    ("Привет, мир! Это тестовая строка для проверки токенизатора на русском языке.", 34),
    (
        "你好，世界！这是一个用于测试分词器的中文句子。日本語のテキストも少し。한국어 문장입니다.",
        44,
    ),
    ("🙂🙃😀🎉🚀👍🏽👨‍👩‍👧‍👦 hello 🌍", 41),
    ("# Title\n\n- item one\n- item two\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n**bold** _it_", 34),
    ("!!! ??? ... --- *** ((( ))) [[[ ]]] ;;; ::: ''' \"\"\" ``` ~~~ ### @@@ %%% ^^^ &&&", 28),
]


@pytest.fixture(autouse=True)
def _no_tiktoken_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """Each test starts with an empty tiktoken cache directory: the heuristic path."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty"))
    tokens._load_encoding.cache_clear()
    yield
    tokens._load_encoding.cache_clear()


@pytest.mark.parametrize(("text", "real"), KNOWN_COUNTS)
def test_estimate_is_at_least_the_real_count(text: str, real: int) -> None:
    assert estimate_text_tokens(text) >= real


def test_estimate_is_not_wildly_high_for_prose() -> None:
    text, real = KNOWN_COUNTS[0]
    assert estimate_text_tokens(text) <= 2 * real


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "\x00",
        "\ud800 lone surrogate",
        "\U0010ffff" * 5,
        "a" * 100_000,
        "<|endoftext|>",
        "\r\n" * 50,
        "مرحبا بالعالم",
        "x" * 3 + "\u0301" * 10,
    ],
)
def test_never_raises_for_any_text(text: str) -> None:
    assert estimate_text_tokens(text) >= 0
    assert count_text_tokens(text, provider="openai", model="gpt-4o") >= 0
    assert count_message_tokens("openai", "gpt-4o", [{"role": "user", "content": text}]) > 0


def test_message_overhead_and_reply_priming() -> None:
    empty = count_message_tokens("anthropic", "claude", [{"role": "user", "content": ""}])
    assert empty == REPLY_PRIMING_TOKENS + MESSAGE_OVERHEAD_TOKENS + estimate_text_tokens("user")
    two = count_message_tokens(
        "anthropic",
        "claude",
        [{"role": "user", "content": ""}, {"role": "user", "content": ""}],
    )
    assert two - empty == MESSAGE_OVERHEAD_TOKENS + estimate_text_tokens("user")


def test_accepts_models_dicts_parts_and_junk() -> None:
    text = "Describe this picture of a fox."
    as_model = count_message_tokens("openai", "gpt-4o", [Message(role="user", content=text)])
    as_dict = count_message_tokens("openai", "gpt-4o", [{"role": "user", "content": text}])
    assert as_model == as_dict
    with_image = count_message_tokens(
        "openai",
        "gpt-4o",
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": text},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64," + "A" * 50_000},
                    },
                ],
            }
        ],
    )
    # An image costs a fixed allowance; its base64 is not counted as text.
    assert with_image == as_dict + IMAGE_TOKEN_ALLOWANCE
    gemini_inline = count_message_tokens(
        "google", "gemini", [{"role": "user", "content": [{"inlineData": {"data": "AAAA"}}]}]
    )
    assert gemini_inline >= IMAGE_TOKEN_ALLOWANCE
    assert count_message_tokens("xai", "grok", [None, 42, object()]) > 0
    assert count_message_tokens("openai", "gpt-4o", []) == REPLY_PRIMING_TOKENS


def test_tool_parts_are_counted_from_their_json() -> None:
    part = {"type": "tool_result", "tool_use_id": "t1", "content": "72 degrees and sunny"}
    n = count_message_tokens("anthropic", "claude", [{"role": "user", "content": [part]}])
    assert n > estimate_text_tokens("72 degrees and sunny")


def test_no_tiktoken_without_a_cached_encoding() -> None:
    """With an empty cache tiktoken is never asked (it would try to download)."""
    assert tiktoken_encoding_for("openai", "gpt-4o") is None
    assert count_text_tokens("hello world", provider="openai", model="gpt-4o") == (
        estimate_text_tokens("hello world")
    )


def test_a_corrupt_cached_encoding_is_not_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = tokens._TIKTOKEN_FILES["o200k_base"][0]
    (tmp_path / hashlib.sha1(url.encode()).hexdigest()).write_bytes(b"not an encoding")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    tokens._load_encoding.cache_clear()
    assert tiktoken_encoding_for("openai", "gpt-4o") is None


def test_other_providers_never_use_tiktoken() -> None:
    assert tiktoken_encoding_for("anthropic", "claude-sonnet-4-5") is None
    assert tiktoken_encoding_for("xai", "grok-4") is None


def _system_tiktoken_cache() -> str | None:
    for d in (
        os.environ.get("QUOTAFLOW_TEST_TIKTOKEN_CACHE_DIR"),
        os.path.join(tempfile.gettempdir(), "data-gym-cache"),
    ):
        if d:
            url = tokens._TIKTOKEN_FILES["o200k_base"][0]
            if os.path.exists(os.path.join(d, hashlib.sha1(url.encode()).hexdigest())):
                return d
    return None


@pytest.mark.skipif(
    _system_tiktoken_cache() is None,
    reason="no o200k_base encoding cached on this machine (offline)",
)
def test_tiktoken_counts_exactly_when_its_encoding_is_cached(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(_system_tiktoken_cache()))
    tokens._load_encoding.cache_clear()
    assert tiktoken_encoding_for("openai", "gpt-4o") is not None
    assert count_text_tokens("Hello, world!", provider="openai", model="gpt-4o") == 4
    messages = [{"role": "user", "content": "Hello, world!"}]
    # OpenAI cookbook: 3 per message + role + content + 3 priming; we count 4 per message.
    assert count_message_tokens("openai", "gpt-4o", messages) == 4 + 1 + 4 + 3
