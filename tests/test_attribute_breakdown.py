"""benchmarks/attribute_breakdown.py (the by-clip figures of README "Results" and benchmarks/README.md) stays
runnable: the named / right counts of two-object clips, the object sizes it reads by drawing the clips
again, and a run of the script on a run folder whose captions are the clips' own references. And the two
probes of the vision side run: benchmarks/probe_two_shapes.py (does a ViT tell both shapes of a two-object
frame) and benchmarks/probe_stills_bound.py (which net learns both from labelled stills), whose labels
are the shapes each still was drawn with."""
import json
import re
import subprocess
import sys

import numpy as np
from e2e import ROOT, child_env

sys.path.insert(0, str(ROOT / "benchmarks"))
from attribute_breakdown import named_counts, smallest_half_sizes  # noqa: E402
from probe_stills_bound import labelled_stills  # noqa: E402

from ds_videocap import synth  # noqa: E402

SCRIPT = ROOT / "benchmarks" / "attribute_breakdown.py"


def test_named_counts_tell_one_shape_guessed_from_both_known():
    group = {"a": {"shapes": ["circle", "square"]}, "b": {"shapes": ["circle", "triangle"]},
             "c": {"shapes": ["square"]}}  # c: one value only, not counted
    captions = {"a": "a red ball and a blue box", "b": "a red ball and a blue box", "c": "a box"}
    assert named_counts(captions, group, "shapes") == {(2, 2): 1, (2, 1): 1}
    assert named_counts({}, group, "shapes") == {(0, 0): 2}  # a clip without a caption names nothing


def test_sizes_come_from_the_same_draw_and_leave_rendering_as_it_was():
    before = synth.render_clip(7, 42)[0]
    sizes = smallest_half_sizes(["synth00007", "synth00011"], seed=42)
    assert set(sizes) == {"synth00007", "synth00011"}
    assert all(1.5 <= s <= 9.0 for s in sizes.values()), sizes  # synth._track's range of half-sizes
    assert np.array_equal(synth.render_clip(7, 42)[0], before)
    assert synth._track.__name__ == "_track"  # restored


def test_the_breakdown_runs_on_a_run_folder(synth40, tmp_path):
    clips = json.loads((synth40 / "annotations" / "cap_test.json").read_text())
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "ce_test.json").write_text(json.dumps(
        [{"image_id": c["image_id"], "caption": c["caption"][0]} for c in clips]))
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), str(synth40)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=child_env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = re.findall(r"^ce +(one object|two objects) +clips +(\d+) +colour (\S+) +shape (\S+) +motion (\S+)",
                      proc.stdout, re.M)
    assert [r[0] for r in rows] == ["one object", "two objects"], proc.stdout
    assert sum(int(r[1]) for r in rows) == len(clips)
    assert all(r[2:] == ("1.000",) * 3 for r in rows if int(r[1])), proc.stdout  # references name it all
    by_size = re.findall(r"^ce +one object +shape by half-size: (.*)$", proc.stdout, re.M)
    assert len(by_size) == 1 and sum(int(n) for n in re.findall(r"\((\d+)\)", by_size[0])) == int(rows[0][1])


def test_the_two_shapes_probe_runs(tiny_folders):
    """benchmarks/probe_two_shapes.py on a tiny folder, few frames: every figure printed, each a share."""
    script = ROOT / "benchmarks" / "probe_two_shapes.py"
    proc = subprocess.run([sys.executable, str(script), str(tiny_folders["opt"]), "--frames", "40"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=child_env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = re.findall(r"^(the folder's ViT|a random ViT \(same architecture\)), (one object|two objects) "
                       r"\(40 frames\): shapes right from the mean token (\S+), from all \d+ tokens (\S+), "
                       r"from the best token per shape (\S+)$", proc.stdout, re.M)
    assert len(lines) == 4, proc.stdout
    assert all(0.0 <= float(v.rstrip(",")) <= 1.0 for line in lines for v in line[2:]), lines


def test_the_stills_bound_labels_are_the_shapes_each_still_was_drawn_with(synth40):
    """Still k is a frame of clip STILL_START + k: its label (read from its first caption) is that clip's shapes."""
    pixels, labels = labelled_stills(synth40, limit=60)
    assert pixels.shape == (60, 3, 32, 32)
    for k in range(60):
        drawn = {o["shape"] for o in synth.render_clip(synth.STILL_START + k, 42)[1]}
        assert {s for s, on in zip(synth.SHAPES, labels[k].tolist()) if on} == drawn, k
    assert labels.sum(1).max() == 2  # two-object stills are there


def test_the_stills_bound_runs_for_both_nets(synth40):
    script = ROOT / "benchmarks" / "probe_stills_bound.py"
    for net in ("vit", "cnn"):
        proc = subprocess.run([sys.executable, str(script), str(synth40), "--net", net, "--steps", "8",
                               "--stills", "100", "--frames", "30"], cwd=ROOT, capture_output=True, text=True,
                              timeout=300, env=child_env())
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        name = "cnn" if net == "cnn" else r"vit \(patch 8, hidden 96, layers 2, stem 0\)"
        found = re.search(rf"^{name}, 100 stills, 8 steps: final loss (\S+); "
                          r"fresh frames, one object: shape (\S+); two objects: both shapes (\S+)$", proc.stdout, re.M)
        assert found, proc.stdout
        assert float(found[1]) > 0 and all(0.0 <= float(v) <= 1.0 for v in found.groups()[1:]), found.groups()
