"""``quotaflow pricing list|import|reprice``: the price catalogue."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from ._common import (
    CliError,
    add_command,
    add_group,
    connect,
    print_json,
    render_table,
    resolve_org,
)

LITELLM_URL = "https://github.com/BerriAI/litellm/blob/main/model_prices_and_context_window.json"

# LiteLLM's litellm_provider -> quotaflow provider, with a priority when two entries name the
# same model (Google AI Studio's gemini/ prices over Vertex AI's).
LITELLM_PROVIDERS: dict[str, tuple[str, int]] = {
    "openai": ("openai", 0),
    "text-completion-openai": ("openai", 1),
    "anthropic": ("anthropic", 0),
    "gemini": ("google", 0),
    "vertex_ai": ("google", 1),
    "vertex_ai-language-models": ("google", 1),
    "xai": ("xai", 0),
}
_NAME_PREFIXES = ("openai/", "anthropic/", "gemini/", "vertex_ai/", "xai/", "models/")
_MODEL_RE = re.compile(r"^[a-z0-9][a-z0-9_.:/-]*$")
_LONG_RE = re.compile(r"^input_cost_per_token_above_(\d+)k_tokens$")
PRICE_FIELDS = (
    "input_usd_per_mtok",
    "output_usd_per_mtok",
    "cached_input_usd_per_mtok",
    "cache_write_usd_per_mtok",
    "long_context_threshold",
    "long_input_usd_per_mtok",
    "long_output_usd_per_mtok",
    "long_cached_input_usd_per_mtok",
    "long_cache_write_usd_per_mtok",
)


SNAPSHOT_MODES = ("chat", "responses", "completion", "embedding")
"""LiteLLM modes the shipped snapshot carries: what quotaflow can track per token."""


@dataclass
class PriceRow:
    """One model's prices in cost_estimates units (USD per million tokens)."""

    provider: str
    model: str
    prices: dict[str, Decimal | int | None]
    source_name: str = ""
    priority: int = 0
    mode: str = "chat"
    source_url: str | None = None
    checked_on: date | None = None
    rates: dict[str, Decimal] = field(default_factory=dict)
    """Rates of billed dimensions (``price_rates``: per million tokens, per 1,000 requests)."""
    service_tier: str = "standard"


@dataclass
class ParsedPrices:
    rows: list[PriceRow] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(entry name, reason)."""


def _per_million(value: Any) -> Decimal | None:
    """Per-token USD (exact, from the JSON text) to per-million, without exponent notation."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, Decimal)):
        d = Decimal(value) * 1_000_000
    elif isinstance(value, str):
        try:
            d = Decimal(value) * 1_000_000
        except InvalidOperation:
            return None
    else:
        return None
    if not d.is_finite() or d < 0:
        return None
    return _normal(d)


def _normal(d: Decimal) -> Decimal:
    """Without exponent notation or trailing zeros."""
    return d.quantize(Decimal(1)) if d == d.to_integral_value() else d.normalize()


_LITELLM_TIERS = (("_flex", "flex"), ("_priority", "priority"), ("_batches", "batch"))
"""LiteLLM's field suffixes for the service tiers quotaflow prices."""


