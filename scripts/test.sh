#!/usr/bin/env bash
# The whole test suite, as CI runs it: lint, format, types, then every test (contract, unit,
# integration through real servers, polyglot clients, benchmark smoke run) with branch coverage
# of the gateway; scripts/check is the fast inner loop. With arguments, only `pytest ARGS` runs
# after the checks (no coverage gate).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff"
ruff check server tests bench
ruff format --check --quiet server tests bench
echo "== mypy --strict server"
mypy --strict server
echo "== mypy --strict tests"
mypy --strict tests

if [ "$#" -eq 0 ]; then
  # The gateway can use either upstream transport; the main run below uses the default
  # (aiohttp), this one the other (httpx's own pool).
  echo "== pytest tests/integration with the httpx transport"
  OPENAI_GRPC_TEST_TRANSPORT=httpx python -m pytest tests/integration -q -m "not slow" -p no:cacheprovider
fi

echo "== pytest"
cov=()
if [ "$#" -eq 0 ]; then
  # Branch coverage of the gateway, gated by pyproject's [tool.coverage.report] fail_under.
  # In-process code only: gateways the tests start as processes are not measured.
  cov=(--cov=openai_grpc_server --cov-branch --cov-report=term)
fi
set +e
python -m pytest "${cov[@]}" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$rc"
