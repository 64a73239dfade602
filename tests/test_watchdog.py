"""A rank whose launcher is killed with -9 stops by itself instead of running on as an orphan."""
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.skipif(not os.path.isfile("/proc/self/stat"), reason="Linux /proc only")

# launcher -> launch -> rank, like deepspeed -> deepspeed.launcher.launch -> ds_videocap.cli train.
RANK = ("import time; from ds_videocap.watchdog import watch_launcher; watch_launcher(0.1); "
        "print('ready', flush=True); time.sleep(30)")
# The middle process is named like DeepSpeed's launch.py (`-m deepspeed.launcher.launch`): only then is
# the launcher above it watched too.
LAUNCH = ("import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', sys.argv[1]]); "
          "print(p.pid, flush=True); p.wait()  # deepspeed.launcher.launch")
LAUNCHER = "import subprocess, sys; subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2]]).wait()"


def _start(tmp_path):
    out = open(tmp_path / "out.txt", "w")
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, LAUNCH, RANK], stdout=out, stderr=subprocess.STDOUT,
                                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    deadline = time.time() + 30
    while "ready" not in (tmp_path / "out.txt").read_text():
        assert time.time() < deadline and launcher.poll() is None
        time.sleep(0.05)
    rank_pid = int((tmp_path / "out.txt").read_text().split()[0])
    return launcher, rank_pid


def _gone_soon(pid, seconds=10.0):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # our own child: reap it, so that it does not linger as a zombie
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("victim", ["launcher", "launch"])
def test_rank_stops_when_its_launcher_is_killed(tmp_path, victim):
    launcher, rank_pid = _start(tmp_path)
    try:
        if victim == "launcher":
            launcher.send_signal(signal.SIGKILL)
            launcher.wait()
        else:
            launch_pid = int(open(f"/proc/{rank_pid}/stat").read().rsplit(")", 1)[1].split()[1])
            os.kill(launch_pid, signal.SIGKILL)
        assert _gone_soon(rank_pid), "the rank kept running without its launcher"
        assert "is gone; rank" in (tmp_path / "out.txt").read_text()
    finally:
        for pid in (rank_pid, launcher.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        launcher.wait()
