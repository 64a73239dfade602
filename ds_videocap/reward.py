"""CIDEr-D as a fast in-process scorer, for SCST rewards.

The arithmetic is pycocoevalcap's CiderScorer, step for step (n-grams 1..4, tf-idf with
idf = log(number of reference sets) - log(max(1, df)), clipped cosine per n-gram order, Gaussian
length penalty with sigma 6, mean over orders, mean over references, x10), so that built from the
same reference sets it gives pycocoevalcap's numbers. What differs is where the time goes:
  - document frequencies come from the training corpus once (`from_corpus`), not from each batch,
    and can be cached on disk (`save` / `load`);
  - the tf-idf vectors of a reference set are built once per distinct set (and kept across calls,
    since SCST scores the same videos again), not once per candidate and reference pair;
  - all candidates that share a reference set are scored against all its references in one numpy
    expression over the set's local n-gram vocabulary.
Text goes through normalize_caption (what evaluation sees without running Java), then splits on spaces.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from itertools import chain
from pathlib import Path

import numpy as np

from .captions import normalize_caption
from .errors import UserError

# Cooked reference sets kept per scorer; SCST revisits the same training videos every epoch, and a
# cooked set is a few KiB, so this bound keeps a whole small corpus while capping memory on big ones.
_CACHE_LIMIT = 50_000


def count_ngrams(words: list[str], n: int) -> Counter:
    """Term frequencies of every 1..n-gram of `words` (pycocoevalcap's precook).

    An n-gram is keyed by its words joined with single spaces (normalised words hold no spaces):
    a str caches its hash, a tuple does not, and dict look-ups of n-grams are most of the work here.
    """
    grams = list(words)
    for k in range(2, n + 1):
        # zip of k shifted views yields the k-grams
        grams += map(" ".join, zip(*(words[i:] for i in range(k))))
    return Counter(grams)


def _orders(grams) -> np.ndarray:
    """0-based n-gram order (number of spaces) of each n-gram."""
    return np.fromiter((g.count(" ") for g in grams), dtype=int)


def _words(text: str) -> list[str]:
    # max_words=None: pycocoevalcap's evaluation does not truncate, so neither does the reward.
    return normalize_caption(text, max_words=None).split()


def _length(words: list[str]) -> int:
    # pycocoevalcap's counts2vec counts term frequencies where len(ngram) - 1 == 1, i.e. bigrams, as
    # the "length" of the Gaussian penalty; reproduce that rather than the word count.
    return max(len(words) - 1, 0)


class CiderD:
    """CIDEr-D with fixed document frequencies; `score` returns one x10-scale value per candidate."""

    def __init__(self, document_frequency: dict[str, float], num_reference_sets: int,
                 n: int = 4, sigma: float = 6.0):
        if num_reference_sets < 1:
            raise UserError("CiderD needs at least one reference set to compute document frequencies")
        self.n = n
        self.sigma = sigma
        self.num_reference_sets = num_reference_sets
        self.ref_len = float(np.log(float(num_reference_sets)))
        self.document_frequency = document_frequency
        # idf of every corpus n-gram; an n-gram the corpus never saw gets ref_len (log max(1, 0) = 0)
        self._idf = {g: self.ref_len - math.log(max(1.0, d)) for g, d in document_frequency.items()}
        self._cooked: dict[tuple[str, ...], tuple] = {}

    @classmethod
    def from_corpus(cls, references: list[list[str]], n: int = 4, sigma: float = 6.0) -> "CiderD":
        """Document frequencies over reference sets: an n-gram counts once per set that contains it."""
        # A batch lists each video's references once per sample: extract n-grams once per distinct set.
        multiplicity = Counter(tuple(refs) for refs in references)
        df: dict[str, float] = {}
        for refs, times in multiplicity.items():
            grams = set()
            for ref in refs:
                grams.update(count_ngrams(_words(ref), n))
            for gram in grams:
                df[gram] = df.get(gram, 0.0) + times
        return cls(df, len(references), n=n, sigma=sigma)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"n": self.n, "sigma": self.sigma, "num_reference_sets": self.num_reference_sets,
                   "document_frequency": self.document_frequency}
        path.write_text(json.dumps(payload))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "CiderD":
        path = Path(path)
        try:
            payload = json.loads(path.read_text())
            df = {str(k): float(v) for k, v in payload["document_frequency"].items()}
            return cls(df, int(payload["num_reference_sets"]), n=int(payload["n"]),
                       sigma=float(payload["sigma"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"{path}: not a CIDEr-D document-frequency cache ({exc})") from exc

    def _idfs(self, grams) -> np.ndarray:
        get, default = self._idf.get, self.ref_len
        return np.array([get(g, default) for g in grams], dtype=float)

    def _cook_references(self, refs: tuple[str, ...]) -> tuple:
        """tf-idf matrix (refs, local vocab), per-order norms (refs, n), lengths, vocab -> column."""
        cooked = self._cooked.get(refs)
        if cooked is not None:
            return cooked
        words = [_words(r) for r in refs]
        counts = [count_ngrams(w, self.n) for w in words]
        vocab = {g: j for j, g in enumerate(dict.fromkeys(chain.from_iterable(counts)))}
        rows = np.repeat(np.arange(len(refs)), [len(c) for c in counts])
        cols = [vocab[g] for c in counts for g in c]
        weights = np.zeros((len(refs), len(vocab)))
        weights[rows, cols] = [tf for c in counts for tf in c.values()]
        weights *= self._idfs(vocab)
        order = np.zeros((len(vocab), self.n))
        order[np.arange(len(vocab)), _orders(vocab)] = 1.0
        norms = np.sqrt((weights * weights) @ order)
        lengths = np.array([_length(w) for w in words], dtype=float)
        cooked = (weights, norms, lengths, vocab, order)
        if len(self._cooked) >= _CACHE_LIMIT:
            self._cooked.clear()
        self._cooked[refs] = cooked
        return cooked

    def score(self, candidates: list[str], references: list[list[str]]) -> np.ndarray:
        """CIDEr-D of each candidate against ALL of its references (same length lists)."""
        if len(candidates) != len(references):
            raise UserError(f"CiderD.score: {len(candidates)} candidates but {len(references)} reference lists")
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, refs in enumerate(references):
            if isinstance(refs, str) or len(refs) == 0:
                raise UserError(f"CiderD.score: references[{i}] must be a non-empty list of captions")
            groups.setdefault(tuple(refs), []).append(i)
        scores = np.zeros(len(candidates))
        for refs, idx in groups.items():
            scores[idx] = self._score_group([candidates[i] for i in idx], self._cook_references(refs))
        return scores

    def _score_group(self, candidates: list[str], cooked: tuple) -> np.ndarray:
        ref_weights, ref_norms, ref_lengths, vocab, order = cooked
        words = [_words(t) for t in candidates]
        counts = [count_ngrams(w, self.n) for w in words]
        grams = list(chain.from_iterable(counts))
        owner = np.repeat(np.arange(len(candidates)), [len(c) for c in counts])
        w = np.fromiter(chain.from_iterable(c.values() for c in counts), dtype=float, count=len(grams))
        w *= self._idfs(grams)
        gram_order = _orders(grams)
        hyp_norm2 = np.zeros((len(candidates), self.n))
        np.add.at(hyp_norm2, (owner, gram_order), w * w)
        hyp_norms = np.sqrt(hyp_norm2)
        get = vocab.get
        cols = np.array([get(g, -1) for g in grams], dtype=int)
        known = cols >= 0
        hyp = np.zeros((len(candidates), len(vocab)))
        hyp[owner[known], cols[known]] = w[known]
        hyp_lengths = np.array([_length(x) for x in words], dtype=float)
        # clipped dot product per (candidate, reference, order): sum_g min(h_g, r_g) * r_g
        clipped = np.minimum(hyp[:, None, :], ref_weights[None, :, :]) * ref_weights[None, :, :]
        val = clipped @ order                                   # (cands, refs, n)
        denom = hyp_norms[:, None, :] * ref_norms[None, :, :]
        # pycocoevalcap divides only when both norms are non-zero (otherwise val is 0 anyway)
        val = np.divide(val, denom, out=val, where=denom != 0)
        delta = hyp_lengths[:, None] - ref_lengths[None, :]
        val *= np.exp(-(delta ** 2) / (2 * self.sigma ** 2))[:, :, None]
        return val.mean(axis=2).sum(axis=1) / ref_weights.shape[0] * 10.0