def _litellm_tier_prices(
    entry: dict[str, Any], suffix: str, standard: dict[str, Decimal | int | None] | None = None
) -> dict[str, Decimal | int | None] | None:
    """A LiteLLM entry's prices for one tier (``suffix`` "" is standard), in cost_estimates
    units; None when the tier has no per-token input and output price. A tier without its own
    long-context prices scales the standard ones by its input and output factors."""
    input_price = _per_million(entry.get("input_cost_per_token" + suffix))
    output_price = _per_million(entry.get("output_cost_per_token" + suffix))
    if output_price is None and not suffix and entry.get("mode") == "embedding":
        output_price = Decimal(0)
    if input_price is None or output_price is None:
        return None
    prices: dict[str, Decimal | int | None] = {
        "input_usd_per_mtok": input_price,
        "output_usd_per_mtok": output_price,
        "cached_input_usd_per_mtok": _per_million(
            entry.get("cache_read_input_token_cost" + suffix)
        ),
        "cache_write_usd_per_mtok": _per_million(
            entry.get("cache_creation_input_token_cost" + suffix)
        ),
        "long_context_threshold": None,
        "long_input_usd_per_mtok": None,
        "long_output_usd_per_mtok": None,
        "long_cached_input_usd_per_mtok": None,
        "long_cache_write_usd_per_mtok": None,
    }
    thresholds = sorted(int(m.group(1)) for k in entry if (m := _LONG_RE.match(k)))
    for n in thresholds:
        above = f"_above_{n}k_tokens"
        long_input = _per_million(entry.get("input_cost_per_token" + above + suffix))
        if long_input is None:
            continue
        prices.update(
            long_context_threshold=n * 1000,
            long_input_usd_per_mtok=long_input,
            long_output_usd_per_mtok=_per_million(
                entry.get("output_cost_per_token" + above + suffix)
            )
            or output_price,
            long_cached_input_usd_per_mtok=_per_million(
                entry.get("cache_read_input_token_cost" + above + suffix)
            ),
            long_cache_write_usd_per_mtok=_per_million(
                entry.get("cache_creation_input_token_cost" + above + suffix)
            ),
        )
        break  # one long-context tier: the lowest threshold
    if (
        standard is not None
        and prices["long_context_threshold"] is None
        and standard["long_context_threshold"] is not None
    ):
        std_in, std_out = standard["input_usd_per_mtok"], standard["output_usd_per_mtok"]
        assert isinstance(std_in, Decimal) and isinstance(std_out, Decimal)
        f_in = input_price / std_in if std_in else Decimal(1)
        f_out = output_price / std_out if std_out else Decimal(1)

        def scaled(field: str, factor: Decimal) -> Decimal | None:
            v = standard[field]
            return None if v is None else _normal(Decimal(v) * factor)

        prices.update(
            long_context_threshold=standard["long_context_threshold"],
            long_input_usd_per_mtok=scaled("long_input_usd_per_mtok", f_in),
            long_output_usd_per_mtok=scaled("long_output_usd_per_mtok", f_out),
            long_cached_input_usd_per_mtok=scaled("long_cached_input_usd_per_mtok", f_in),
            long_cache_write_usd_per_mtok=scaled("long_cache_write_usd_per_mtok", f_in),
        )
    return prices


def _litellm_rates(entry: dict[str, Any]) -> dict[str, Decimal]:
    """The billed dimensions LiteLLM prices, in price_rates units."""
    search = entry.get("search_context_cost_per_query")
    per_search = search.get("search_context_size_medium") if isinstance(search, dict) else None
    per_million_searches = _per_million(per_search)
    rates = {
        "cache_write_1h": _per_million(entry.get("cache_creation_input_token_cost_above_1hr")),
        "audio_input": _per_million(entry.get("input_cost_per_audio_token")),
        "audio_output": _per_million(entry.get("output_cost_per_audio_token")),
        # USD per search -> per 1,000 searches
        "web_search": None
        if per_million_searches is None
        else _normal(per_million_searches / 1000),
    }
    return {k: v for k, v in rates.items() if v is not None}


