"""Clips per second: the project's loader against a bare decord get_batch loop over the same files.

    python benchmarks/bench_loader.py [--clips 64] [--workers 2] [--repeats 3]

Writes its own test videos (PyAV, libx264, 320x240, 64 frames) into a temp dir, then times, in one
run: (1) bare decord, one process, VideoReader(width=224, height=224) + get_batch of 8 uniform indices;
(2) build_loader over VideoCaptionDataset with eval sampling, no augmentation (what evaluation runs),
its first epoch (which starts the persistent workers) apart from the later ones; (3) the same loader
with training sampling and augmentation. Figures are medians over --repeats epochs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def write_clips(folder: Path, clips: int, frames: int, width: int, height: int) -> list:
    """Moving gradients with mild noise: cheap to write, not trivially compressible to decode."""
    import av

    rng = np.random.default_rng(0)
    paths = []
    ramp = (np.arange(width)[None, :, None] * 255 // width).astype(np.int16)
    for c in range(clips):
        path = folder / f"clip{c:03d}.mp4"
        tint = rng.integers(0, 80, size=3).astype(np.int16)
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=25)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for f in range(frames):
                base = np.roll(ramp, 4 * f, axis=1) + tint + rng.integers(-8, 9, size=(height, width, 3))
                img = np.clip(np.broadcast_to(base, (height, width, 3)), 0, 255).astype(np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        paths.append(path)
    return paths


def cpu_seconds() -> float:
    """CPU time of this process and its DataLoader workers: a figure the machine's load barely moves."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def measure(run, *args) -> tuple:
    """(clips per second, CPU milliseconds per clip) of one pass."""
    cpu = cpu_seconds()
    rate, count = run(*args)
    return rate, (cpu_seconds() - cpu) / count * 1000


def time_bare_decord(paths: list, T: int, size: int) -> tuple:
    import decord

    from ds_videocap.video import sample_indices

    start = time.perf_counter()
    for path in paths:
        reader = decord.VideoReader(str(path), width=size, height=size)
        reader.get_batch(sample_indices("uniform", len(reader), T)).asnumpy()
    return len(paths) / (time.perf_counter() - start), len(paths)


def build(paths: list, T: int, size: int, workers: int, batch: int, train: bool):
    from ds_videocap.annotations import Clip
    from ds_videocap.config import DataCfg
    from ds_videocap.data import VideoCaptionDataset, build_loader

    cfg = DataCfg(frames=T, image_size=size, num_workers=workers, augment=train)
    clips = [Clip(p.stem, str(p), ["a clip"]) for p in paths]
    return build_loader(VideoCaptionDataset(clips, cfg, train=train), batch, shuffle=False, num_workers=workers)


def time_pass(loader, sampler, epoch: int, expected: int) -> tuple:
    sampler.set_epoch(epoch)
    start = time.perf_counter()
    count = sum(batch["pixel_values"].shape[0] for batch in loader)
    assert count == expected, f"loader skipped {expected - count} clips"
    return count / (time.perf_counter() - start), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--frames", type=int, default=64, help="frames per test video")
    parser.add_argument("--T", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    w = args.workers
    names = ["bare decord get_batch loop (1 process, decord threads auto)",
             f"loader, eval: uniform, no augmentation, {w} workers (warm epochs)",
             f"loader, eval: first epoch, including starting {w} workers",
             f"loader, train: random_segment + crop/flip, {w} workers (warm epochs)"]
    rows = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_clips(Path(tmp), args.clips, args.frames, 320, 240)
        n = len(paths)
        time_bare_decord(paths, args.T, args.size)  # warms the page cache
        eval_loader = build(paths, args.T, args.size, w, args.batch, train=False)
        train_loader = build(paths, args.T, args.size, w, args.batch, train=True)
        rows[names[2]].append(measure(time_pass, *eval_loader, 0, n))
        time_pass(*train_loader, 0, n)  # starts the training loader's workers
        for epoch in range(1, args.repeats + 1):  # interleaved: load from other processes hits all alike
            rows[names[0]].append(measure(time_bare_decord, paths, args.T, args.size))
            rows[names[1]].append(measure(time_pass, *eval_loader, epoch, n))
            rows[names[3]].append(measure(time_pass, *train_loader, epoch, n))
    bare = statistics.median(r for r, _ in rows[names[0]])
    print(f"| {args.clips} clips x {args.frames} frames, 320x240 -> T={args.T}, {args.size} px, batch {args.batch} "
          f"| clips/s (median) | vs bare decord | CPU ms per clip, all processes |")
    print("|---|---|---|---|")
    for name, results in rows.items():
        rate = statistics.median(r for r, _ in results)
        cpu = statistics.median(c for _, c in results)
        print(f"| {name} | {rate:.1f} | {rate / bare:.0%} | {cpu:.1f} |")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
