#!/usr/bin/env bash
# Train a recipe under the DeepSpeed launcher.
#   bash launch/train.sh                                   the main job: synthetic set, tiny OPT, CE then SCST,
#                                                          ZeRO-3 + CPU offload on 2 ranks, test metrics table
#   bash launch/train.sh RECIPE [DS_JSON] [key=value ...]  e.g. synth_t5 ds_configs/zero2.json ce.steps=100
# Paths you give (DS_JSON, a recipe file, data.*=, model.path=, output_dir= ...) are relative to the folder
# you run this from, wherever this script lives; the run folder's config.yaml stores them absolute.
# Environment:
#   NUM_GPUS   processes on this node (default: every visible GPU, or 2 on a CPU-only machine)
#   HOSTFILE   a DeepSpeed hostfile for several nodes (launched over ssh/pdsh by the launcher)
#   NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT   several nodes without ssh: run this script once
#              per node with its NODE_RANK, the same MASTER_ADDR/MASTER_PORT everywhere (the
#              launcher's --no_ssh mode; a HOSTFILE, if set, names the nodes, else one is written)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
# Paths the user gives (DS_JSON, a recipe file, key=value paths) are relative to where they stand;
# ds-videocap resolves them against this folder, since the launcher runs from the repository root.
export DS_VIDEOCAP_CWD="$PWD"
cd "$ROOT"

RECIPE=synth
DS_JSON=ds_configs/zero3_offload.json
if [ $# -gt 0 ] && [[ "$1" != *=* ]] && [[ "$1" != *.json ]]; then RECIPE="$1"; shift; fi
if [ $# -gt 0 ] && [[ "$1" == *.json ]]; then DS_JSON="$1"; shift; fi

if [ -z "${NUM_GPUS:-}" ]; then
  NUM_GPUS=$(python -c "import torch; print(torch.cuda.device_count())")
  [ "$NUM_GPUS" -gt 0 ] || NUM_GPUS=2
fi
if [ -n "${NNODES:-}" ] && [ "${NNODES}" -gt 1 ]; then
  : "${MASTER_PORT:?set MASTER_PORT (the same on every node)}"
fi
MASTER_PORT="${MASTER_PORT:-$(python -c 'import socket; s=socket.socket(); s.bind(("",0)); print(s.getsockname()[1])')}"

LAUNCH=(deepspeed --master_port "$MASTER_PORT")
if [ -n "${NNODES:-}" ] && [ "${NNODES}" -gt 1 ]; then
  # --no_ssh still takes the node list from a hostfile: without one the launcher sees only localhost,
  # refuses --num_nodes > 1 and replaces --master_addr by 127.0.0.1. The names only label the nodes
  # (this node is line NODE_RANK), so any unique names do.
  if [ -z "${HOSTFILE:-}" ]; then
    HOSTFILE="$(mktemp "${TMPDIR:-/tmp}/ds_videocap_hosts.XXXXXX")"
    for ((i = 0; i < NNODES; i++)); do echo "node$i slots=$NUM_GPUS"; done > "$HOSTFILE"
  fi
  LAUNCH+=(--hostfile "$HOSTFILE" --no_ssh --num_nodes "$NNODES" --node_rank "${NODE_RANK:?set NODE_RANK}" \
           --master_addr "${MASTER_ADDR:?set MASTER_ADDR}" --num_gpus "$NUM_GPUS")
elif [ -n "${HOSTFILE:-}" ]; then
  LAUNCH+=(--hostfile "$HOSTFILE")
else
  LAUNCH+=(--num_gpus "$NUM_GPUS")
fi
echo "[train] recipe=$RECIPE deepspeed=$DS_JSON ranks/node=$NUM_GPUS $*"
exec "${LAUNCH[@]}" --no_local_rank --module ds_videocap.cli train --recipe "$RECIPE" --deepspeed "$DS_JSON" "$@"
