"""Attribute accuracy of a run's test captions, split into one-object and two-object clips, and how the
two-object clips' motions are named (how many distinct motions the caption names, how many are right).

    python benchmarks/attribute_breakdown.py RUN_DIR [SYNTH_DIR]

RUN_DIR holds results/{ce,scst}_test.json (the train command writes them); SYNTH_DIR is the set the run
used (default: the synth_dir in RUN_DIR/config.yaml). Accuracy as the train command scores it
(synth_captions.attribute_accuracy: a clip is right when the caption names exactly its set of values).
"""
from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ds_videocap.synth_captions import attribute_accuracy, read_attributes  # noqa: E402


def main() -> None:
    run = Path(sys.argv[1])
    config = run / "config.yaml"
    synth = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(yaml.safe_load(config.read_text())["synth_dir"])
    clips = {r["image_id"]: r["attributes"] for r in json.loads((synth / "annotations" / "cap_test.json").read_text())}
    groups = {"one object": {k: a for k, a in clips.items() if len(a["colors"]) == 1},
              "two objects": {k: a for k, a in clips.items() if len(a["colors"]) == 2}}
    for phase in ("ce", "scst"):
        path = run / "results" / f"{phase}_test.json"
        if not path.is_file():
            continue
        captions = {c["image_id"]: c["caption"] for c in json.loads(path.read_text())}
        for name, group in groups.items():
            acc = attribute_accuracy(captions, group)
            print(f"{phase:5s} {name:12s} clips {len(group):3d}  colour {acc['color_acc']:.3f}"
                  f"  shape {acc['shape_acc']:.3f}  motion {acc['motion_acc']:.3f}  all three {acc['all_acc']:.3f}")
        named = collections.Counter()
        for key, attrs in groups["two objects"].items():
            truth = set(attrs["motions"])
            if len(truth) == 2:
                said = read_attributes(captions.get(key, ""))["motions"]
                named[(len(said), len(said & truth))] += 1
        total = sum(named.values())
        print(f"{phase:5s} two objects with two different motions ({total}): "
              + ", ".join(f"{n} named / {r} right: {c}" for (n, r), c in sorted(named.items())))


if __name__ == "__main__":
    main()
