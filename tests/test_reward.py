"""CIDEr-D reward: parity with pycocoevalcap, the document-frequency cache, and sanity of ranking."""
import random
from collections import defaultdict

import numpy as np
import pytest

from ds_videocap import reward
from ds_videocap.captions import normalize_caption
from ds_videocap.errors import UserError
from ds_videocap.reward import CiderD

pytest.importorskip("pycocoevalcap")
from pycocoevalcap.cider.cider import Cider  # noqa: E402
from pycocoevalcap.cider.cider_scorer import CiderScorer  # noqa: E402

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


def pycoco_scores_with_df(candidates, references, scorer: CiderD) -> np.ndarray:
    """pycocoevalcap's own compute_cider, given the scorer's document frequencies and set count."""
    class Sets(list):  # compute_cider takes ref_len = log(len(crefs)): make that the corpus's count
        def __len__(self):
            return scorer.num_reference_sets

    cs = CiderScorer(n=4, sigma=6.0)
    for cand, refs in zip(candidates, references):
        cs.cook_append(normalize_caption(cand, None), [normalize_caption(r, None) for r in refs])
    cs.crefs = Sets(cs.crefs)
    cs.document_frequency = defaultdict(float, {tuple(g.split(" ")): d
                                                for g, d in scorer.document_frequency.items()})
    return np.asarray(cs.compute_cider())


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


@pytest.mark.parametrize("byte_keys", [False, True])
def test_matches_pycocoevalcap_with_corpus_df_across_calls(monkeypatch, byte_keys):
    if byte_keys:  # the path for vocabularies too big for int64 n-gram keys
        monkeypatch.setattr(reward, "_INT_KEYS", 0)
    corpus = [refs for seed in range(10, 14) for refs in random_batch(seed, samples=1)[1]]
    scorer = CiderD.from_corpus(corpus)
    # words the corpus never saw, first seen in a later call, then reference sets scored again
    batches = [random_batch(20), random_batch(21), random_batch(20), random_batch(22, videos=3)]
    batches[1] = ([c + " green" for c in batches[1][0]], [[r + " triangle green" for r in refs]
                                                           for refs in batches[1][1]])
    assert "green" not in scorer.document_frequency and "triangle" not in scorer.document_frequency
    for candidates, references in batches + batches[1:2]:
        ours = scorer.score(candidates, references)
        assert np.max(np.abs(ours - pycoco_scores_with_df(candidates, references, scorer))) < 1e-9


def test_batch_tokenisation_matches_normalize_caption():
    texts = ["A Red, circle -- moves LEFT.", "", "   ", "ΟΔΟΣ ΟΔΟΣ.", "tab\there\nnew line",
             "non\u00a0breaking\u2028sep", "it's (ok)!", "a\x00b", "x \x00 y", "ΣΑΣ"]
    for batch in (texts[:7], texts, texts[8:], texts[:1]):  # with "\x00" in a text: text by text
        vocab: dict[str, int] = {}
        ids, lengths = reward._encode(batch, vocab)
        words = np.array([None, *vocab], dtype=object)[ids]
        assert [w.tolist() for w in np.split(words, np.cumsum(lengths)[:-1])] == [
            normalize_caption(t, None).split() for t in batch]
    assert len(reward._encode([], {})[1]) == 0


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


def test_small_reference_cache_still_scores_every_set(monkeypatch):
    monkeypatch.setattr(reward, "_CACHE_LIMIT", 3)
    candidates, references = random_batch(6)
    scorer = CiderD.from_corpus(references)
    first = scorer.score(candidates, references)
    half = len(candidates) // 2  # some sets cached, some cold, and the cache overflows
    np.testing.assert_allclose(scorer.score(candidates[half:], references[half:]), first[half:], atol=1e-12)
    np.testing.assert_allclose(scorer.score(candidates, references), first, atol=1e-12)
