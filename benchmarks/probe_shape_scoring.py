"""Does a trained captioner know a clip's shape that its captions do not name? (issue 15 diagnostic)

    python benchmarks/probe_shape_scoring.py RUN_DIR [--checkpoint TAG] [--split test]

RUN_DIR alone scores the run's best checkpoint (as `ds-videocap eval --checkpoint RUN_DIR` does).

For every single-object clip of the split, each reference caption is re-written with every shape noun
of the synthetic set (circle, ball, disk, ..., box, ..., wedge) and scored by the model, teacher-forced
(the sum of its tokens' log-probs). The model's shape is then read two ways:
  word: the class of the single most likely noun (what greedy / beam decoding tends to pick);
  class: the class with the most probability summed over its nouns (logsumexp over the nouns,
         then over the references).
If `class` is far above the captions' shape accuracy, the model knows the shape and its probability is
split over synonyms; if both are low, the vision side does not hold it.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ds_videocap.annotations import read_annotations  # noqa: E402
from ds_videocap.evaluate import load_captioner  # noqa: E402
from ds_videocap.synth_captions import SHAPE_WORDS  # noqa: E402
from ds_videocap.video import frames_to_tensor, read_frames  # noqa: E402

NOUNS = [(shape, word) for shape, words in SHAPE_WORDS.items() for word in words]
# longest first, so "round shape" is found before a bare "shape" could be
_NOUN_RE = re.compile("|".join(re.escape(w) for _, w in sorted(NOUNS, key=lambda n: -len(n[1]))))


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run", type=Path)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--split", default="test")
    args = p.parse_args()
    ckpt = args.run / "checkpoints" / args.checkpoint if args.checkpoint else args.run
    model, cfg = load_captioner(ckpt)
    model.eval()
    synth = Path(cfg.synth_dir)
    clips = [c for c in read_annotations(synth / "annotations" / f"cap_{args.split}.json", synth / "videos")
             if len(c.attributes["shapes"]) == 1]
    shapes = list(SHAPE_WORDS)
    word_right = class_right = 0
    confusion = {s: {t: 0 for t in shapes} for s in shapes}
    for clip in clips:
        frames = read_frames(clip.video, "uniform", cfg.data.frames, cfg.data.image_size)
        pixels = frames_to_tensor(frames).unsqueeze(0)
        variants = [_NOUN_RE.sub(word, ref, count=1) for ref in clip.captions for _, word in NOUNS]
        ids = model.encode_text(variants)["input_ids"]
        logp, _ = model.sequence_logprobs(pixels.expand(len(variants), *pixels.shape[1:]), ids)
        score = logp.sum(1).view(len(clip.captions), len(NOUNS))  # (refs, nouns)
        per_noun = score.logsumexp(0)
        word_pick = NOUNS[int(per_noun.argmax())][0]
        per_class = torch.stack([per_noun[[i for i, (s, _) in enumerate(NOUNS) if s == c]].logsumexp(0)
                                 for c in shapes])
        class_pick = shapes[int(per_class.argmax())]
        truth = clip.attributes["shapes"][0]
        word_right += word_pick == truth
        class_right += class_pick == truth
        confusion[truth][class_pick] += 1
    n = len(clips)
    print(json.dumps({"checkpoint": str(ckpt), "split": args.split, "single_object_clips": n,
                      "shape_by_word": round(word_right / n, 3), "shape_by_class": round(class_right / n, 3),
                      "confusion_by_class": confusion}))


if __name__ == "__main__":
    main()
