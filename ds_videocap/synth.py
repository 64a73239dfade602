"""The embedded synthetic video-caption set: coloured shapes that move, grow, shrink or stay.

`ds-videocap data synth --out DIR [--videos N] [--seed S]` writes
  DIR/videos/<id>.mp4                 32x32 px, 16 frames, H.264 yuv420p
  DIR/annotations/cap_{train,val,test}.json   LAVIS form, each record with "attributes"
  DIR/annotations/{val,test}_gt.json  COCO form, for pycocoevalcap
  DIR/tokenizer/                      sentencepiece model trained on the train captions
  DIR/stills/<id>.png                 32x32 px stills: one frame each of fresh clips (5 per training clip)
  DIR/annotations/stills_train.json   LAVIS image-caption form ({"image", "caption"}): five still captions
                                      per still ("a red ball and a blue box": what one frame can show),
                                      for the recipe's vision stage (vision_stage.py)
  DIR/READY                           {"videos", "seed", "stills"}: a rerun with the same arguments is a no-op.

Motion is only visible across frames: start position and size are drawn at random, so one frame
shows where a shape is and how big, never which way it is going. Each clip is drawn from its own
generator seeded by (seed, clip index), so the set is identical whether written by one process or two.
The stills are frames of clips numbered from STILL_START on, which no split holds: no still shows a
val or test clip.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from .errors import UserError
from .synth_captions import COLORS, MOTIONS, SHAPES, attribute_accuracy, still_caption, write_captions
from .tokenizer import train_caption_tokenizer

__all__ = ["make_synthetic_set", "synth_command", "attribute_accuracy", "render_clip"]

SIZE = 32
FRAMES = 16
FPS = 8
DEFAULT_SPLITS = {"train": 4000, "val": 300, "test": 300}
TWO_SHAPE_SHARE = 0.2
REFERENCES = 5
STILLS_PER_TRAIN_CLIP = 5  # the standard set: 20,000 stills (the vision stage's 1600 x 128 draws: ~10 epochs)
STILL_START = 10**6  # the stills' clip numbers: far above any split's
RGB = {"red": (220, 40, 40), "green": (40, 190, 70), "blue": (50, 90, 235),
       "yellow": (235, 215, 30), "purple": (150, 60, 205)}
_YS, _XS = np.mgrid[0:SIZE, 0:SIZE] + 0.5  # pixel centres (a constant grid)


def split_sizes(videos: int | None) -> dict[str, int]:
    """Clips per split: the standard 4000/300/300, or ~86/7/7 of `videos` with at least one each."""
    if videos is None:
        return dict(DEFAULT_SPLITS)
    if videos < 3:
        raise UserError(f"--videos {videos}: need at least 3 clips (one per split)")
    held_out = max(1, round(0.07 * videos))
    return {"train": videos - 2 * held_out, "val": held_out, "test": held_out}


def _track(rng: np.random.Generator, motion: str, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame centre (T, 2) as (x, y) and half-size (T,) of one object."""
    t = np.linspace(0.0, 1.0, FRAMES)
    if motion in ("grow", "shrink"):
        small, large = rng.uniform(2.5, 4.5) * scale, rng.uniform(7.0, 9.0) * scale
        start, end = (small, large) if motion == "grow" else (large, small)
        half = start + (end - start) * t
        centre = rng.uniform(large, SIZE - large, size=2)
        return np.broadcast_to(centre, (FRAMES, 2)).copy(), half
    half = np.full(FRAMES, rng.uniform(3.0, 6.0) * scale)
    h = half[0]
    if motion == "stay":
        centre = rng.uniform(h, SIZE - h, size=2)
        return np.broadcast_to(centre, (FRAMES, 2)).copy(), half
    step = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[motion]
    dist = rng.uniform(10.0, 16.0)
    low = np.array([h + dist if s < 0 else h for s in step])
    high = np.array([SIZE - h - dist if s > 0 else SIZE - h for s in step])
    start = rng.uniform(low, high)
    return start + np.outer(t, np.array(step) * dist), half


