"""Libraries' chatter: shown on stderr with `--verbose`, dropped otherwise; never on a result's stdout.

DeepSpeed logs INFO lines through a handler bound to whatever sys.stdout was when it was imported, and
prints (zero_to_fp32's "Processing zero checkpoint ..."); pycocoevalcap prints BLEU's counts;
bitsandbytes logs a kernel message on import; metrics.py warns that SPICE was skipped on every
evaluation. A command whose standard output is its result (`--json`, the caption table, the eval
table) runs with stdout pointed at the noise log, and writes its result to the stream kept aside.
"""
from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings

NOISE = logging.getLogger("ds_videocap.libraries")


class _ToLog(io.TextIOBase):
    """A text stream whose every line becomes one INFO record of the noise log."""

    def __init__(self):
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            if line.strip():
                NOISE.info(line)
        return len(text)

    def flush(self) -> None:
        if self._partial.strip():
            NOISE.info(self._partial)
        self._partial = ""


@contextlib.contextmanager
def library_output():
    """Context: what libraries print on stdout, and what their child processes write on stderr
    (pycocoevalcap's Java: "PTBTokenizer tokenized ..."), goes to the noise log. Should the work fail,
    the child processes' stderr is logged as a warning, so a Java error is still seen."""
    import os
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture, contextlib.redirect_stdout(_ToLog()):
        os.dup2(capture.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace").strip()
            if text:
                (NOISE.warning if failed else NOISE.info)(text)


class _AtLeast(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record) -> bool:
        return record.levelno >= self.level


@contextlib.contextmanager
def quiet_libraries(verbose: bool, capture_stdout: bool):
    """For one command: the noise log on stderr (verbose) or nowhere, DeepSpeed's INFO lines and
    bitsandbytes' warnings only when verbose, the SPICE note likewise; with `capture_stdout` every
    print on stdout goes to the noise log (the caller writes its result to the real stdout)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    NOISE.addHandler(handler)
    NOISE.propagate = False
    NOISE.setLevel(logging.INFO if verbose else logging.WARNING)
    # A filter, not a level: DeepSpeed sets its logger's level itself when it is imported (later).
    deepspeed_filter = _AtLeast(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("DeepSpeed").addFilter(deepspeed_filter)
    if not verbose:
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    stdout = contextlib.redirect_stdout(_ToLog()) if capture_stdout else contextlib.nullcontext()
    try:
        with warnings.catch_warnings(), stdout:
            if not verbose:
                warnings.filterwarnings("ignore", message="SPICE skipped")
            yield
    finally:
        logging.getLogger("DeepSpeed").removeFilter(deepspeed_filter)
        NOISE.removeHandler(handler)
