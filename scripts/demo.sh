#!/usr/bin/env bash
# The demo command (see README): installs/starts what is missing, then plays the narrated
# offline demo (quotaflow demo). PostgreSQL is stopped again afterwards if this
# script had to start it.
#   bash scripts/demo.sh [--keep] [--database-url URL]
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PG_MAJOR="${PG_MAJOR:-15}"
PG_CLUSTER="${PG_CLUSTER:-main}"
was_running=0
pg_isready -q -h 127.0.0.1 -p "${PGPORT:-5432}" 2>/dev/null && was_running=1

echo "demo.sh: checking this machine (the first run installs PostgreSQL, a Python environment"
echo "         and the Supabase CLI, which takes a few minutes; later runs take seconds)"
bash scripts/setup.sh || exit 1
.venv/bin/quotaflow demo "$@"
rc=$?

if [ "$was_running" -eq 0 ]; then
  pg_ctlcluster --skip-systemctl-redirect "$PG_MAJOR" "$PG_CLUSTER" stop >/dev/null 2>&1 || true
  echo "demo.sh: stopped the PostgreSQL cluster it started"
fi
exit "$rc"
