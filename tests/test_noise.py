"""Libraries' chatter is dropped unless --verbose, and never reaches a result command's stdout:
pycocoevalcap's prints and its Java tokenizer's stderr lines, DeepSpeed's logger, the SPICE note."""
import logging
import sys

from ds_videocap.metrics import score_captions
from ds_videocap.noise import quiet_libraries

RESULTS, REFS = {"v1": "a dog runs", "v2": "a cat"}, {"v1": ["a dog is running"], "v2": ["a cat sits", "a cat"]}


def _score_and_log(verbose: bool, capfd):
    with quiet_libraries(verbose, capture_stdout=True):
        scores = score_captions(RESULTS, REFS)
        print("a library's print")
        logging.getLogger("DeepSpeed").info("a DeepSpeed INFO line")
        logging.getLogger("DeepSpeed").error("a DeepSpeed error")
    out, err = capfd.readouterr()
    return scores, out, err


def test_dropped_by_default(capfd):
    scores, out, err = _score_and_log(False, capfd)
    assert scores["CIDEr"] > 0
    assert out == ""
    for noise in ("PTBTokenizer", "testlen", "a library's print", "SPICE skipped", "INFO line"):
        assert noise not in err, (noise, err)


def test_shown_on_stderr_with_verbose(capfd):
    # DeepSpeed's own logger writes through a handler of its own at the level it was given (INFO under
    # the launcher's --log_level info); here both are set up as DeepSpeed does.
    logger, handler = logging.getLogger("DeepSpeed"), logging.StreamHandler(sys.stderr)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        _, out, err = _score_and_log(True, capfd)
        _, _, quiet_err = _score_and_log(False, capfd)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
    assert out == ""
    for noise in ("PTBTokenizer tokenized", "testlen", "a library's print", "a DeepSpeed INFO line"):
        assert noise in err, (noise, err)
    assert "a DeepSpeed error" in quiet_err and "a DeepSpeed INFO line" not in quiet_err  # errors always show
