"""Two nodes x one rank over loopback through launch/train.sh's no-ssh mode (NNODES, NODE_RANK,
MASTER_ADDR, MASTER_PORT): one DeepSpeed launcher per node, started together, sharing the output
folder. Its CE losses and SCST rewards must equal those of one node x two ranks (the shared
zero3_offload run, conftest.py): the data order depends only on (seed, rank, world), and the
reductions see the same two ranks either way.
"""
import json
import socket
import subprocess

import pytest
from e2e import ROOT, ZERO3_OFFLOAD_STEPS, child_env, losses_by_step, read_metrics, train_command

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_one_rank_each_match_one_node_two_ranks(tmp_path, synth40, zero3_offload_run):
    out = tmp_path / "two_nodes"
    port = str(_free_port())
    nodes = []
    for node_rank in (0, 1):
        env = dict(child_env(), NUM_GPUS="1", NNODES="2", NODE_RANK=str(node_rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port)
        log = open(tmp_path / f"node{node_rank}.log", "w")
        command = train_command(out, synth40, "zero3_offload.json", *ZERO3_OFFLOAD_STEPS)
        nodes.append((subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env), log))
    try:
        codes = [proc.wait(timeout=600) for proc, _ in nodes]
    finally:
        for proc, log in nodes:
            if proc.poll() is None:
                proc.kill()
            log.close()
    logs = [(tmp_path / f"node{i}.log").read_text() for i in (0, 1)]
    assert codes == [0, 0], "\n\n".join(text[-4000:] for text in logs)
    # each launcher started one process, and the two formed one world of two
    for i, text in enumerate(logs):
        assert f"nnodes=2, num_local_procs=1, node_rank={i}" in text, text[-3000:]
        assert "dist_world_size=2" in text

    two_nodes, one_node = losses_by_step(out, "ce"), losses_by_step(zero3_offload_run, "ce")
    assert sorted(two_nodes) == [1, 2]
    assert two_nodes == pytest.approx(one_node, rel=1e-5, abs=1e-6)
    rewards = [[m["reward"] for m in read_metrics(run) if m.get("phase") == "scst" and "reward" in m]
               for run in (out, zero3_offload_run)]
    assert len(rewards[0]) == 2 and rewards[0] == pytest.approx(rewards[1], rel=1e-5, abs=1e-6)
    # rank 0 (on node 0) alone wrote the shared folder's outputs; each rank its checkpoint shard
    assert "CIDEr" in json.loads((out / "summary.json").read_text())["ce"]["test"]
    shards = sorted(p.name for p in (out / "checkpoints").glob("scst-*/zero_pp_rank_*_model_states.pt"))
    assert shards == ["zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt"]
