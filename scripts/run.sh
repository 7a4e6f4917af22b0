#!/usr/bin/env bash
# Starts the gateway. `scripts/run.sh --demo` needs no API key: it serves from the built-in
# fake upstream. Without --demo set OPENAI_API_KEY (and optionally OPENAI_BASE_URL, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/openai-grpc-server "$@"
