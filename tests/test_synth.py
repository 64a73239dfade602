"""The synthetic set: layout, determinism, idempotence, captions, and attribute accuracy."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

from ds_videocap.errors import UserError
from ds_videocap.synth import attribute_accuracy, make_synthetic_set, split_sizes, synth_command


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    make_synthetic_set(out, videos=40, seed=3)
    return out


def read(path):
    return json.loads(path.read_text())


def test_layout_and_split_counts(synth_dir):
    ann = synth_dir / "annotations"
    sizes = split_sizes(40)
    assert sizes == {"train": 34, "val": 3, "test": 3}
    train = read(ann / "cap_train.json")
    assert len({r["video"] for r in train}) == sizes["train"]
    for split in ("val", "test"):
        records = read(ann / f"cap_{split}.json")
        assert len(records) == sizes[split]
        gt = read(ann / f"{split}_gt.json")
        assert {i["id"] for i in gt["images"]} == {r["image_id"] for r in records}
        assert len(gt["annotations"]) == sum(len(r["caption"]) for r in records)
    assert len(list((synth_dir / "videos").glob("*.mp4"))) == 40
    assert read(synth_dir / "READY") == {"videos": 40, "seed": 3, "stills": 5 * 34}


def test_every_clip_has_five_refs_and_attributes(synth_dir):
    ann = synth_dir / "annotations"
    per_video = {}
    for r in read(ann / "cap_train.json"):
        per_video.setdefault(r["video"], []).append(r["caption"])
        assert set(r["attributes"]) == {"colors", "shapes", "motions"}
    for split in ("val", "test"):
        for r in read(ann / f"cap_{split}.json"):
            per_video[r["video"]] = r["caption"]
            assert len(r["attributes"]["colors"]) == len(r["attributes"]["motions"]) >= 1
    assert all(len(set(caps)) >= 5 for caps in per_video.values())


def test_references_name_their_own_attributes(synth_dir):
    """Each reference caption, read back by the parser, scores perfectly: templates and parser agree."""
    records = read(synth_dir / "annotations" / "cap_train.json")
    captions = {i: r["caption"] for i, r in enumerate(records)}
    attributes = {i: r["attributes"] for i, r in enumerate(records)}
    assert attribute_accuracy(captions, attributes)["all_acc"] == 1.0


def test_same_seed_same_set_and_rerun_is_a_no_op(synth_dir, tmp_path):
    import av

    other = make_synthetic_set(tmp_path / "again", videos=40, seed=3)
    for name in ("cap_train.json", "cap_val.json", "cap_test.json", "val_gt.json", "test_gt.json", "stills_train.json"):
        assert (other / "annotations" / name).read_bytes() == (synth_dir / "annotations" / name).read_bytes()

    def first_frames(root):
        with av.open(str(root / "videos" / "synth00007.mp4")) as c:
            return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]

    a, b = first_frames(synth_dir), first_frames(other)
    assert len(a) == 16 and a[0].shape == (32, 32, 3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    stamp = (other / "videos" / "synth00007.mp4").stat().st_mtime_ns
    assert synth_command(SimpleNamespace(out=str(other), videos=40, seed=3)) == 0
    assert (other / "videos" / "synth00007.mp4").stat().st_mtime_ns == stamp


def test_stills_are_fresh_frames_with_captions_of_what_they_show(synth_dir, tmp_path):
    """5 stills per training clip, each a 32x32 frame of a clip no split holds, its five captions naming
    colours and shapes only (read back by the caption parser); the same seed writes the same pixels."""
    from PIL import Image

    from ds_videocap.stills import read_image_captions
    from ds_videocap.synth import STILL_START, render_clip
    from ds_videocap.synth_captions import read_attributes

    stills = read_image_captions(synth_dir / "annotations" / "stills_train.json", synth_dir / "stills")
    assert len(stills) == 5 * 34 and len(list((synth_dir / "stills").glob("*.png"))) == 5 * 34
    for index, (image, captions) in enumerate(stills[:20]):
        pixels = np.asarray(Image.open(image))
        frames, objects = render_clip(STILL_START + index, 3)
        assert pixels.shape == (32, 32, 3) and any(np.array_equal(pixels, f) for f in frames)
        assert len(captions) == 5
        for caption in captions:
            named = read_attributes(caption)
            assert named["colors"] == {o["color"] for o in objects}
            assert named["shapes"] == {o["shape"] for o in objects} and not named["motions"], caption
    video_frames = [render_clip(i, 3)[0][0] for i in range(40)]
    first = np.asarray(Image.open(stills[0][0]))
    assert not any(np.array_equal(first, f) for f in video_frames)  # not a frame of the set's own clips
    again = make_synthetic_set(tmp_path / "again", videos=40, seed=3)
    name = "still000007.png"
    assert (again / "stills" / name).read_bytes() == (synth_dir / "stills" / name).read_bytes()


def test_a_set_written_before_stills_existed_is_regenerated(tmp_path):
    out = make_synthetic_set(tmp_path / "s", videos=6, seed=0)
    (out / "READY").write_text(json.dumps({"videos": 6, "seed": 0}))  # the stamp of a set without stills
    import shutil
    shutil.rmtree(out / "stills")
    make_synthetic_set(out, videos=6, seed=0)
    assert len(list((out / "stills").glob("*.png"))) == 20


def test_different_args_regenerate(tmp_path):
    out = make_synthetic_set(tmp_path / "s", videos=6, seed=0)
    before = (out / "annotations" / "cap_train.json").read_bytes()
    make_synthetic_set(out, videos=6, seed=1)
    assert read(out / "READY") == {"videos": 6, "seed": 1, "stills": 5 * 4}
    assert (out / "annotations" / "cap_train.json").read_bytes() != before
    make_synthetic_set(out, videos=3, seed=1)
    assert len(list((out / "videos").glob("*.mp4"))) == 3


def test_too_few_videos_is_a_user_error():
    with pytest.raises(UserError, match="--videos"):
        split_sizes(2)


def test_tokenizer_loads(synth_dir):
    from transformers import T5TokenizerFast

    tok = T5TokenizerFast.from_pretrained(str(synth_dir / "tokenizer"), extra_ids=0)
    ids = tok("a red circle moves to the left").input_ids
    assert ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids


def test_attribute_accuracy_on_hand_written_captions():
    attributes = {
        "a": {"colors": ["red"], "shapes": ["circle"], "motions": ["left"]},
        "b": {"colors": ["blue"], "shapes": ["square"], "motions": ["grow"]},
        "c": {"colors": ["green"], "shapes": ["triangle"], "motions": ["stay"]},
        "d": {"colors": ["yellow", "purple"], "shapes": ["circle", "square"], "motions": ["up", "shrink"]},
    }
    right = {"a": "a red round shape is sliding left", "b": "the blue box gets bigger",
             "c": "there is a green wedge remaining motionless",
             "d": "a yellow ball rises while a purple block becomes smaller"}
    assert attribute_accuracy(right, attributes) == {
        "color_acc": 1.0, "shape_acc": 1.0, "motion_acc": 1.0, "all_acc": 1.0}
    wrong = dict(right, a="a red circle moves to the right",       # wrong motion
                 d="a yellow ball rises")                          # second shape not named
    acc = attribute_accuracy(wrong, attributes)
    assert acc["motion_acc"] == 0.5 and acc["color_acc"] == 0.75 and acc["all_acc"] == 0.5
    assert attribute_accuracy({}, attributes)["all_acc"] == 0.0
