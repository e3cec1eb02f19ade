#!/usr/bin/env bash
# The test command (see README): setup, lint, types, then the whole pytest suite.
#   bash scripts/test.sh [pytest args...]
# Runs every stage even when an earlier one fails, and exits non-zero if any failed.
# pytest collecting no tests (exit code 5) counts as a failure.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh || exit 1
export PATH="$ROOT/.venv/bin:$PATH"

failed=()

dirs=()
for d in client functions tests bench tools; do
  [ -d "$d" ] && dirs+=("$d")
done
if [ "${#dirs[@]}" -gt 0 ]; then
  ruff check "${dirs[@]}" || failed+=(ruff)
fi

mypy || failed+=(mypy)

# The packaged copies of the SQL (client/quotaflow/_sql) must equal their sources.
python tools/sync_sql.py --check || failed+=("sync_sql (run: python tools/sync_sql.py)")
# The blocking modules (client/quotaflow/_sync) must be what their async sources generate.
python tools/async_to_sync.py --check || failed+=("async_to_sync (run: python tools/async_to_sync.py)")

pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests" >&2
  failed+=("pytest (no tests collected)")
elif [ "$rc" -ne 0 ]; then
  failed+=("pytest (exit $rc)")
fi

if [ "${#failed[@]}" -gt 0 ]; then
  printf 'test.sh: FAILED: %s\n' "${failed[*]}" >&2
  exit 1
fi