def parse_litellm_prices(
    text: str, providers: Sequence[str] | None = None, modes: Sequence[str] | None = None
) -> ParsedPrices:
    """The rows of a LiteLLM ``model_prices_and_context_window.json`` quotaflow can use:
    OpenAI, Anthropic, Google (gemini and Vertex AI Gemini) and xAI models priced per token
    (only those of ``modes``, when given)."""
    data = json.loads(text, parse_float=Decimal)
    if not isinstance(data, dict):
        raise CliError("not a LiteLLM price file: expected a JSON object of models")
    parsed = ParsedPrices()
    chosen: dict[tuple[str, str, str], PriceRow] = {}
    for name, entry in data.items():
        if not isinstance(entry, dict) or name == "sample_spec":
            continue
        litellm_provider = str(entry.get("litellm_provider") or "")
        mapping = LITELLM_PROVIDERS.get(litellm_provider)
        if mapping is None:
            parsed.skipped.append((name, f"provider {litellm_provider or '?'} not supported"))
            continue
        provider, priority = mapping
        if providers and provider not in providers:
            continue
        mode = str(entry.get("mode") or "chat")
        if modes and mode not in modes:
            parsed.skipped.append((name, f"mode {mode} not tracked"))
            continue
        model = name.strip().lower()
        for prefix in _NAME_PREFIXES:
            model = model.removeprefix(prefix)
        if provider == "google" and not model.startswith("gemini"):
            parsed.skipped.append((name, "not a Gemini model"))
            continue
        if not _MODEL_RE.match(model):
            parsed.skipped.append((name, "model name quotaflow cannot store"))
            continue
        prices = _litellm_tier_prices(entry, "")
        if prices is None:
            parsed.skipped.append((name, "no per-token input and output price"))
            continue
        rows = [
            PriceRow(provider, model, prices, name, priority, mode, rates=_litellm_rates(entry))
        ]
        for suffix, tier in _LITELLM_TIERS:
            tier_prices = _litellm_tier_prices(entry, suffix, standard=prices)
            if tier_prices is not None:
                rows.append(
                    PriceRow(provider, model, tier_prices, name, priority, mode, service_tier=tier)
                )
        for row in rows:
            key = (provider, model, row.service_tier)
            if key not in chosen or priority < chosen[key].priority:
                chosen[key] = row
    parsed.rows = sorted(chosen.values(), key=lambda r: (r.provider, r.model, r.service_tier))
    return parsed


def _same_prices(
    current: dict[str, Any], new: dict[str, Any], fields: Sequence[str] = PRICE_FIELDS
) -> bool:
    for key in fields:
        a, b = current.get(key), new.get(key)
        if a is None or b is None:
            if a is not b:
                return False
        elif Decimal(a) != Decimal(b):
            return False
    return True


def _fmt_price(v: Any) -> str:
    return "-" if v is None else str(v)


def _changes(current: dict[str, Any], new: dict[str, Any]) -> str:
    return ", ".join(
        f"{f.removesuffix('_usd_per_mtok')} {_fmt_price(current.get(f))}"
        f" -> {_fmt_price(new.get(f))}"
        for f in PRICE_FIELDS
        if not _same_prices({f: current.get(f)}, {f: new.get(f)}, (f,))
    )


def apply_prices(
    conn: Any,
    rows: Sequence[PriceRow],
    *,
    source_url: str,
    only_existing: bool = False,
    managed: bool = False,
) -> tuple[dict[str, int], list[str]]:
    """Brings cost_estimates up to ``rows``: a new model is added (from the catalogue's start,
    or after its last closed row), a changed price closes the current row now and opens a new
    one from now (never back-dated, so logged costs never move), an unchanged one is left
    alone; models absent from ``rows`` are not touched. ``managed`` (a sync): the rows written
    are quotaflow's, and a current row an operator set (``managed`` false) is kept and
    reported. Returns counts and diff lines."""
    counts = {"new": 0, "changed": 0, "unchanged": 0, "custom": 0}
    diff: list[str] = []
    now = conn.execute("select now() as t").fetchone()["t"]
    for row in rows:
        existing = conn.execute(
            "select * from public.cost_estimates where provider = %s and model = %s"
            " and service_tier = %s order by effective_from",
            (row.provider, row.model, row.service_tier),
        ).fetchall()
        label = f"{row.provider}/{row.model}" + (
            "" if row.service_tier == "standard" else f" [{row.service_tier}]"
        )
        current = next((r for r in existing if r["effective_to"] is None), None)
        current_rates = {} if current is None else _rates_of(conn, current["id"])
        if current is not None and _same_prices(current, row.prices) and current_rates == row.rates:
            counts["unchanged"] += 1
            continue
        if current is None and only_existing:
            continue
        if current is not None and managed and not current["managed"]:
            counts["custom"] += 1
            diff.append(f"= {label}: kept the operator's price")
            continue
        values = {
            **row.prices,
            "provider": row.provider,
            "model": row.model,
            "source_url": row.source_url or source_url,
            "checked_on": row.checked_on or date.today(),
            "managed": managed,
            "service_tier": row.service_tier,
        }
        if current is not None:
            conn.execute(
                "update public.cost_estimates set effective_to = %s where id = %s",
                (now, current["id"]),
            )
            values["effective_from"] = now  # the new row begins where the old one ends
            counts["changed"] += 1
            changes = (
                [_changes(current, row.prices)] if not _same_prices(current, row.prices) else []
            )
            changes += [
                f"{d} {_fmt_price(current_rates.get(d))} -> {_fmt_price(row.rates.get(d))}"
                for d in sorted(set(current_rates) | set(row.rates))
                if current_rates.get(d) != row.rates.get(d)
            ]
            diff.append(f"~ {label}: {', '.join(changes)}")
        else:
            if existing:  # only closed rows: start after the last one ended
                values["effective_from"] = max(r["effective_to"] for r in existing)
            counts["new"] += 1
            p = row.prices
            diff.append(
                f"+ {label}: input {_fmt_price(p['input_usd_per_mtok'])},"
                f" output {_fmt_price(p['output_usd_per_mtok'])}"
            )
        names = ", ".join(values)
        marks = ", ".join(f"%({k})s" for k in values)
        price_id = conn.execute(
            f"insert into public.cost_estimates ({names}) values ({marks}) returning id", values
        ).fetchone()["id"]
        for dimension, usd in row.rates.items():
            conn.execute(
                "insert into public.price_rates (price_id, dimension, usd) values (%s, %s, %s)",
                (price_id, dimension, usd),
            )
    return counts, diff


