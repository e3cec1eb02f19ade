"""Pydantic models: what goes into a tracked call and what comes out."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .limits import Identifier, Metadata, ModelName, OccurredAt, Tags

Provider = Literal["openai", "anthropic", "google", "xai"]
PROVIDERS: tuple[str, ...] = ("openai", "anthropic", "google", "xai")

# Names people use for the same provider; normalised on input.
PROVIDER_ALIASES = {"gemini": "google", "google-genai": "google", "grok": "xai", "x-ai": "xai"}


RESERVED_EXTRA_KEYS = frozenset(
    {
        "model",
        "messages",
        "input",
        "contents",
        "stream",
        "max_tokens",
        "max_output_tokens",
        "max_completion_tokens",
    }
)

MAX_TOKENS_PER_CALL = 10**12
"""Upper bound of any token count: far above any real call, far below SQL's bigint."""


def normalise_provider(value: str) -> str:
    v = value.strip().lower()
    return PROVIDER_ALIASES.get(v, v)


class _Model(BaseModel):
    # Accept both snake_case and the seeds' camelCase (maxTokens, organizationId).
    model_config = ConfigDict(populate_by_name=True, extra="forbid")


def camel(name: str) -> str:
    """``start_date`` -> ``startDate``: the alias generator of every model that accepts the
    seeds' camelCase."""
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


class Message(_Model):
    role: str
    """system, user, assistant or tool."""
    content: str | list[Any]
    """Plain text, or a list of content parts as the provider accepts them."""


class AIModelRequest(_Model):
    """One call to a model, shaped like seed 004's AIModelRequest."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", alias_generator=camel)

    provider: Provider
    model: ModelName
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1, le=2_000_000)
    """Upper bound of output tokens; the reservation assumes all of them are used."""
    stream: bool = False
    api: Literal["chat", "responses", "embeddings"] = "chat"
    """OpenAI/xAI: Chat Completions or the Responses API; OpenAI/Google: ``embeddings``, where
    each message's text is one input to embed (priced on input tokens, nothing reserved for
    output)."""
    extra: dict[str, Any] = Field(default_factory=dict)
    """Provider-specific body fields passed through unchanged."""

    @field_validator("provider", mode="before")
    @classmethod
    def _norm_provider(cls, v: Any) -> Any:
        return normalise_provider(v) if isinstance(v, str) else v

    @field_validator("extra")
    @classmethod
    def _no_reserved_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        # These are set from the request's own fields; overriding them through `extra` would
        # make the reservation or the response parsing disagree with what is sent.
        clash = sorted(RESERVED_EXTRA_KEYS & set(v))
        if clash:
            raise ValueError(f"extra may not set {', '.join(clash)}: use the request's fields")
        return v


class ExecutionContext(_Model):
    """Who a call is for and where it belongs; seed 004's ExecutionContext."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", alias_generator=camel)

    organization_id: str = Field(min_length=1)
    user_id: Identifier | None = None
    """The app's own identifier of the end user (not necessarily a Supabase user)."""
    session_id: Identifier | None = None
    workflow_id: Identifier | None = None
    conversation_id: Identifier | None = None
    request_id: Identifier | None = None
    """Client-made idempotency key; the same id twice is one event. Generated when absent."""
    tags: Tags = Field(default_factory=list)
    """At most 64, each 1 to 100 characters (quotaflow.limits)."""
    metadata: Metadata = Field(default_factory=dict)
    """A JSON object of at most 16 KiB."""


class Usage(_Model):
    """Tokens of one call, normalised across providers.

    ``input_tokens`` counts *every* prompt token, including those read from or written to the
    cache; ``cached_input_tokens`` and ``cache_write_tokens`` are parts of it. ``output_tokens``
    counts every generated token including reasoning/thinking; ``reasoning_tokens`` is part of it.
    """

    input_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS_PER_CALL)
    output_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS_PER_CALL)
    cached_input_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS_PER_CALL)
    cache_write_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS_PER_CALL)
    reasoning_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS_PER_CALL)
    details: dict[
        Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")],
        Annotated[int, Field(ge=0, le=MAX_TOKENS_PER_CALL)],
    ] = Field(default_factory=dict, max_length=16)
    """Billed dimensions beyond the token columns, by their ``price_dimensions`` name:
    ``cache_write_1h`` (part of cache_write_tokens), ``audio_input`` (of the uncached input),
    ``audio_output`` (of output_tokens), ``web_search`` (requests)."""
    service_tier: str | None = Field(default=None, max_length=40)
    """The service tier the provider reported (``standard``, ``priority``, ``flex``, ...)."""
    estimated: bool = False
    """True when the counts are not the provider's own (missing usage, abandoned stream)."""

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @model_validator(mode="after")
    def _parts_fit(self) -> Usage:
        if self.cached_input_tokens + self.cache_write_tokens > self.input_tokens:
            raise ValueError("cached_input_tokens + cache_write_tokens exceed input_tokens")
        if self.reasoning_tokens > self.output_tokens:
            raise ValueError("reasoning_tokens exceed output_tokens")
        return self


