#!/usr/bin/env bash
# The test suite: the linter (ruff, configured in pyproject.toml), then fast unit tests and the slow
# end-to-end runs through the DeepSpeed launcher.
# bash launch/test.sh [pytest args]     e.g.  bash launch/test.sh -m "not slow"
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
ruff check .
exec python -m pytest -q -p no:cacheprovider --timeout 900 --durations=25 "$@"
