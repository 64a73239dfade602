"""Attribute accuracy of a run's test captions, split into one-object and two-object clips; how the
two-object clips' motions and shapes are named (how many distinct values the caption names, how many
are right); and shape accuracy by object size (the smaller object's median half-size over the clip's
frames, in pixels, read by drawing the test clips again from the set's seed).

    python benchmarks/attribute_breakdown.py RUN_DIR [SYNTH_DIR]

RUN_DIR holds results/{ce,scst}_test.json (the train command writes them); SYNTH_DIR is the set the run
used (default: the synth_dir in RUN_DIR/config.yaml). Accuracy as the train command scores it
(synth_captions.attribute_accuracy: a clip is right when the caption names exactly its set of values).
The two objects of a clip always differ in shape, so "2 named / 1 right" is a caption that has one
shape and guesses the other.
"""
from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import ds_videocap.synth as synth  # noqa: E402
from ds_videocap.synth_captions import attribute_accuracy, read_attributes  # noqa: E402


def smallest_half_sizes(clip_ids, seed: int) -> dict[str, float]:
    """Each clip's smaller object's median half-size (px): the clips drawn again from the set's seed, with
    synth._track recorded (render_clip returns no sizes; the draw is the same, so are the frames)."""
    sizes, recorded, track = {}, [], synth._track

    def recording(rng, motion, scale):
        centre, half = track(rng, motion, scale)
        recorded.append(float(np.median(half)))
        return centre, half

    synth._track = recording
    try:
        for clip_id in clip_ids:
            recorded.clear()
            synth.render_clip(int(clip_id.removeprefix("synth")), seed)
            sizes[clip_id] = min(recorded)
    finally:
        synth._track = track
    return sizes


def named_counts(captions: dict, group: dict, attribute: str) -> collections.Counter:
    """(values named, values right) -> clips, over the group's clips with two different values."""
    named = collections.Counter()
    for key, attrs in group.items():
        truth = set(attrs[attribute])
        if len(truth) == 2:
            said = read_attributes(captions.get(key, ""))[attribute]
            named[(len(said), len(said & truth))] += 1
    return named


def main() -> None:
    run = Path(sys.argv[1])
    config = run / "config.yaml"
    synth = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(yaml.safe_load(config.read_text())["synth_dir"])
    clips = {r["image_id"]: r["attributes"] for r in json.loads((synth / "annotations" / "cap_test.json").read_text())}
    groups = {"one object": {k: a for k, a in clips.items() if len(a["colors"]) == 1},
              "two objects": {k: a for k, a in clips.items() if len(a["colors"]) == 2}}
    sizes = smallest_half_sizes(clips, json.loads((synth / "READY").read_text())["seed"])
    for phase in ("ce", "scst"):
        path = run / "results" / f"{phase}_test.json"
        if not path.is_file():
            continue
        captions = {c["image_id"]: c["caption"] for c in json.loads(path.read_text())}
        for name, group in groups.items():
            acc = attribute_accuracy(captions, group)
            print(f"{phase:5s} {name:12s} clips {len(group):3d}  colour {acc['color_acc']:.3f}"
                  f"  shape {acc['shape_acc']:.3f}  motion {acc['motion_acc']:.3f}  all three {acc['all_acc']:.3f}")
        for attribute in ("motions", "shapes"):
            named = named_counts(captions, groups["two objects"], attribute)
            print(f"{phase:5s} two objects with two different {attribute} ({sum(named.values())}): "
                  + ", ".join(f"{n} named / {r} right: {c}" for (n, r), c in sorted(named.items())))
        for name, group in groups.items():
            by_size = collections.defaultdict(dict)  # half-size bin -> the group's clips of that size
            for key, attrs in group.items():
                by_size[min(int(sizes[key]), 6)][key] = attrs
            print(f"{phase:5s} {name:12s} shape by half-size: " + ", ".join(
                f"{px}{'+' if px == 6 else ''} px {attribute_accuracy(captions, clips_of)['shape_acc']:.2f} "
                f"({len(clips_of)})" for px, clips_of in sorted(by_size.items())))


if __name__ == "__main__":
    main()
