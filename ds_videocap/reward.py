"""CIDEr-D as a fast in-process scorer, for SCST rewards.

The arithmetic is pycocoevalcap's CiderScorer, step for step (n-grams 1..4, tf-idf with
idf = log(number of reference sets) - log(max(1, df)), clipped cosine per n-gram order, Gaussian
length penalty with sigma 6, mean over orders, mean over references, x10), so that built from the
same reference sets it gives pycocoevalcap's numbers. What differs is where the time goes:
  - document frequencies come from the training corpus once (`from_corpus`), not from each batch,
    and can be cached on disk (`save` / `load`);
  - words become integer ids and an n-gram becomes one integer key (its word ids as digits), so
    n-gram extraction, term counting, idf look-up (a sorted key table, np.searchsorted) and matching
    run as whole-batch numpy operations; Python only splits and interns the words;
  - the tf-idf vectors of a reference set are built once per distinct set in the batch (and kept
    across calls, since SCST scores the same videos again), not once per candidate and reference;
  - the clipped dot products of every (candidate, reference) pair of the batch come from one sparse
    join of candidate and reference n-gram entries on (reference set, n-gram).
Text goes through normalize_caption (what evaluation sees without running Java), then splits on spaces.
"""
from __future__ import annotations

import json
from collections import Counter
from itertools import chain
from pathlib import Path

import numpy as np

from .captions import _PUNCTUATION, normalize_caption
from .errors import UserError

# Cooked reference sets kept per scorer; SCST revisits the same training videos every epoch, and a
# cooked set is a few KiB, so this bound keeps a whole small corpus while capping memory on big ones.
_CACHE_LIMIT = 50_000
# Largest n-gram key space packed into int64 keys; beyond it keys are bytes (slower, same results).
_INT_KEYS = 2 ** 63 - 1


# Joins a batch's texts: a token no caption holds, that normalisation keeps (not space, punctuation
# or cased) and that ends a word on both sides, so casing and splitting work as on each text alone.
_SEP = "\x00"


def _encode(texts, vocab: dict[str, int], normalise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Word ids (1-based; new words are added to `vocab`) of all texts, flat, and each text's length.

    The words are normalize_caption's (max_words=None: pycocoevalcap's evaluation does not truncate):
    lower-case, punctuation to spaces, split on whitespace (re's \\s is str.isspace, as str.split's).
    One regex pass over the joined batch instead of one per text: per-text calls cost more than all
    the numpy work of a cold batch. tests/test_reward.py checks this against normalize_caption.
    normalise=False splits on single spaces only (n-gram keys of a document-frequency cache).
    """
    texts = list(map(str, texts))
    joined = f" {_SEP} ".join(texts)
    lengths = None
    if joined.count(_SEP) == len(texts) - 1:
        flat = _PUNCTUATION.sub(" ", joined.lower()).split() if normalise else joined.split(" ")
    else:  # a text holds the separator (or there are no texts): text by text
        words = [normalize_caption(t, max_words=None).split() if normalise else t.split(" ")
                 for t in texts]
        flat = list(chain.from_iterable(words))
        lengths = np.array([len(w) for w in words], dtype=np.int64)
    # intern the batch's few distinct words in Python, then map every word with C-level calls
    local = {w: i for i, w in enumerate(dict.fromkeys(flat))}
    ids = np.array([0 if w == _SEP and lengths is None else vocab.setdefault(w, len(vocab) + 1)
                    for w in local], dtype=np.int64)
    flat_ids = ids[np.fromiter(map(local.__getitem__, flat), dtype=np.int64, count=len(flat))]
    if lengths is None:  # text boundaries are the separators (id 0)
        is_sep = flat_ids == 0
        lengths = np.diff(np.append(np.flatnonzero(is_sep), len(flat)), prepend=-1) - 1
        flat_ids = flat_ids[~is_sep]
    return flat_ids, lengths


def _ngram_rows(ids: np.ndarray, lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Every 1..n-gram occurrence of every text: (text index, word ids padded with 0 to n columns)."""
    doc = np.repeat(np.arange(len(lengths)), lengths)
    # words left in the text from each position (the last word of a text has 1)
    left = np.cumsum(lengths)[doc] - np.arange(len(ids))
    padded = np.concatenate([ids, np.zeros(n, dtype=np.int64)])
    window = np.stack([padded[j:j + len(ids)] for j in range(n)], axis=1)
    docs, rows = [], []
    for k in range(1, n + 1):
        start = np.flatnonzero(left >= k)
        rows.append(window[start] * (np.arange(n) < k))
        docs.append(doc[start])
    return np.concatenate(docs), np.concatenate(rows).reshape(-1, n)


