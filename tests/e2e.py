"""Helpers for end-to-end tests: run the real CLI under the real DeepSpeed launcher, 2 ranks on CPU."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Small and fast: a few steps of the default recipe on a small synthetic set (its vision stage too: 2 steps).
FAST = ["ce.log_every=1", "scst.log_every=1", "eval.num_beams=2", "eval.batch_size=16", "data.num_workers=0",
        "ce.micro_batch=8", "scst.micro_batch=4", "scst.samples=3", "vision.steps=2", "vision.micro_batch=4",
        "vision.log_every=1"]
# The run conftest.zero3_offload_run shares between modules: CE then SCST, parameters gathered per rollout.
# the contrastive term across ranks (the synth recipe's is per rank): the two-node test then checks that
# the gathered term gives the same losses over TCP between launchers as within one
ZERO3_OFFLOAD_STEPS = ("ce.steps=2", "scst.steps=2", "scst.gather_for_generation=true", "scst.max_new_tokens=12",
                       "ce.itc_across_ranks=true")


def train_command(out: Path, synth: Path, ds_json: str, *overrides: str, recipe: str = "synth") -> list[str]:
    return ["bash", str(ROOT / "launch" / "train.sh"), recipe, str(ROOT / "ds_configs" / ds_json),
            f"synth_dir={synth}", "synth_videos=40", f"output_dir={out}", *FAST, *overrides]


def run_train(out: Path, synth: Path, ds_json: str, *overrides: str, recipe: str = "synth",
              timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    command = train_command(out, synth, ds_json, *overrides, recipe=recipe)
    # Its own process group: on a timeout the launcher's ranks die with it instead of living on as orphans.
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**child_env(), **(env or {})}, start_new_session=True)
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        stdout, stderr = child.communicate()
        raise AssertionError(f"train timed out after {timeout} s:\n{stdout[-3000:]}\n{stderr[-6000:]}") from None
    proc = subprocess.CompletedProcess(command, child.returncode, stdout, stderr)
    assert proc.returncode == 0, f"train failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def child_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", NUM_GPUS="2", PYTHONUNBUFFERED="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def cli(*args: str, timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "ds_videocap.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=child_env())
    if check:
        assert proc.returncode == 0, f"ds-videocap {args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def losses_by_step(out: Path, phase: str) -> dict[int, float]:
    """The last logged loss of each training step (a resumed run logs the replayed steps again)."""
    return {m["step"]: m["loss"] for m in read_metrics(out) if m.get("phase") == phase and "loss" in m}
