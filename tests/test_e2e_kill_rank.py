"""kill -9 of ONE rank (not the launcher) while it writes a checkpoint, then resume=auto.

The run gets through step 6 (its losses are those of an uninterrupted run) and is killed while the
step-6 checkpoint is being written: resume must take the complete step-3 checkpoint, never the
half-written one, and replay steps 4-6 with the same losses. When the write is too fast to catch,
the kill lands just after it and the marker is removed, which leaves the same half-written state.
(test_e2e_resume.py kills the whole launcher mid-step.)
"""
import os
import shutil
import signal
import subprocess
import time

import psutil
import pytest
from e2e import ROOT, child_env, losses_by_step, run_train, train_command
from test_e2e_resume import STEPS, synth  # noqa: F401  (the module's synthetic-set fixture)

pytestmark = pytest.mark.slow


def rank_processes(launcher: psutil.Process) -> dict[int, psutil.Process]:
    """rank -> process: the launcher's descendants running `-m ds_videocap.cli train`."""
    ranks = {}
    for child in launcher.children(recursive=True):
        try:
            cmd = child.cmdline()
            if "ds_videocap.cli" in cmd and "train" in cmd:
                ranks[int(child.environ().get("RANK", -1))] = child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return ranks


def kill_rank_during_write(out, synth_dir, tag="ce-0000006", rank=0, timeout=400) -> bool:
    """Start a run; kill -9 `rank` once checkpoint `tag` appears. True when the kill beat the marker."""
    proc = subprocess.Popen(train_command(out, synth_dir, "zero0.json", *STEPS), cwd=ROOT, env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    folder, deadline, victim = out / "checkpoints" / tag, time.time() + timeout, None
    try:
        while victim is None or not folder.exists():
            assert proc.poll() is None, "the run ended before its checkpoint"
            assert time.time() < deadline, "no checkpoint in time"
            victim = victim or rank_processes(psutil.Process(proc.pid)).get(rank)
            time.sleep(0.002)
        victim.send_signal(signal.SIGKILL)
        caught = not (folder / "COMPLETE").exists()
        # The launcher notices the dead rank, stops the other one and exits non-zero by itself.
        assert proc.wait(timeout=120) != 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return caught


def test_kill_one_rank_mid_checkpoint_then_resume(tmp_path, synth):  # noqa: F811
    out = tmp_path / "run"
    caught = kill_rank_during_write(out, synth)
    print(f"kill -9 of rank 0 landed {'during' if caught else 'after'} the checkpoint write")
    uninterrupted = losses_by_step(out, "ce")  # steps 1-6 ran before the kill
    assert sorted(uninterrupted) == [1, 2, 3, 4, 5, 6]
    half = out / "checkpoints" / "ce-0000006"
    if not caught:
        (half / "COMPLETE").unlink()  # the write beat the kill: make it half-written by hand
    assert (out / "checkpoints" / "ce-0000003" / "COMPLETE").is_file() and not (half / "COMPLETE").exists()
    shutil.copy(out / "metrics.jsonl", tmp_path / "before.jsonl")

    proc = run_train(out, synth, "zero0.json", *STEPS, "resume=auto")
    assert "resumed from" in proc.stdout and "ce-0000003 (ce step 3)" in proc.stdout, proc.stdout[-2000:]
    replayed = [line for line in (out / "metrics.jsonl").read_text().splitlines()[
        len((tmp_path / "before.jsonl").read_text().splitlines()):] if '"loss"' in line]
    resumed = losses_by_step(out, "ce")
    assert len(replayed) == 3  # steps 4, 5, 6 again; nothing before the checkpoint re-run
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(uninterrupted[step], rel=1e-5, abs=1e-6), (step, caught)
    assert (half / "COMPLETE").is_file() and (out / "summary.json").is_file()
