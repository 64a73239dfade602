"""Evaluation metrics: pycocoevalcap wrappers and the results file."""
import shutil

import pytest

from ds_videocap.errors import UserError
from ds_videocap.metrics import read_results, score_captions, spice_available, write_results

# Java is required (pycocoevalcap tokenizer and METEOR); .ci/run installs it, so no skip here.
needs_java = pytest.mark.usefixtures()

REFERENCES = {
    1: ["a red circle moves to the left", "a red ball slides left", "the red disk goes left"],
    "v2": ["a blue square grows", "the blue box gets bigger", "a blue block expands"],
    3: ["a green triangle falls", "a green wedge moves down", "the green triangle sinks"],
}
RESULTS = {1: "A red circle moves left.", "v2": "a blue box is growing", 3: "a green triangle moves up"}


@needs_java
def test_scores_every_metric_and_cider_matches_pycocoevalcap():
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    if spice_available():
        scores = score_captions(RESULTS, REFERENCES)
    else:
        with pytest.warns(UserWarning, match="SPICE skipped"):
            scores = score_captions(RESULTS, REFERENCES)
    expected = {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"}
    assert expected <= set(scores)
    assert ("SPICE" in scores) == spice_available()
    assert all(0.0 <= scores[k] <= 10.0 for k in expected)

    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFERENCES.items()})
    res = tok.tokenize({k: [{"caption": c}] for k, c in RESULTS.items()})
    assert scores["CIDEr"] == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-12)


def test_missing_java_is_a_user_error(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="default-jre-headless"):
        score_captions(RESULTS, REFERENCES, spice=False)


def test_results_without_references_are_a_user_error():
    with pytest.raises(UserError, match="no references"):
        score_captions({"x": "a caption"}, REFERENCES)


def test_results_round_trip_keeps_ids(tmp_path):
    path = write_results(RESULTS, tmp_path / "out" / "results.json")
    assert read_results(path) == RESULTS
    assert {type(k) for k in read_results(path)} == {int, str}


def test_bad_results_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"caption": "no id"}]')
    with pytest.raises(UserError, match="bad.json"):
        read_results(bad)


def test_one_meteor_jvm_serves_every_evaluation_and_a_dead_one_is_replaced():
    """The JVM spends seconds loading METEOR's tables, so a run keeps one; its scores stay pycocoevalcap's
    own (a fresh Meteor gives the same), and a JVM that died is started again rather than written to."""
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    from ds_videocap import metrics

    first = metrics.start_meteor()
    assert metrics.start_meteor() is first
    scores = [score_captions(RESULTS, REFERENCES, spice=False)["METEOR"] for _ in range(2)]
    assert metrics.start_meteor() is first and scores[0] == scores[1]

    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFERENCES.items()})
    res = tok.tokenize({k: [{"caption": c}] for k, c in RESULTS.items()})
    assert scores[0] == pytest.approx(Meteor().compute_score(gts, res)[0], abs=1e-9)

    first.meteor_p.kill()
    first.meteor_p.wait()
    assert metrics.start_meteor() is not first
    assert score_captions(RESULTS, REFERENCES, spice=False)["METEOR"] == pytest.approx(scores[0], abs=1e-9)