def _rates_of(conn: Any, price_id: int) -> dict[str, Decimal]:
    rows = conn.execute(
        "select dimension, usd from public.price_rates where price_id = %s and not long_context",
        (price_id,),
    ).fetchall()
    return {r["dimension"]: Decimal(r["usd"]) for r in rows}


def cmd_pricing_import(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc}") from exc
    try:
        parsed = parse_litellm_prices(text, args.provider)
    except json.JSONDecodeError as exc:
        raise CliError(f"{path} is not JSON: {exc}") from exc
    with connect(args) as conn, conn.transaction(force_rollback=args.dry_run):
        counts, changes = apply_prices(
            conn, parsed.rows, source_url=args.source_url, only_existing=args.only_existing
        )
    if args.verbose:
        for line in changes:
            print(line)
        for name, reason in parsed.skipped:
            print(f"skipped {name}: {reason}")
    prefix = "pricing import (dry run, nothing written)" if args.dry_run else "pricing import"
    print(
        f"{prefix}: {counts['new']} new, {counts['changed']} changed,"
        f" {counts['unchanged']} unchanged, {len(parsed.skipped)} skipped"
    )
    return 0


# ---- the shipped snapshot ----------------------------------------------------------------

MAX_PRICE_FILE = 50 * 2**20


def _price_value(field: str, v: Any) -> Decimal | int | None:
    if v is None:
        return None
    return int(v) if field == "long_context_threshold" else Decimal(str(v))


def _snapshot_rows(data: dict[str, Any]) -> list[PriceRow]:
    rows = []
    for m in data["models"]:
        prices: dict[str, Decimal | int | None] = {}
        for f in PRICE_FIELDS:
            v = m.get(f)
            prices[f] = (
                None if v is None else int(v) if f == "long_context_threshold" else Decimal(v)
            )
        rates = {k: Decimal(str(v)) for k, v in (m.get("rates") or {}).items()}
        rows.append(
            PriceRow(m["provider"], m["model"], prices, mode=m.get("mode", "chat"),
                     source_url=data.get("source_url"), rates=rates,
                     service_tier=m.get("service_tier", "standard"))
        )  # fmt: skip
    return rows


