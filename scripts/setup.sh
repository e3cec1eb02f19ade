#!/usr/bin/env bash
# Prepare this machine for the test suite; idempotent, non-interactive. Quiet when nothing is
# missing; otherwise it says on stderr what it installs (the first run takes minutes).
#
#   - apt: postgresql-15 (if no PostgreSQL 15 server is installed), postgresql-15-plpgsql-check
#     (needed by `supabase db lint`), node/npm if missing, chromium (the dashboard's browser test
#     drives Debian's chromium with Playwright). `apt-get update` only when installing.
#   - the PostgreSQL 15 cluster running and accepting trust connections from user postgres on
#     127.0.0.1:5432 (a fresh Debian install uses scram for TCP: a trust rule for loopback is
#     added to pg_hba.conf, for local tests only).
#   - .venv with `pip install -e '.[dev]'`, redone only when pyproject.toml changes.
#   - node_modules from package-lock.json (`npm ci`), redone only when the lock file changes.
#
# Env: PGPORT (default 5432), PG_MAJOR (default 15), PG_CLUSTER (default main).
# Works with CI=true and no stdin.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PG_MAJOR="${PG_MAJOR:-15}"
PG_CLUSTER="${PG_CLUSTER:-main}"
PG_PORT="${PGPORT:-5432}"
PG_HOST=127.0.0.1
export DEBIAN_FRONTEND=noninteractive

LOG="$(mktemp -t quotaflow-setup.XXXXXX)"
trap 'rm -f "$LOG"' EXIT

note() { echo "setup.sh: $*" >&2; }

# Run a command with its output captured; on failure show it and stop.
run() {
  if ! "$@" </dev/null >>"$LOG" 2>&1; then
    echo "setup.sh: failed: $*" >&2
    tail -n 60 "$LOG" >&2
    exit 1
  fi
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

sha() { cat "$@" | sha256sum | cut -d' ' -f1; }

# ---------------------------------------------------------------- apt packages
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
installed "postgresql-$PG_MAJOR" || missing+=("postgresql-$PG_MAJOR" "postgresql-contrib")
installed "postgresql-$PG_MAJOR-plpgsql-check" || missing+=("postgresql-$PG_MAJOR-plpgsql-check")
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
installed chromium || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
  note "installing ${missing[*]} (apt)"
  run as_root apt-get update -qq
  run as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# ---------------------------------------------------------------- PostgreSQL cluster
cluster_status() { pg_lsclusters --no-header 2>/dev/null | awk -v v="$PG_MAJOR" -v c="$PG_CLUSTER" '$1 == v && $2 == c {print $4}'; }

if [ -z "$(cluster_status)" ]; then
  note "creating the PostgreSQL $PG_MAJOR cluster $PG_CLUSTER"
  run as_root pg_createcluster "$PG_MAJOR" "$PG_CLUSTER" --port "$PG_PORT"
fi
if [ "$(cluster_status)" != "online" ]; then
  note "starting PostgreSQL $PG_MAJOR"
  run as_root pg_ctlcluster --skip-systemctl-redirect "$PG_MAJOR" "$PG_CLUSTER" start
fi

can_connect() {
  psql -X -w -q -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -Atc 'select 1' \
    </dev/null >/dev/null 2>&1
}

for _ in $(seq 1 30); do
  pg_isready -q -h "$PG_HOST" -p "$PG_PORT" && break
  sleep 1
done

if ! can_connect; then
  HBA="/etc/postgresql/$PG_MAJOR/$PG_CLUSTER/pg_hba.conf"
  if [ -f "$HBA" ] && ! grep -q '^# quotaflow local tests' "$HBA"; then
    tmp="$(mktemp)"
    {
      echo '# quotaflow local tests: trust loopback TCP (added by scripts/setup.sh)'
      echo 'host    all    all    127.0.0.1/32    trust'
      echo 'host    all    all    ::1/128         trust'
      cat "$HBA"
    } >"$tmp"
    as_root cp "$tmp" "$HBA"
    rm -f "$tmp"
    run as_root pg_ctlcluster --skip-systemctl-redirect "$PG_MAJOR" "$PG_CLUSTER" reload
    sleep 1
  fi
fi
if ! can_connect; then
  echo "setup.sh: cannot connect to PostgreSQL as postgres on $PG_HOST:$PG_PORT without a password" >&2
  pg_lsclusters >&2 || true
  exit 1
fi

# ---------------------------------------------------------------- Python venv
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  note "creating the Python environment .venv"
  run "$PY" -m venv .venv
fi
py_stamp=".venv/.quotaflow-setup-stamp"
py_key="$(sha pyproject.toml)-$(.venv/bin/python -c 'import sys; print(sys.version)' | sha256sum | cut -c1-12)"
if [ "$(cat "$py_stamp" 2>/dev/null || true)" != "$py_key" ]; then
  note "installing quotaflow and its development tools into .venv (pip)"
  run .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
  echo "$py_key" >"$py_stamp"
fi

# ---------------------------------------------------------------- Supabase CLI (npm)
if [ ! -f package-lock.json ]; then
  note "resolving the Supabase CLI (npm install)"
  run npm install --no-audit --no-fund --loglevel=error
fi
npm_stamp="node_modules/.quotaflow-setup-stamp"
npm_key="$(sha package.json package-lock.json)"
if [ "$(cat "$npm_stamp" 2>/dev/null || true)" != "$npm_key" ] || [ ! -x node_modules/.bin/supabase ]; then
  note "installing the pinned Supabase CLI into node_modules (npm ci)"
  run npm ci --no-audit --no-fund --loglevel=error
  echo "$npm_key" >"$npm_stamp"
fi
