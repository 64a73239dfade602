"""Shared pytest fixtures: small test videos written with PyAV into tmp_path."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_models import tiny_folders, tokenizer_dir  # noqa: F401  (fixtures shared by every test module)


def write_video(path, frames: int = 16, width: int = 64, height: int = 48, codec: str = "libx264",
                pix_fmt: str = "yuv420p", fps: int = 8, gray: bool = False) -> Path:
    """Frame i is a flat grey of level 20 + 12*i (mod 240), so a decoded frame tells its index."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for i in range(frames):
            level = np.uint8(level_of_frame(i))
            if gray:
                frame = av.VideoFrame.from_ndarray(np.full((height, width), level, np.uint8), format="gray")
            else:
                frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), level, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def level_of_frame(index: int) -> int:
    """The grey level write_video gives frame `index`."""
    return 20 + 12 * index % 220


@pytest.fixture
def make_video(tmp_path):
    """make_video(name, **write_video options) -> Path of a new video under tmp_path."""
    def make(name: str = "clip.mp4", **options) -> Path:
        return write_video(tmp_path / name, **options)
    return make


@pytest.fixture
def frame_level():
    """frame_level(i) -> the grey level of frame i in a make_video video."""
    return level_of_frame


# ----- runs shared between end-to-end modules (each launcher run costs ~30 s of fixed start-up) -----
@pytest.fixture(scope="session")
def synth40(tmp_path_factory):
    """The 40-clip synthetic set with the recipe's seed (train.sh finds it complete)."""
    from ds_videocap.synth import make_synthetic_set

    folder = tmp_path_factory.mktemp("synth40")
    make_synthetic_set(folder, videos=40, seed=42)
    return folder


@pytest.fixture(scope="session")
def zero3_offload_run(tmp_path_factory, synth40):
    """One node x two ranks under zero3_offload.json (ZERO3_OFFLOAD_STEPS): checked as a training run by
    test_e2e_train.py and used as the reference that two nodes x one rank must equal (test_e2e_multinode.py)."""
    from e2e import ZERO3_OFFLOAD_STEPS, run_train

    out = tmp_path_factory.mktemp("zero3_offload") / "run"
    run_train(out, synth40, "zero3_offload.json", *ZERO3_OFFLOAD_STEPS, timeout=600)
    return out