def _apply_overrides(rows: list[PriceRow], overrides: list[dict[str, Any]]) -> list[PriceRow]:
    """Overrides replace fields of a snapshot model (or add a model LiteLLM lacks), each
    recorded with its own source URL and the date it was checked."""
    by_key = {(r.provider, r.model, r.service_tier): r for r in rows}
    for o in overrides:
        key = (o["provider"], o["model"], o.get("service_tier", "standard"))
        base = by_key.get(key)
        if base is None and not {"input_usd_per_mtok", "output_usd_per_mtok"} <= set(o["fields"]):
            continue  # corrects a model this source does not list
        prices: dict[str, Decimal | int | None] = (
            dict(base.prices) if base else dict.fromkeys(PRICE_FIELDS)
        )
        for f, v in o["fields"].items():
            if f not in PRICE_FIELDS:
                raise CliError(f"override of {key[0]}/{key[1]}: unknown field {f}")
            prices[f] = (
                None if v is None else int(v) if f == "long_context_threshold" else Decimal(str(v))
            )
        rates = {
            **(base.rates if base else {}),
            **{k: Decimal(str(v)) for k, v in (o.get("rates") or {}).items()},
        }
        by_key[key] = PriceRow(
            key[0], key[1], prices, mode=o.get("mode", base.mode if base else "chat"),
            source_url=o["source_url"], checked_on=date.fromisoformat(o["checked_on"]),
            rates=rates, service_tier=key[2],
        )  # fmt: skip
    return sorted(by_key.values(), key=lambda r: (r.provider, r.model, r.service_tier))


def _overrides() -> list[dict[str, Any]]:
    from .._resources import read_text

    overrides: list[dict[str, Any]] = json.loads(read_text("_prices", "overrides.json"))[
        "overrides"
    ]
    return overrides


def shipped_prices() -> tuple[list[PriceRow], str]:
    """The package's snapshot with its overrides applied, and a line saying what it is."""
    from .._resources import read_text

    data = json.loads(read_text("_prices", "snapshot.json"))
    overrides = _overrides()
    rows = _apply_overrides(_snapshot_rows(data), overrides)
    return rows, f"{data['source']} of {data['generated_on']} + {len(overrides)} override(s)"


def _read_source(source: str) -> str:
    if source.startswith(("https://", "http://")):
        import httpx

        with httpx.stream("GET", source, timeout=30, follow_redirects=True) as r:
            r.raise_for_status()
            chunks, size = [], 0
            for chunk in r.iter_bytes():
                size += len(chunk)
                if size > MAX_PRICE_FILE:
                    raise CliError(f"{source} is larger than {MAX_PRICE_FILE // 2**20} MiB")
                chunks.append(chunk)
        return b"".join(chunks).decode("utf-8")
    try:
        return Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {source}: {exc}") from exc


def prices_from(source: str | None) -> tuple[list[PriceRow], str]:
    """Price rows of ``source`` (a quotaflow snapshot or a LiteLLM map, file or URL), or the
    shipped snapshot when None."""
    if source is None:
        return shipped_prices()
    text = _read_source(source)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{source} is not JSON: {exc}") from exc
    # quotaflow's overrides correct LiteLLM's map whichever copy of it is synced.
    overrides = _overrides()
    if isinstance(data, dict) and isinstance(data.get("models"), list):
        rows = _snapshot_rows(data)
        what = f"snapshot {source}"
    else:
        rows = parse_litellm_prices(text, modes=SNAPSHOT_MODES).rows
        what = f"LiteLLM map {source}"
    return _apply_overrides(rows, overrides), f"{what} + {len(overrides)} override(s)"


def sync(conn: Any, source: str | None = None) -> tuple[dict[str, int], list[str], str]:
    rows, what = prices_from(source)
    counts, diff = apply_prices(conn, rows, source_url=LITELLM_URL, managed=True)
    return counts, diff, what


def cmd_pricing_sync(args: argparse.Namespace) -> int:
    with connect(args) as conn, conn.transaction(force_rollback=args.dry_run):
        counts, diff, what = sync(conn, args.source)
    for line in diff:
        print(line)
    prefix = "pricing sync (dry run, nothing written)" if args.dry_run else "pricing sync"
    print(
        f"{prefix} to {what}: {counts['new']} new, {counts['changed']} changed,"
        f" {counts['unchanged']} unchanged, {counts['custom']} operator price(s) kept;"
        " models not in it left as they are"
    )
    return 0


