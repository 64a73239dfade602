"""Time one SCST batch of CIDEr-D rewards: pycocoevalcap vs ds_videocap.reward.CiderD.

One batch = 32 videos x 5 sampled captions, each scored against the video's 20 references
(captions of ~10 words from a fixed vocabulary). Three scorers, timed in the same process:
  (a) pycocoevalcap Cider().compute_score (document frequencies from the batch, as the study did),
  (b) CiderD.from_corpus(batch references) then .score: the same numbers as (a), checked,
  (c) CiderD with document frequencies precomputed once from a 2000-video corpus: .score only,
      first call (cold reference cache) and a repeat call (references cached, as SCST revisits videos).
Usage: python benchmarks/bench_reward.py [--repeats 10] [--json]
"""
from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np

from ds_videocap.reward import CiderD

VOCAB = ("a an the red green blue yellow purple circle square triangle box disk ball shape block "
         "moves slides goes drifts to left right up down slowly quickly is moving sliding and "
         "on screen dark background small large grows shrinks stays still in place there").split()


def make_caption(rng: random.Random) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(rng.randint(7, 13)))


def make_batch(seed: int, videos: int = 32, samples: int = 5, refs: int = 20):
    rng = random.Random(seed)
    candidates, references = [], []
    for _ in range(videos):
        video_refs = [make_caption(rng) for _ in range(refs)]
        for _ in range(samples):
            candidates.append(make_caption(rng))
            references.append(video_refs)
    return candidates, references


def time_ms(fns: dict, repeats: int) -> dict:
    """Median ms of each function, timed round-robin: on a shared CPU, load that comes and goes then
    hits every scorer alike instead of whichever was running, which keeps the ratios stable."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * float(np.median(t)) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from pycocoevalcap.cider.cider import Cider

    candidates, references = make_batch(0)
    corpus_rng = random.Random(1)
    corpus = [[make_caption(corpus_rng) for _ in range(20)] for _ in range(2000)]
    corpus_scorer = CiderD.from_corpus(corpus + [refs for refs in references[::5]])
    gts = {i: refs for i, refs in enumerate(references)}
    res = {i: [c] for i, c in enumerate(candidates)}

    ref_scores = np.asarray(Cider().compute_score(gts, res)[1])
    batch_scores = CiderD.from_corpus(references).score(candidates, references)
    max_diff = float(np.max(np.abs(ref_scores - batch_scores)))

    def corpus_cold():
        corpus_scorer._cooked.clear()  # measure building the reference vectors too
        corpus_scorer.score(candidates, references)

    rows = time_ms({
        "pycocoevalcap Cider.compute_score": lambda: Cider().compute_score(gts, res),
        "CiderD.from_corpus(batch refs) + score": lambda: CiderD.from_corpus(references).score(
            candidates, references),
        "CiderD corpus df, score (cold refs)": corpus_cold,
        "CiderD corpus df, score (refs cached)": lambda: corpus_scorer.score(candidates, references),
    }, args.repeats)
    base = rows["pycocoevalcap Cider.compute_score"]
    if args.json:
        print(json.dumps({"ms_per_batch": rows, "max_abs_diff_vs_pycocoevalcap": max_diff}))
        return
    print(f"batch: 32 videos x 5 samples x 20 refs; median of {args.repeats}; "
          f"max |(b)-(a)| = {max_diff:.1e}")
    print(f"{'scorer':45s} {'ms/batch':>9s} {'speed-up':>9s}")
    for name, ms in rows.items():
        print(f"{name:45s} {ms:9.2f} {base / ms:8.1f}x")


if __name__ == "__main__":
    main()
