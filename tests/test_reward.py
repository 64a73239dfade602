"""CIDEr-D reward: parity with pycocoevalcap, the document-frequency cache, and sanity of ranking."""
import random

import numpy as np
import pytest

from ds_videocap.errors import UserError
from ds_videocap.reward import CiderD

pytest.importorskip("pycocoevalcap")
from pycocoevalcap.cider.cider import Cider  # noqa: E402

# A small vocabulary so that captions share and repeat words, as generated captions do.
VOCAB = "a the red blue circle square moves left right up down slowly is and shape".split()


def random_caption(rng: random.Random, lo: int = 1, hi: int = 12) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(rng.randint(lo, hi)))


def random_batch(seed: int, videos: int = 8, samples: int = 3, refs: int = 5):
    rng = random.Random(seed)
    ref_sets = [[random_caption(rng) for _ in range(rng.randint(1, refs))] for _ in range(videos)]
    candidates, references = [], []
    for refs_of_video in ref_sets:
        for _ in range(samples):
            candidates.append(random_caption(rng, 0, 12))  # 0 words: the empty-candidate edge case
            references.append(refs_of_video)
    candidates[0] = ""
    candidates[1] = references[1][0]  # exact match of one reference
    return candidates, references


def pycoco_scores(candidates, references) -> np.ndarray:
    gts = {i: list(r) for i, r in enumerate(references)}
    res = {i: [c] for i, c in enumerate(candidates)}
    return np.asarray(Cider().compute_score(gts, res)[1])


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_matches_pycocoevalcap_when_built_from_the_batch(seed):
    candidates, references = random_batch(seed)
    ours = CiderD.from_corpus(references).score(candidates, references)
    assert ours.shape == (len(candidates),)
    assert np.max(np.abs(ours - pycoco_scores(candidates, references))) < 1e-9


def test_matches_pycocoevalcap_with_one_candidate_per_reference_set():
    candidates, references = random_batch(7, videos=12, samples=1, refs=8)
    ours = CiderD.from_corpus(references).score(candidates, references)
    assert np.max(np.abs(ours - pycoco_scores(candidates, references))) < 1e-9


def test_normalises_text_like_evaluation():
    refs = [["A red circle moves left.", "the red circle, moving left!"], ["a blue square"]]
    scorer = CiderD.from_corpus(refs)
    messy = scorer.score(["A Red circle -- moves LEFT."], refs[:1])
    clean = scorer.score(["a red circle moves left"], refs[:1])
    assert messy[0] == pytest.approx(clean[0], abs=1e-12)


def test_cache_round_trip(tmp_path):
    candidates, references = random_batch(3)
    scorer = CiderD.from_corpus(references)
    loaded = CiderD.load(scorer.save(tmp_path / "df.json"))
    assert loaded.ref_len == pytest.approx(scorer.ref_len)
    assert loaded.document_frequency == scorer.document_frequency
    np.testing.assert_allclose(loaded.score(candidates, references),
                               scorer.score(candidates, references), atol=1e-12)


def test_load_rejects_a_file_that_is_not_a_cache(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"n": 4}')
    with pytest.raises(UserError, match="bad.json"):
        CiderD.load(bad)


def test_reference_like_candidate_beats_random_one():
    corpus = [[f"a {c} {s} moves {m}" for m in ("left", "to the left", "leftward")]
              for c in ("red", "blue", "green") for s in ("circle", "square")]
    scorer = CiderD.from_corpus(corpus)
    refs = corpus[0]
    good, bad = scorer.score(["a red circle moves left", "square blue up the the"], [refs, refs])
    assert good > bad > -1e-12


def test_corpus_scores_are_cached_and_stable_across_calls():
    candidates, references = random_batch(5)
    scorer = CiderD.from_corpus(references)
    first = scorer.score(candidates, references)
    np.testing.assert_array_equal(first, scorer.score(candidates, references))


def test_bad_input_is_a_user_error():
    scorer = CiderD.from_corpus([["a b"]])
    with pytest.raises(UserError):
        scorer.score(["a"], [])
    with pytest.raises(UserError):
        scorer.score(["a"], [[]])
