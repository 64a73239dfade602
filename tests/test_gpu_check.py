"""benchmarks/gpu_check.sh stays runnable between GPU sessions: without a GPU it says so in one line and
exits 0, and its orchestration (train.sh runs, metrics, the planner's estimate, eval and caption) runs on
the CPU with the tiny models (--smoke)."""
import json
import subprocess
import sys

import pytest
from e2e import ROOT, child_env


def test_without_a_gpu_it_says_so_in_one_line():
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=child_env())
    assert proc.returncode == 0
    assert proc.stdout.strip().splitlines() == [
        "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False): nothing to check"]


@pytest.mark.slow
def test_smoke_runs_a_case_and_decodes(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--out",
                           str(tmp_path), "--budget-s", "10000", "--only", "t5xl_zero2_f8", "eval"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, env=child_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    cases = {c["case"]: c for c in report["cases"]}
    assert set(cases) == {"t5xl_zero2_f8", "eval", "caption"}
    assert all(c["status"] == "ok" for c in cases.values())
    train = cases["t5xl_zero2_f8"]
    assert train["ce_samples_per_s"] > 0 and train["scst_samples_per_s"] > 0 and train["rollout_ms"] > 0
    assert train["plan_gpu_gib"] > 0 and train["ce_gpu_peak_gib"] is None  # no GPU memory to report here
    assert cases["caption"]["videos"] == 40 and cases["eval"]["videos"] == 3