def _mask(shape: str, cx: float, cy: float, half: float) -> np.ndarray:
    dx, dy = _XS - cx, _YS - cy
    if shape == "circle":
        return dx * dx + dy * dy <= half * half
    if shape == "square":
        return (np.abs(dx) <= half * 0.85) & (np.abs(dy) <= half * 0.85)
    # apex up: the half-width grows from 0 at the top edge to `half` at the bottom edge
    return (dy >= -half) & (dy <= half) & (np.abs(dx) <= (dy + half) / 2)


def render_clip(index: int, seed: int) -> tuple[np.ndarray, list[dict]]:
    """Frames (T, 32, 32, 3) uint8 and the objects [{color, shape, motion}] of clip `index`."""
    rng = np.random.default_rng([seed, index])
    count = 2 if rng.random() < TWO_SHAPE_SHARE else 1
    objects: list[dict] = []
    while len(objects) < count:
        obj = {"color": COLORS[rng.integers(len(COLORS))], "shape": SHAPES[rng.integers(len(SHAPES))],
               "motion": MOTIONS[rng.integers(len(MOTIONS))]}
        # two objects differ in colour and shape, so that every caption names each unambiguously
        if all(obj["color"] != o["color"] and obj["shape"] != o["shape"] for o in objects):
            objects.append(obj)
    background = rng.uniform(15, 90)
    noise = 0.0 if rng.random() < 0.5 else rng.uniform(3.0, 14.0)
    tracks = [_track(rng, o["motion"], 1.0 if count == 1 else 0.7) for o in objects]
    tints = [np.clip(np.array(RGB[o["color"]]) + rng.uniform(-15, 15, 3), 0, 255) for o in objects]
    frames = np.empty((FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    for f in range(FRAMES):
        image = np.full((SIZE, SIZE, 3), background)
        if noise:
            image += rng.normal(0.0, noise, (SIZE, SIZE, 1))
        for o, (centre, half), tint in zip(objects, tracks, tints):
            image[_mask(o["shape"], centre[f, 0], centre[f, 1], half[f])] = tint
        frames[f] = np.clip(image, 0, 255).round().astype(np.uint8)
    return frames, objects


def write_video(frames: np.ndarray, path: Path) -> None:
    import av

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "16"}
        stream.codec_context.thread_count = 1  # one thread: identical bytes on every run
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _make_clip(job: tuple[int, int, str]) -> dict:
    index, seed, video_dir = job
    frames, objects = render_clip(index, seed)
    video_id = f"synth{index:05d}"
    write_video(frames, Path(video_dir) / f"{video_id}.mp4")
    rng = np.random.default_rng([seed, index, 1])  # captions: their own stream, independent of pixels
    captions = write_captions(rng, [(o["color"], o["shape"], o["motion"]) for o in objects], REFERENCES)
    attributes = {"colors": [o["color"] for o in objects], "shapes": [o["shape"] for o in objects],
                  "motions": [o["motion"] for o in objects]}
    return {"video_id": video_id, "captions": captions, "attributes": attributes}


def _make_still(job: tuple[int, int, str]) -> list[dict]:
    """One still (a random frame of fresh clip STILL_START + index) and its records, one per caption."""
    from PIL import Image

    index, seed, still_dir = job
    frames, objects = render_clip(STILL_START + index, seed)
    rng = np.random.default_rng([seed, STILL_START + index, 2])
    name = f"still{index:06d}.png"
    Image.fromarray(frames[rng.integers(len(frames))]).save(Path(still_dir) / name)
    shown = [(o["color"], o["shape"]) for o in objects]
    captions = [still_caption(rng, shown) for _ in range(REFERENCES)]  # independent draws, as measured
    return [{"image": name, "caption": c, "image_id": name[:-4]} for c in captions]


def _pool_map(function, jobs: list, workers: int) -> list:
    if workers <= 1 or len(jobs) < 200:
        return [function(job) for job in jobs]
    import multiprocessing as mp

    with mp.get_context("fork").Pool(workers) as pool:
        return pool.map(function, jobs, chunksize=64)


def _render_all(total: int, seed: int, video_dir: Path, workers: int) -> list[dict]:
    return _pool_map(_make_clip, [(i, seed, str(video_dir)) for i in range(total)], workers)


def _write_stills(count: int, seed: int, out: Path, workers: int) -> None:
    (out / "stills").mkdir(parents=True)
    records = _pool_map(_make_still, [(i, seed, str(out / "stills")) for i in range(count)], workers)
    _write_json(out / "annotations" / "stills_train.json", [r for still in records for r in still])


def _write_json(path: Path, payload) -> None:
    path.write_text(json.dumps(payload, separators=(",", ":")))


def _write_annotations(clips: list[dict], sizes: dict[str, int], out: Path) -> list[str]:
    """LAVIS split files and COCO ground truth; returns the train captions (for the tokenizer)."""
    ann = out / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    start, train_captions = 0, []
    for split, n in sizes.items():
        part, start = clips[start:start + n], start + n
        if split == "train":
            records = [{"video": f"{c['video_id']}.mp4", "caption": cap, "image_id": c["video_id"],
                        "attributes": c["attributes"]} for c in part for cap in c["captions"]]
            train_captions = [r["caption"] for r in records]
        else:
            records = [{"video": f"{c['video_id']}.mp4", "caption": c["captions"], "image_id": c["video_id"],
                        "attributes": c["attributes"]} for c in part]
            gt = {"info": {"description": "ds-videocap synthetic set"}, "licenses": [], "type": "captions",
                  "images": [{"id": c["video_id"]} for c in part],
                  "annotations": [{"image_id": c["video_id"], "caption": cap, "id": k}
                                  for k, (c, cap) in enumerate((c, cap) for c in part for cap in c["captions"])]}
            _write_json(ann / f"{split}_gt.json", gt)
        _write_json(ann / f"cap_{split}.json", records)
    return train_captions


def make_synthetic_set(out_dir: str | Path, videos: int | None = None, seed: int = 0,
                       workers: int = 2) -> Path:
    """Write the synthetic set under `out_dir` (skipped when READY records the same videos and seed)."""
    out = Path(out_dir)
    sizes = split_sizes(videos)
    stamp = _stamp(videos, seed)
    ready = out / "READY"
    if is_ready(out, videos, seed):
        return out
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    ready.unlink(missing_ok=True)
    for sub in ("videos", "annotations", "tokenizer", "stills"):  # only what this command writes
        shutil.rmtree(out / sub, ignore_errors=True)
    (out / "videos").mkdir(parents=True)
    clips = _render_all(stamp["videos"], stamp["seed"], out / "videos", workers)
    train_captions = _write_annotations(clips, sizes, out)
    _write_stills(stamp["stills"], stamp["seed"], out, workers)
    train_caption_tokenizer(train_captions, out / "tokenizer")
    ready.write_text(json.dumps(stamp))
    return out


def _stamp(videos: int | None, seed: int) -> dict:
    sizes = split_sizes(videos)
    return {"videos": sum(sizes.values()), "seed": int(seed), "stills": STILLS_PER_TRAIN_CLIP * sizes["train"]}


def is_ready(out_dir: str | Path, videos: int | None = None, seed: int | None = None) -> bool:
    """Whether a complete set is there (READY is written last); with videos and seed given, also
    that it was generated with them."""
    ready = Path(out_dir) / "READY"
    if not ready.is_file():
        return False
    if seed is None:
        return True
    try:
        return json.loads(ready.read_text()) == _stamp(videos, seed)
    except ValueError:
        return False  # an unreadable marker means an unknown state: regenerate


def synth_command(args) -> int:
    sizes = split_sizes(args.videos)
    out = Path(args.out)
    stamp = _stamp(args.videos, args.seed)
    if is_ready(out, args.videos, args.seed):
        print(f"{out}: already complete ({stamp['videos']} clips, seed {stamp['seed']})", file=sys.stderr)
        return 0
    start = time.perf_counter()
    make_synthetic_set(out, args.videos, args.seed)
    print(f"{out}: wrote {sizes['train']}/{sizes['val']}/{sizes['test']} train/val/test clips and "
          f"{stamp['stills']} stills in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0
