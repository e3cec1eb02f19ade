"""Export memory: 1 million usage-log rows in each format with flat memory.

    .venv/bin/python bench/bench_export.py                 # 1M rows, json + jsonl + csv
    .venv/bin/python bench/bench_export.py --rows 200000 --formats csv

Creates a scratch database (sql/bootstrap + supabase/migrations, see bench/common.py), fills
api_usage_logs of one organization with ``--rows`` rows (one INSERT ... SELECT from
generate_series), then exports them with :func:`quotaflow.reports.export` once per format,
each in a fresh Python process so its peak RSS is its own. The process samples its RSS every
5 ms while it exports the oldest 10,000 rows (the baseline, same run: what any export needs,
one batch in flight), then while it exports all the rows to a file. The figure is the ratio of
the two peaks: flat memory keeps it near 1 whatever the row count. For contrast, the naive way
(fetch every row, then ``json.dump`` the list) is measured the same way (``--no-naive`` skips).

Not part of the test suite (a minute or two for 1M rows); exits 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and `quotaflow` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "client"))

ORG = "00000000-0000-4000-8000-0000000e0001"
FLAT_RATIO = 1.25
"""Peak RSS (all rows) / peak RSS (first 10,000 rows) at or under which an export is flat."""
SAMPLE_SECONDS = 0.005
WARMUP_ROWS = 10_000

FILL = """
insert into public.api_usage_logs
  (organization_id, request_id, user_id, conversation_id, provider, model, input_tokens,
   output_tokens, cached_input_tokens, cost_usd, credits, success, latency_ms, finish_reason,
   tags, metadata, occurred_at)
select %(org)s, 'exp-' || g, 'user-' || (g %% 997), 'conv-' || (g %% 20011), 'openai',
       (array['gpt-4o-mini', 'gpt-4o'])[1 + g %% 2], 500 + g %% 3000, 50 + g %% 700, g %% 500,
       round(((500 + g %% 3000) * 2.5 + (50 + g %% 700) * 10) / 1e6, 10),
       round(((500 + g %% 3000) * 2.5 + (50 + g %% 700) * 10) / 1e3, 10),
       g %% 40 <> 0, 200 + g %% 2500, 'stop', array['bench', 'export'],
       jsonb_build_object('endpoint', '/api/chat', 'n', g),
       now() - interval '60 days' * (1 - g::float8 / %(rows)s)
from generate_series(1, %(rows)s) g
"""


def rss_bytes() -> int:
    """This process's resident set size now (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakSampler:
    """Samples RSS in a thread until stopped; ``peak`` is the highest seen."""

    def __init__(self) -> None:
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def child(url: str, fmt: str) -> None:
    """One measurement, printed as a JSON line."""
    from quotaflow.backends import PostgresBackend
    from quotaflow.reports.analytics import UsageFilters, export

    backend = PostgresBackend(url, min_size=1, max_size=1)
    everything = UsageFilters(organization_id=ORG)
    # Warm-up: the same export of the first WARMUP_ROWS rows (two batches), so the baseline
    # holds what any export needs (modules, pool, one batch in flight) and the figure is what
    # the other 99% of the rows add.
    with backend.connection() as conn:
        row = conn.execute(
            "select occurred_at from public.api_usage_logs where organization_id = %s"
            " order by occurred_at, id offset %s limit 1",
            (ORG, WARMUP_ROWS),
        ).fetchone()
    first_rows = UsageFilters(organization_id=ORG, end=row["occurred_at"] if row else None)
    before = rss_bytes()
    with PeakSampler() as warm, open(os.devnull, "w") as sink:
        export(backend, first_rows, "json" if fmt == "naive" else fmt, sink)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"export.{fmt}"
        t = time.perf_counter()
        with PeakSampler() as sampler, path.open("w", encoding="utf-8", newline="") as out:
            if fmt == "naive":
                with backend.connection() as conn:
                    rows = conn.execute(
                        "select * from public.api_usage_logs where organization_id = %s"
                        " order by occurred_at, id",
                        (ORG,),
                    ).fetchall()
                json.dump(rows, out, default=str)
                n = len(rows)
                del rows
            else:
                n = export(backend, everything, fmt, out)  # type: ignore[arg-type]
        seconds = time.perf_counter() - t
        size = path.stat().st_size
    backend.close()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "format": fmt,
                "rows": n,
                "seconds": seconds,
                "file_bytes": size,
                "rss_before": before,
                "rss_warm_peak": warm.peak,
                "rss_peak": max(sampler.peak, maxrss),
            }
        )
    )


def fill(url: str, rows: int) -> float:
    import psycopg

    t = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "insert into public.organizations (id, name) values (%s, 'export bench')", (ORG,)
        )
        conn.execute("set synchronous_commit = off")
        conn.execute(FILL, {"org": ORG, "rows": rows})
        conn.execute("vacuum (analyze) public.api_usage_logs")
    return time.monotonic() - t


def measure(url: str, fmt: str) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", fmt, "--url", url],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{fmt} export failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    from bench.common import DEFAULT_ADMIN_URL, scratch_database

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--formats", default="json,jsonl,csv")
    parser.add_argument("--no-naive", action="store_true", help="skip the fetch-all contrast")
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("QUOTAFLOW_BENCH_ADMIN_URL", DEFAULT_ADMIN_URL),
        help="a database on the server to create the scratch database from",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.url, args.child)
        return 0

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if not args.no_naive:
        formats.append("naive")
    results = []
    with scratch_database(args.admin_url) as url:
        seconds = fill(url, args.rows)
        print(f"filled {args.rows:,} rows in {seconds:.0f} s", flush=True)
        for fmt in formats:
            results.append(measure(url, fmt))
            print(f"  {fmt}: done", flush=True)

    mb = 1024 * 1024
    warm = f"peak {WARMUP_ROWS // 1000}k rows MB"
    header = ("format", "rows", "seconds", "rows/s", "file MB", "RSS idle MB", warm,
              "peak all rows MB", "ratio", "memory")  # fmt: skip
    lines = [header]
    for r in results:
        ratio = r["rss_peak"] / r["rss_warm_peak"]
        label = "fetch-all + json.dump" if r["format"] == "naive" else r["format"]
        verdict = "flat" if ratio <= FLAT_RATIO else "GROWS"
        lines.append((
            label, f"{int(r['rows']):,}", f"{r['seconds']:.1f}",
            f"{r['rows'] / r['seconds']:,.0f}", f"{r['file_bytes'] / mb:,.0f}",
            f"{r['rss_before'] / mb:,.1f}", f"{r['rss_warm_peak'] / mb:,.1f}",
            f"{r['rss_peak'] / mb:,.1f}", f"{ratio:.2f}",
            verdict if r["format"] != "naive" else "(contrast)",
        ))  # fmt: skip
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    print()
    for i, line in enumerate(lines):
        print("  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(
        f"\nratio = peak RSS exporting all rows / peak RSS exporting the first {WARMUP_ROWS:,}"
        f" (same process); flat = at most {FLAT_RATIO}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
