"""The caps on what a caller may write, as pydantic types. The database enforces the same caps
(the input-caps migration: CHECK constraints on the usage log, reservations and quotas), so
every client obeys them; these types refuse the same input earlier, with the field's name, and
before a provider is called and paid.

* identifiers (request_id, user_id, session_id, workflow_id, conversation_id): 1 to 200
  characters, no control or bidirectional-override characters;
* tags: at most 64, each 1 to 100 such characters;
* metadata: a JSON object of at most 16 KiB;
* model names: 1 to 200 characters of ``A-Z a-z 0-9 _ . : / @ + -``, starting with a letter
  or digit;
* occurred_at: from the year 2000 to at most 5 minutes after now.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

from pydantic import AfterValidator, Field

__all__ = [
    "MAX_FUTURE",
    "MAX_IDENTIFIER_LENGTH",
    "MAX_METADATA_BYTES",
    "MAX_TAGS",
    "MAX_TAG_LENGTH",
    "Identifier",
    "Metadata",
    "ModelName",
    "OccurredAt",
    "Tags",
    "check_occurred_at",
    "check_text",
]

MAX_IDENTIFIER_LENGTH = 200
MAX_TAGS = 64
MAX_TAG_LENGTH = 100
MAX_METADATA_BYTES = 16 * 1024
MAX_FUTURE = timedelta(minutes=5)
"""How far ahead of the clock an occurred_at may be (clock skew between app and database)."""
EARLIEST = datetime(2000, 1, 1, tzinfo=timezone.utc)

# C0 and C1 controls, DEL, and the bidirectional marks and overrides that make text display
# in another order than it is stored (U+061C, U+200E/F, U+202A-E, U+2066-9).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]*$"


def check_text(value: str) -> str:
    if _UNSAFE.search(value):
        raise ValueError("must not contain control or bidirectional-override characters")
    return value


def _check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    # Measured as the database renders jsonb (", " and ": " separators), which it also caps.
    size = len(json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str))
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"must be at most {MAX_METADATA_BYTES} bytes as JSON (got {size})")
    return value


def check_occurred_at(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    at = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if at < EARLIEST:
        raise ValueError("must not be before the year 2000")
    if at > datetime.now(timezone.utc) + MAX_FUTURE:
        raise ValueError("must not be more than 5 minutes in the future")
    return value


Identifier = Annotated[
    str,
    Field(min_length=1, max_length=MAX_IDENTIFIER_LENGTH),
    AfterValidator(check_text),
]
Tag = Annotated[str, Field(min_length=1, max_length=MAX_TAG_LENGTH), AfterValidator(check_text)]
Tags = Annotated[list[Tag], Field(max_length=MAX_TAGS)]
Metadata = Annotated[dict[str, Any], AfterValidator(_check_metadata)]
ModelName = Annotated[
    str, Field(min_length=1, max_length=MAX_IDENTIFIER_LENGTH, pattern=MODEL_NAME_PATTERN)
]
OccurredAt = Annotated[datetime | None, AfterValidator(check_occurred_at)]