class UsageRecord(_Model):
    """What the database recorded for one call: the row behind every report and callback."""

    log_id: str | None
    """None while the event waits in the outbox (``deferred``)."""
    request_id: str
    organization_id: str
    provider: str
    model: str
    usage: Usage
    cost: Decimal | None
    """USD, priced in SQL from cost_estimates; None while deferred."""
    credits: Decimal | None
    price_id: int | None = None
    priced_model: str | None = None
    """The catalogue model that priced the call (an alias's or snapshot's model)."""
    unpriced: bool = False
    """The model had no price: tokens recorded, cost 0 until ``quotaflow pricing reprice``."""
    deferred: bool = False
    """True when the backend was unreachable and the event waits in the durable outbox."""
    success: bool = True
    duplicate: bool = False
    """True when this request_id had been recorded before; nothing was charged again."""
    user_id: str | None = None
    session_id: str | None = None
    workflow_id: str | None = None
    conversation_id: str | None = None
    latency_ms: int | None = None
    finish_reason: str | None = None
    error: str | None = None
    tags: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None


class AIModelResponse(_Model):
    """The result of ``execute_with_tracking``."""

    content: str
    usage: Usage
    cost: Decimal | None
    """USD as priced by the database; None when the settle was deferred to the outbox."""
    credits: Decimal | None
    model: str
    provider: str
    request_id: str
    log_id: str | None
    latency_ms: int
    embeddings: list[list[float]] | None = None
    """An embeddings call's vectors, one per input message."""
    finish_reason: str | None = None
    duplicate: bool = False
    """True when this request_id had been recorded before: nothing was called or charged."""
    deferred: bool = False
    """True when the usage waits in the durable outbox to be recorded."""


class QuotaCheck(_Model):
    """One row of ``check_quota``."""

    allowed: bool
    quota_limit: Decimal
    current_usage: Decimal
    remaining: Decimal
    quota_type: str
    quota_id: str | None = None
    metric: str | None = None
    enforcement: str | None = None
    reserved: Decimal = Decimal(0)
    reset_at: datetime | None = None


class QuotaStatus(_Model):
    """One row of ``get_quota_status``."""

    quota_id: str
    name: str | None = None
    quota_type: str
    metric: str
    enforcement: str
    user_id: str | None
    provider: str | None
    model: str | None
    quota_limit: Decimal
    current_usage: Decimal
    reserved: Decimal
    remaining: Decimal
    percent_used: Decimal
    window_start: datetime | None
    reset_at: datetime | None
    time_zone: str


class UsageEvent(_Model):
    """One settle event: everything ``record_usage`` needs. Also the outbox's and the
    ``track`` function's payload, so a replay is byte-for-byte the original event."""

    organization_id: str = Field(min_length=1)
    request_id: Identifier
    provider: str = Field(min_length=1, max_length=50)
    model: ModelName
    usage: Usage = Field(default_factory=Usage)
    success: bool = True
    user_id: Identifier | None = None
    session_id: Identifier | None = None
    workflow_id: Identifier | None = None
    conversation_id: Identifier | None = None
    latency_ms: int | None = Field(default=None, ge=0)
    finish_reason: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    tags: Tags = Field(default_factory=list)
    metadata: Metadata = Field(default_factory=dict)
    occurred_at: OccurredAt = None
    """When the call was made (at most 5 minutes ahead of the clock); prices are those in
    force then. Defaults to the settle time."""


class Reservation(_Model):
    """The answer of ``reserve_quota``."""

    reservation_id: str | None
    status: Literal["reserved", "pending", "recorded", "unreserved"]
    """reserved: held now; pending: an earlier hold for this id; recorded: already settled;
    unreserved: the backend was unreachable and the tracker fails open."""
    reserved_cost: Decimal
    reserved_tokens: int
    expires_at: datetime | None = None
    soft_exceeded_quota_ids: list[str] = Field(default_factory=list)
    log_id: str | None = None


class RecordResult(_Model):
    """The answer of ``record_usage``."""

    log_id: str
    cost_usd: Decimal
    credits: Decimal
    price_id: int | None = None
    duplicate: bool = False
    unpriced: bool = False
    """The model has no price yet: the row keeps its tokens at cost 0 until repriced."""