PRICE_COLUMNS = [
    ("provider", "provider"),
    ("model", "model"),
    ("service_tier", "tier"),
    ("input_usd_per_mtok", "input $/Mtok"),
    ("output_usd_per_mtok", "output $/Mtok"),
    ("cached_input_usd_per_mtok", "cached in"),
    ("cache_write_usd_per_mtok", "cache write"),
    ("long_context_threshold", "long above"),
    ("long_input_usd_per_mtok", "long in"),
    ("long_output_usd_per_mtok", "long out"),
    ("effective_from", "from (UTC)"),
]


def cmd_pricing_list(args: argparse.Namespace) -> int:
    where = ["(%(all)s or effective_to is null)"]
    params: dict[str, Any] = {"all": args.all}
    if args.provider:
        where.append("provider = any(%(provider)s)")
        params["provider"] = args.provider
    if args.model:
        where.append("model like %(model)s")
        params["model"] = "%" + args.model.lower().replace("%", r"\%").replace("_", r"\_") + "%"
    with connect(args) as conn:
        rows = conn.execute(
            "select * from public.cost_estimates where "
            + " and ".join(where)
            + " order by provider, model, service_tier, effective_from",
            params,
        ).fetchall()
    if args.json:
        print_json(rows)
        return 0
    columns = PRICE_COLUMNS + ([("effective_to", "to (UTC)")] if args.all else [])
    print(render_table(rows, columns))
    return 0


def cmd_pricing_reprice(args: argparse.Namespace) -> int:
    """Prices unpriced usage rows whose model now has a price, batch by batch."""
    if args.batch < 1 or args.batch > 100_000:
        raise CliError("--batch must be between 1 and 100000")
    total = 0
    left = 0
    with connect(args) as conn:
        org = resolve_org(conn, args.organization) if args.organization else None
        while True:  # autocommit: each batch is its own transaction
            row = conn.execute(
                "select * from public.reprice_usage(%s, %s)", (org, args.batch)
            ).fetchone()
            done, left = int(row["repriced"]), int(row["still_unpriced"])
            total += done
            if done < args.batch:
                break
    print(f"pricing reprice: {total} row(s) priced, {left} still without a price")
    return 0


def register(sub: Any) -> None:
    psub = add_group(sub, "pricing", "list and import model prices")
    p = add_command(psub, "list", "list current prices (USD per million tokens)", cmd_pricing_list)
    p.add_argument("--provider", action="append", help="only this provider (repeatable)")
    p.add_argument("--model", help="only models whose name contains this")
    p.add_argument("--all", action="store_true", help="include closed (past) prices")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = add_command(
        psub,
        "import",
        "import LiteLLM's model_prices_and_context_window.json: changed prices close the old"
        " row and open a new one, unchanged rows are left alone",
        cmd_pricing_import,
    )
    p.add_argument("file", help="path to model_prices_and_context_window.json")
    p.add_argument(
        "--provider",
        action="append",
        choices=["openai", "anthropic", "google", "xai"],
        help="only this provider (repeatable)",
    )
    p.add_argument("--only-existing", action="store_true", help="update known models only")
    p.add_argument("--dry-run", action="store_true", help="count, write nothing")
    p.add_argument("--source-url", default=LITELLM_URL, help="recorded as each row's source")
    p.add_argument("-v", "--verbose", action="store_true", help="list each change and skip")
    p = add_command(
        psub,
        "sync",
        "bring the catalogue up to the shipped price snapshot (LiteLLM's map + quotaflow's"
        " overrides) or another: new models added, a changed price closes the old row and"
        " opens a new one from now, models not in it left alone; prints the diff",
        cmd_pricing_sync,
    )
    p.add_argument(
        "--from", dest="source", metavar="FILE|URL",
        help="a quotaflow snapshot or LiteLLM model_prices_and_context_window.json (default:"
        " the snapshot shipped with this quotaflow)",
    )  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="print the diff, write nothing")
    p = add_command(
        psub,
        "reprice",
        "price usage rows recorded while their model had no price (at the price of their time;"
        " usd quotas whose window is still open are charged)",
        cmd_pricing_reprice,
    )
    p.add_argument("--organization", help="only this organization's rows (id or name)")
    p.add_argument("--batch", type=int, default=1000, help="rows per transaction")
