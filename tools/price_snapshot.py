"""Regenerates quotaflow's price snapshot from LiteLLM's price map:

    python tools/price_snapshot.py --litellm-json model_prices_and_context_window.json
    python tools/price_snapshot.py --litellm-version 1.110.2   # downloads that wheel, reads its map

Writes client/quotaflow/_prices/snapshot.json: the chat, responses, completion and embedding
models of OpenAI, Anthropic, Google (Gemini) and xAI that LiteLLM prices per token, in
cost_estimates' units (USD per million tokens, exact decimals). Corrections the providers' own
pricing pages make to LiteLLM go in client/quotaflow/_prices/overrides.json (each with its
source URL and the date it was checked), never in the snapshot. ``quotaflow pricing sync``
brings a database up to snapshot + overrides.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "client"))

from quotaflow.cli.pricing import (  # noqa: E402
    LITELLM_URL,
    PRICE_FIELDS,
    SNAPSHOT_MODES,
    parse_litellm_prices,
)

TARGET = ROOT / "client" / "quotaflow" / "_prices" / "snapshot.json"


def _litellm_map(version: str) -> tuple[str, str]:
    """The price map inside the litellm wheel of ``version`` (pip download, no install)."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
             f"litellm=={version}", "-d", tmp],
            check=True,
        )  # fmt: skip
        (wheel,) = Path(tmp).glob("litellm-*.whl")
        with zipfile.ZipFile(wheel) as z:
            return z.read("litellm/model_prices_and_context_window_backup.json").decode(), version


def build(text: str, source: str) -> dict[str, object]:
    parsed = parse_litellm_prices(text, modes=SNAPSHOT_MODES)
    return {
        "source": source,
        "source_url": LITELLM_URL,
        "generated_on": date.today().isoformat(),
        "models": [
            {
                "provider": row.provider,
                "model": row.model,
                "mode": row.mode,
                **({} if row.service_tier == "standard" else {"service_tier": row.service_tier}),
                **{
                    f: (None if row.prices[f] is None else str(row.prices[f])) for f in PRICE_FIELDS
                },
                **(
                    {"rates": {k: str(v) for k, v in sorted(row.rates.items())}}
                    if row.rates
                    else {}
                ),
            }
            for row in parsed.rows
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--litellm-json", help="a model_prices_and_context_window.json")
    given.add_argument("--litellm-version", help="a litellm release to download and read")
    parser.add_argument("--out", default=str(TARGET))
    parser.add_argument("--source", help="what to record as the snapshot's source")
    args = parser.parse_args(argv)
    if args.litellm_json:
        text = Path(args.litellm_json).read_text(encoding="utf-8")
        source = args.source or Path(args.litellm_json).name
    else:
        text, version = _litellm_map(args.litellm_version)
        source = f"litellm {version} model_prices_and_context_window_backup.json"
    snapshot = build(text, source)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(snapshot, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}: {len(snapshot['models'])} models")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
