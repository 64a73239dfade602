#!/usr/bin/env bash
# Sourced by train.sh and test.sh: make .venv, install torch only if missing, then the project.
# Costs seconds when everything is already there (a stamp file records the installed setup.cfg).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"   # GPU users: e.g. TORCH_SPEC="torch --index-url ..."
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[env] creating $VENV" >&2
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"

if ! python -c "import torch" 2>/dev/null; then
  echo "[env] installing $TORCH_SPEC" >&2
  # shellcheck disable=SC2086
  pip install -q $TORCH_SPEC
fi

STAMP="$VENV/.ds_videocap_installed"
WANT="$(cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml" | sha1sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ] || ! command -v ds-videocap >/dev/null; then
  echo "[env] installing ds-videocap and its dependencies" >&2
  pip install -q -e "$ROOT[test]"
  echo "$WANT" > "$STAMP"
fi
# DeepSpeed on a CPU-only machine: its CPU accelerator, gloo, and no surprise thread oversubscription.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1
# DeepSpeed's JIT ops (CPU Adam, the CPU accelerator's shared-memory comm) built once per venv: a shared
# ~/.cache/torch_extensions makes two checkouts' venvs rebuild them (~1-2 min) each time they alternate.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$VENV/torch_extensions}"
