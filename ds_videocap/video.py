"""Frames from a video: index sampling (pure functions), decoding (decord or PyAV), pixel transforms.

This is the only decoder-specific code. Frames are resized to size x size at decode (as the study did,
aspect ratio not kept), always RGB uint8 (T, size, size, 3) whatever the source (grayscale, odd sizes).
"""
from __future__ import annotations

import math
import os
import signal
import threading
from contextlib import contextmanager

import numpy as np

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SAMPLING_MODES = ("uniform", "random_segment", "headtail")
BACKENDS = ("decord", "pyav")


class VideoDecodeError(Exception):
    """A video that cannot be used: missing, empty, not a video, truncated, no frames."""


class DecodeTimeout(VideoDecodeError):
    """Decoding took longer than the allowed time."""


def sample_indices(mode: str, num_frames: int, T: int, rng=None) -> list:
    """T frame indices in [0, num_frames), non-decreasing; repeats indices when the video is short.

    uniform: the centre of each of T equal segments (evaluation, deterministic).
    random_segment: one random frame in each of T equal segments (training, TSN-style).
    headtail: LAVIS's training sampling, T/2 distinct random frames from the first half and the rest
        from the second half, each half sorted. LAVIS returns 2*(T//2) frames and fails on
        1-frame videos; here an odd T gives the extra frame to the tail and short videos repeat.
    all: every frame, T ignored (read_frames' whole-clip decode, which a frame cache keeps).
    `rng`: a numpy Generator or a seed (None: fresh entropy); unused by uniform and all.
    """
    if num_frames < 1:
        raise VideoDecodeError("video has no frames")
    if mode == "all":
        return list(range(num_frames))
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    if mode == "uniform":
        return [(2 * i + 1) * num_frames // (2 * T) for i in range(T)]
    rng = np.random.default_rng(rng)
    if mode == "random_segment":
        out = []
        for i in range(T):
            lo, hi = i * num_frames // T, (i + 1) * num_frames // T
            out.append(int(rng.integers(lo, hi)) if hi > lo else min(lo, num_frames - 1))
        return out
    if mode == "headtail":
        n = min(T, num_frames)
        half = num_frames // 2
        head = rng.choice(half, n // 2, replace=False) if n // 2 else []
        tail = half + rng.choice(num_frames - half, n - n // 2, replace=False)
        picked = sorted(int(i) for i in head) + sorted(int(i) for i in tail)
        # Short video: spread the distinct frames over T slots, keeping temporal order.
        return [picked[i * n // T] for i in range(T)]
    raise ValueError(f"unknown sampling mode '{mode}': expected one of {list(SAMPLING_MODES)}")


@contextmanager
def _deadline(seconds: float | None, path: str):
    """Raise DecodeTimeout inside the block after `seconds` (SIGALRM, so only in a main thread).

    DataLoader workers run the dataset in their main thread, so this works there too. A signal is
    handled between Python bytecodes: PyAV decodes frame by frame and is interrupted mid-video; a
    single decord call (open, get_batch) is interrupted only when it returns, and then skipped.
    """
    usable = seconds and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise DecodeTimeout(f"{path}: decoding took longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def read_frames(path, indices_mode: str, T: int, size: int | None, backend: str = "decord", rng=None,
                timeout_s: float | None = None, threads: int = 0) -> np.ndarray:
    """Decode T frames sampled by `indices_mode` -> uint8 (T, size, size, 3) RGB.

    size None keeps the native resolution. `threads` is decord's decoder thread count (0: FFmpeg
    chooses); DataLoader workers pass 1 because the workers themselves are the parallelism.
    Every failure (missing, empty, not a video, truncated, timeout) is a VideoDecodeError.
    """
    path = str(path)
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend '{backend}': expected one of {list(BACKENDS)}")
    if not os.path.isfile(path):
        raise VideoDecodeError(f"{path}: file not found")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(f"{path}: empty file (0 bytes)")
    reader = _read_decord if backend == "decord" else _read_pyav
    try:
        with _deadline(timeout_s, path):
            frames = reader(path, indices_mode, T, size, rng, threads)
    except VideoDecodeError:
        raise
    except Exception as err:  # decord raises RuntimeError/DECORDError, PyAV its own FFmpeg errors
        reason = str(err).strip().splitlines()[-1][:200] if str(err).strip() else type(err).__name__
        raise VideoDecodeError(f"{path}: cannot decode ({reason})") from err
    if frames.ndim == 3:  # defensive: a single-channel array becomes RGB
        frames = np.repeat(frames[..., None], 3, axis=-1)
    return np.ascontiguousarray(frames[..., :3])


def _read_decord(path, mode, T, size, rng, threads) -> np.ndarray:
    import decord

    rng = np.random.default_rng(rng)
    state = rng.bit_generator.state  # a retry must draw the same indices
    try:
        return _decord_batch(decord, path, mode, T, size or -1, rng, threads)
    except decord.DECORDError as err:
        # decord 0.6 fails to resize to some small sizes (8, 12, 16, 24, 48, 72 px: "The size must
        # exactly match"): decode at native size and resize with torch instead.
        if not size or "exactly match" not in str(err):
            raise
    rng.bit_generator.state = state
    return _resize(_decord_batch(decord, path, mode, T, -1, rng, threads), size)


def _decord_batch(decord, path, mode, T, side, rng, threads) -> np.ndarray:
    reader = decord.VideoReader(path, width=side, height=side, num_threads=threads)
    batch = reader.get_batch(sample_indices(mode, len(reader), T, rng))
    # Another module may have switched decord's bridge to torch; accept either array type.
    return batch.asnumpy() if hasattr(batch, "asnumpy") else batch.numpy()


def _resize(frames: np.ndarray, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _count_frames_pyav(path) -> int:
    """Containers such as WebM/MKV carry no frame count: count the video packets instead."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size)


def _read_pyav(path, mode, T, size, rng, threads) -> np.ndarray:
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise VideoDecodeError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        total = stream.frames or _count_frames_pyav(path)
        indices = sample_indices(mode, total, T, rng)
        wanted, last_wanted = set(indices), max(indices)
        kept: dict = {}
        last = None
        # Decode sequentially (seeking is unreliable across containers) and convert only what is used.
        for k, frame in enumerate(container.decode(stream)):
            last = frame
            if k in wanted:
                kept[k] = _frame_to_rgb(frame, size)
            if k >= last_wanted:
                break
    if last is None:
        raise VideoDecodeError(f"{path}: no decodable frames")
    # The container may promise more frames than it holds: repeat the last decoded one.
    fallback = None
    out = []
    for i in indices:
        if i not in kept:
            fallback = fallback if fallback is not None else _frame_to_rgb(last, size)
            kept[i] = fallback
        out.append(kept[i])
    return np.stack(out)


def _frame_to_rgb(frame, size) -> np.ndarray:
    if size:
        return frame.to_ndarray(format="rgb24", width=size, height=size)
    return frame.to_ndarray(format="rgb24")


def frames_to_tensor(frames: np.ndarray, augment: bool = False, rng=None, mean=CLIP_MEAN, std=CLIP_STD):
    """uint8 (T, H, W, 3) -> float (T, 3, H, W) contiguous, normalised with the model folder's `mean` and
    `std` (CLIP's by default); `augment` adds the
    training random-resized-crop (scale 0.5-1, aspect 3/4-4/3, one crop for the whole clip) and a
    horizontal flip with probability 1/2."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # a strided view
    if augment:
        rng = np.random.default_rng(rng)
        x = _random_resized_crop(x, rng)
        if rng.random() < 0.5:
            x = x.flip(-1)
    else:
        # Copy into a contiguous float tensor in one pass: arithmetic (and the collate's stack) on the
        # channels-last view runs about ten times slower.
        x = torch.empty(x.shape, dtype=torch.float32).copy_(x)
    # (x / 255 - mean) / std folded into one multiply and one subtract.
    std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    scale, shift = 1.0 / (255.0 * std), torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) / std
    return x.mul_(scale).sub_(shift)


def _random_resized_crop(x, rng, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop parameters, drawn once per clip; uint8 (T, 3, H, W) view in,
    float (T, 3, H, W) contiguous out, values 0-255, same H and W."""
    import torch
    import torch.nn.functional as F

    H, W = x.shape[-2:]
    area = H * W
    top, left, h, w = 0, 0, H, W  # fallback after 10 misses: the whole frame
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= W and 0 < ch <= H:
            top, left, h, w = int(rng.integers(0, H - ch + 1)), int(rng.integers(0, W - cw + 1)), ch, cw
            break
    view = x[..., top:top + h, left:left + w]
    crop = torch.empty(view.shape, dtype=torch.float32).copy_(view)
    return F.interpolate(crop, size=(H, W), mode="bilinear", align_corners=False)  # upsampling only
