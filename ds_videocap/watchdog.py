"""Stop a rank whose launcher died.

`kill -9` of the DeepSpeed launcher (or of its per-node launch.py) leaves the ranks running as
orphans: they would finish the run in the background and race a `resume=auto` started in the same
output folder. Each rank therefore watches its parent (and, under DeepSpeed's launch.py, the
launcher above it) from a daemon thread and exits as soon as either is gone. Linux only (reads /proc);
elsewhere a no-op.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path


def _parent_of(pid: int) -> int | None:
    try:
        # /proc/PID/stat: "pid (comm) state ppid ...": comm may hold spaces, so split after the ')'.
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a killed parent is a zombie until its own parent reaps it


def watch_launcher(interval_s: float = 1.0, exit_code: int = 1) -> threading.Thread | None:
    """Start the watch; returns the daemon thread (None when there is nothing to watch)."""
    if not Path("/proc/self/stat").is_file():
        return None
    parent = os.getppid()
    chain = [parent]
    if b"deepspeed.launcher.launch" in _cmdline(parent):
        # Under DeepSpeed's runner the user-facing launcher is the grandparent. Other launchers
        # (torchrun from a shell) may have a grandparent that legitimately exits, e.g. with nohup.
        chain.append(_parent_of(parent))
    chain = [pid for pid in chain if pid and pid > 1]
    if not chain:
        return None

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            gone = [pid for pid in chain if not _alive(pid)]
            if gone:
                print(f"ds-videocap: error: the launcher (pid {gone[0]}) is gone; rank {os.environ.get('RANK', '?')} "
                      "stops too (resume with resume=auto)", file=sys.stderr, flush=True)
                os._exit(exit_code)

    thread = threading.Thread(target=watch, name="launcher-watchdog", daemon=True)
    thread.start()
    return thread