def _pack(rows: np.ndarray, radix: int) -> np.ndarray:
    """One sortable, comparable key per row of word ids < radix: the ids as base-`radix` digits in an
    int64 when that fits (vocabularies up to ~55k words for n=4), else the rows' big-endian bytes."""
    if radix ** rows.shape[1] <= _INT_KEYS:
        keys = np.zeros(len(rows), dtype=np.int64)
        for j in range(rows.shape[1]):
            keys = keys * radix + rows[:, j]
        return keys
    return np.ascontiguousarray(rows, dtype=">u4").view(f"S{4 * rows.shape[1]}").ravel()


def _distinct(rows: np.ndarray, radix: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows in key order: (one occurrence of each, index of each row's distinct row)."""
    # not np.unique(return_index=True): it forces a stable sort, ~10x slower than the default one
    _, gram = np.unique(_pack(rows, radix), return_inverse=True)
    gram = gram.ravel()
    first = np.empty(gram.max(initial=-1) + 1, dtype=np.int64)
    first[gram] = np.arange(len(gram))
    return first, gram


def _orders(rows: np.ndarray) -> np.ndarray:
    """0-based n-gram order of each row (non-padding ids minus one)."""
    return np.count_nonzero(rows, axis=1) - 1


class CiderD:
    """CIDEr-D with fixed document frequencies; `score` returns one x10-scale value per candidate."""

    def __init__(self, document_frequency: dict[str, float], num_reference_sets: int,
                 n: int = 4, sigma: float = 6.0):
        # a key of more than n words (a foreign cache) can never match a 1..n-gram: leave it out
        keys = [g for g in document_frequency if g.count(" ") < n]
        vocab: dict[str, int] = {}
        ids, lengths = _encode(keys, vocab, normalise=False)
        doc = np.repeat(np.arange(len(keys)), lengths)
        rows = np.zeros((len(keys), n), dtype=np.int64)
        rows[doc, np.arange(len(ids)) - (np.cumsum(lengths) - lengths)[doc]] = ids
        df = np.fromiter(map(document_frequency.__getitem__, keys), dtype=float, count=len(keys))
        self._setup(vocab, rows, df, num_reference_sets, n, sigma)
        self._document_frequency = document_frequency

    def _setup(self, vocab, rows, df, num_reference_sets, n, sigma) -> None:
        if num_reference_sets < 1:
            raise UserError("CiderD needs at least one reference set to compute document frequencies")
        self.n = n
        self.sigma = sigma
        self.num_reference_sets = num_reference_sets
        self.ref_len = float(np.log(float(num_reference_sets)))
        # Word ids: corpus words first (the table's keys use them, radix fixed at len + 1); words first
        # seen while scoring are appended, so ids of cached reference sets stay valid across calls.
        self._vocab = vocab
        self._table_radix = len(vocab) + 1
        keys = _pack(rows, self._table_radix)
        order = np.argsort(keys)
        self._table_keys, self._table_rows, self._table_df = keys[order], rows[order], df[order]
        self._table_idf = self.ref_len - np.log(np.maximum(1.0, self._table_df))
        self._document_frequency = None
        self._cooked: dict[tuple[str, ...], tuple] = {}

    @property
    def document_frequency(self) -> dict[str, float]:
        """n-gram ('w1 w2 ...') -> number of reference sets containing it (built on first use)."""
        if self._document_frequency is None:
            words = list(self._vocab)
            names = (" ".join(words[i - 1] for i in row if i) for row in self._table_rows.tolist())
            self._document_frequency = dict(zip(names, self._table_df.tolist()))
        return self._document_frequency

    @classmethod
    def from_corpus(cls, references: list[list[str]], n: int = 4, sigma: float = 6.0) -> CiderD:
        """Document frequencies over reference sets: an n-gram counts once per set that contains it."""
        # A batch lists each video's references once per sample: extract n-grams once per distinct set.
        if not references:
            raise UserError("CiderD needs at least one reference set to compute document frequencies")
        multiplicity = Counter(tuple(refs) for refs in references)
        sets = list(multiplicity)
        vocab: dict[str, int] = {}
        ids, lengths = _encode(chain.from_iterable(sets), vocab)
        doc, rows = _ngram_rows(ids, lengths, n)
        first, gram = _distinct(rows, len(vocab) + 1)
        set_of_doc = np.repeat(np.arange(len(sets)), [len(s) for s in sets])
        # (set, n-gram) pairs, each once; return_counts keeps np.unique on its sort path (its hash
        # path, numpy 2.4, is ~100x slower on int64)
        pairs, _ = np.unique(set_of_doc[doc] * len(first) + gram, return_counts=True)
        times = np.fromiter(multiplicity.values(), dtype=float, count=len(sets))
        df = np.bincount(pairs % len(first), weights=times[pairs // len(first)], minlength=len(first))
        scorer = cls.__new__(cls)
        scorer._setup(vocab, rows[first], df, len(references), n, sigma)
        return scorer

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"n": self.n, "sigma": self.sigma, "num_reference_sets": self.num_reference_sets,
                   "document_frequency": self.document_frequency}
        path.write_text(json.dumps(payload))
        return path

    @classmethod
    def load(cls, path: str | Path) -> CiderD:
        path = Path(path)
        try:
            payload = json.loads(path.read_text())
            df = {str(k): float(v) for k, v in payload["document_frequency"].items()}
            return cls(df, int(payload["num_reference_sets"]), n=int(payload["n"]),
                       sigma=float(payload["sigma"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"{path}: not a CIDEr-D document-frequency cache ({exc})") from exc

    def _idf(self, rows: np.ndarray) -> np.ndarray:
        """idf of distinct n-gram rows in key order: the corpus table's, else ref_len (df 0)."""
        idf = np.full(len(rows), self.ref_len)
        # an n-gram with a word the corpus never had is not in the table; the others keep their order
        # under the table's radix (base-r digits sort lexicographically for any r), so the queries
        # are sorted, which makes searchsorted several times faster on a big table
        known = np.flatnonzero(rows.max(axis=1, initial=0) < self._table_radix)
        if len(self._table_keys) and len(known):
            keys = _pack(rows[known], self._table_radix)
            at = np.minimum(np.searchsorted(self._table_keys, keys), len(self._table_keys) - 1)
            hit = self._table_keys[at] == keys
            idf[known[hit]] = self._table_idf[at[hit]]
        return idf

    def _vectors(self, texts: list[str], sizes: list[int]) -> list[tuple]:
        """tf-idf entries of texts, in one pass, split into blocks of `sizes` texts. A block is
        (text index in the block, n-gram rows, orders, weights) per entry, per-order norms, lengths."""
        ids, lengths = _encode(texts, self._vocab)
        doc, rows = _ngram_rows(ids, lengths, self.n)
        first, gram = _distinct(rows, len(self._vocab) + 1)
        rows = rows[first]
        idf, order = self._idf(rows), _orders(rows)
        pairs, tf = np.unique(doc * len(first) + gram, return_counts=True)  # sorted by text
        doc, gram = pairs // len(first), pairs % len(first)
        weight = tf * idf[gram]
        norms = np.bincount(doc * self.n + order[gram], weights=weight * weight,
                            minlength=len(texts) * self.n)
        norms = np.sqrt(norms).reshape(len(texts), self.n)
        # pycocoevalcap's counts2vec counts term frequencies where len(ngram) - 1 == 1, i.e. bigrams,
        # as the "length" of the Gaussian penalty; reproduce that rather than the word count.
        lengths = np.maximum(lengths - 1, 0)
        bounds = np.cumsum([0, *sizes])
        cuts = np.searchsorted(doc, bounds)
        return [(doc[a:b] - lo, rows[gram[a:b]], order[gram[a:b]], weight[a:b], norms[lo:hi],
                 lengths[lo:hi]) for a, b, lo, hi in zip(cuts, cuts[1:], bounds, bounds[1:])]

    def score(self, candidates: list[str], references: list[list[str]]) -> np.ndarray:
        """CIDEr-D of each candidate against ALL of its references (same length lists)."""
        if len(candidates) != len(references):
            raise UserError(f"CiderD.score: {len(candidates)} candidates but {len(references)} reference lists")
        set_index: dict[tuple[str, ...], int] = {}
        cand_set = np.empty(len(candidates), dtype=np.int64)
        for i, refs in enumerate(references):
            if isinstance(refs, str) or len(refs) == 0:
                raise UserError(f"CiderD.score: references[{i}] must be a non-empty list of captions")
            cand_set[i] = set_index.setdefault(tuple(refs), len(set_index))
        if not candidates:
            return np.zeros(0)
        sets = list(set_index)
        # Reference sets not seen before and the candidates go through one vectorising pass; the
        # sets' blocks are kept, since SCST scores the same videos again.
        cold = [refs for refs in sets if refs not in self._cooked]
        blocks = self._vectors([*chain.from_iterable(cold), *candidates],
                               [*map(len, cold), len(candidates)])
        c_doc, c_rows, c_order, c_weight, hyp_norms, hyp_lengths = blocks.pop()
        fresh = dict(zip(cold, blocks))
        cooked = [fresh.get(refs) or self._cooked[refs] for refs in sets]
        if len(self._cooked) + len(fresh) > _CACHE_LIMIT:
            self._cooked.clear()
        self._cooked.update(fresh)
        num_refs = np.array([len(s) for s in sets])
        offset = np.cumsum(num_refs) - num_refs  # first reference (row of ref_norms) of each set
        r_local, r_rows, _, r_weight, ref_norms, ref_lengths = (
            np.concatenate([c[j] for c in cooked]) for j in range(6))
        r_set = np.repeat(np.arange(len(sets)), [len(c[0]) for c in cooked])

        # Join candidate and reference entries on (reference set, n-gram): sort the reference side,
        # then each candidate entry matches the run of equal join keys (one entry per reference).
        keys = _pack(np.concatenate([r_rows, c_rows]), len(self._vocab) + 1)
        _, gram = np.unique(keys, return_inverse=True)
        gram = gram.ravel()
        join = np.concatenate([r_set, cand_set[c_doc]]) * (len(keys) + 1) + gram
        r_join, c_join = join[:len(r_rows)], join[len(r_rows):]
        by_key = np.argsort(r_join)
        r_sorted = r_join[by_key]
        lo = np.searchsorted(r_sorted, c_join, "left")
        count = np.searchsorted(r_sorted, c_join, "right") - lo
        ci = np.repeat(np.arange(len(c_join)), count)
        ri = by_key[np.repeat(lo - (np.cumsum(count) - count), count) + np.arange(count.sum())]
        # clipped dot product per (candidate, reference, order): sum_g min(h_g, r_g) * r_g
        width = int(num_refs.max())
        cell = (c_doc[ci] * width + r_local[ri]) * self.n + c_order[ci]
        contrib = np.minimum(c_weight[ci], r_weight[ri]) * r_weight[ri]
        # astype: with no matching n-gram at all (cell empty) bincount returns int64 despite float weights
        val = np.bincount(cell, weights=contrib, minlength=len(candidates) * width * self.n).astype(np.float64)
        val = val.reshape(len(candidates), width, self.n)

        # every candidate against every reference of its set (padding columns past a set's end)
        col = np.arange(width)
        valid = col[None, :] < num_refs[cand_set][:, None]
        ref = np.where(valid, offset[cand_set][:, None] + col[None, :], 0)
        denom = hyp_norms[:, None, :] * ref_norms[ref]
        # pycocoevalcap divides only when both norms are non-zero (otherwise val is 0 anyway)
        val = np.divide(val, denom, out=val, where=denom != 0)
        delta = (hyp_lengths[:, None] - ref_lengths[ref]).astype(float)
        val *= (np.exp(-(delta ** 2) / (2 * self.sigma ** 2)) * valid)[:, :, None]
        return val.mean(axis=2).sum(axis=1) / num_refs[cand_set] * 10.0
