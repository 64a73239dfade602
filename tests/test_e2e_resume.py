"""Kill a run (kill -9 of the whole launcher process group) after a checkpoint, resume it, and
check that the losses after the checkpoint equal those of an uninterrupted run with the same seed."""
import json
import os
import signal
import subprocess
import time

import pytest
from e2e import ROOT, child_env, losses_by_step, run_train, train_command

pytestmark = pytest.mark.slow

STEPS = ["ce.steps=6", "ce.save_every=3", "ce.keep_last=3", "scst.steps=0", "ce.warmup_steps=2"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from ds_videocap.synth import make_synthetic_set

    folder = tmp_path_factory.mktemp("synth_resume")
    make_synthetic_set(folder, videos=40, seed=42)
    return folder


def _kill_after_checkpoint(out, synth, ds_json, tag="ce-0000003", timeout=400):
    cmd = train_command(out, synth, ds_json, *STEPS)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    marker = out / "checkpoints" / tag / "COMPLETE"
    deadline = time.time() + timeout
    while not marker.exists():
        assert proc.poll() is None, f"run ended before its checkpoint: {proc.stderr.read()[-3000:]}"
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, mid-run
    proc.wait()
    assert not (out / "summary.json").exists() or "ce" not in json.loads((out / "summary.json").read_text())


# ZeRO-3 only: zero0's resume (a killed rank, steps 4-6 replayed with equal losses) is test_e2e_kill_rank.py's.
@pytest.mark.parametrize("ds_json", ["zero3.json"])
def test_resume_after_kill_matches_uninterrupted(tmp_path, synth, ds_json):
    straight = tmp_path / "straight"
    run_train(straight, synth, ds_json, *STEPS)
    expected = losses_by_step(straight, "ce")
    assert sorted(expected) == [1, 2, 3, 4, 5, 6]

    resumed = tmp_path / "resumed"
    _kill_after_checkpoint(resumed, synth, ds_json)
    run_train(resumed, synth, ds_json, *STEPS, "resume=auto")
    got = losses_by_step(resumed, "ce")
    for step in (4, 5, 6):
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), (step, got, expected)
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["ce"]["test"]["CIDEr"] == pytest.approx(
        json.loads((straight / "summary.json").read_text())["ce"]["test"]["CIDEr"], abs=1e-6)
