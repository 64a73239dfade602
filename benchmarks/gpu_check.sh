#!/usr/bin/env bash
# One command on a GPU machine: the study's models at real sizes (random weights, no download) through
# launch/train.sh and the CLI; prints and writes gpu_check.json (see benchmarks/gpu_check.py).
#   bash benchmarks/gpu_check.sh [--out DIR] [--budget-s 450] [--only CASE ...]
# GPU users install a CUDA torch first, e.g.
#   TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" bash benchmarks/gpu_check.sh
# Without a GPU it says so in one line and exits 0.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../launch/env.sh"
cd "$ROOT"
export OMP_NUM_THREADS="${GPU_CHECK_THREADS:-8}"
exec python benchmarks/gpu_check.py "$@"
