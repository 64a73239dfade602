"""Odd but valid videos are decoded (never skipped); broken ones raise VideoDecodeError, nothing else.

Training and evaluation skip a video only on VideoDecodeError, so any other exception from a bad file
would crash a run, and a VideoDecodeError from a usable file would throw data away.
"""
import os
from fractions import Fraction

import numpy as np
import pytest
from conftest import level_of_frame, write_video

from ds_videocap.video import VideoDecodeError, read_frames

BACKENDS = ["decord", "pyav"]
T, SIZE = 8, 32


def write_vfr(path, frames=12):
    """Frame gaps of 10, 100, 33 and 250 ms in turn: a variable frame rate."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        pts = 0
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), level_of_frame(i), np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            pts += (10, 100, 33, 250)[i % 4]
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_no_frames(path):
    """A valid container with a video stream header and not one frame."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
    return path


ODD = {  # name -> (writer, frames in the file)
    "fewer_frames_than_T": (lambda p: write_video(p / "short.mp4", frames=3), 3),
    "one_frame": (lambda p: write_video(p / "one.mp4", frames=1), 1),
    "odd_resolution_33x17": (lambda p: write_video(p / "odd.mp4", frames=10, width=33, height=17,
                                                   pix_fmt="yuv444p"), 10),
    "grayscale": (lambda p: write_video(p / "gray.mp4", frames=10, pix_fmt="gray", gray=True), 10),
    "variable_frame_rate": (lambda p: write_vfr(p / "vfr.mp4"), 12),
    "large_1920x1080": (lambda p: write_video(p / "large.mp4", frames=3, width=1920, height=1080), 3),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(ODD))
def test_odd_but_valid_videos_decode_to_the_right_shape(tmp_path, kind, backend):
    writer, frames = ODD[kind]
    path = writer(tmp_path)
    out = read_frames(path, "uniform", T, SIZE, backend=backend)
    assert out.shape == (T, SIZE, SIZE, 3) and out.dtype == np.uint8
    # The right frames, in order: frame i is a flat grey of a known level.
    wanted = [(2 * i + 1) * frames // (2 * T) for i in range(T)]
    levels = out.reshape(T, -1).mean(axis=1)
    if kind == "grayscale":
        # x264's gray is limited-range (16-235), so levels stretch; order and equal channels remain.
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
        assert (np.diff(levels) >= 0).all() and levels[-1] - levels[0] > 100
    else:
        np.testing.assert_allclose(levels, [level_of_frame(i) for i in wanted], atol=8)
    train = read_frames(path, "random_segment", T, SIZE, backend=backend, rng=0)
    assert train.shape == (T, SIZE, SIZE, 3)


def _good_bytes(tmp_path):
    return write_video(tmp_path / "good_source.mp4", frames=16).read_bytes()


def _corrupt(data: bytes, start: int, length: int, seed: int) -> bytes:
    out = bytearray(data)
    out[start:start + length] = np.random.default_rng(seed).bytes(length)
    return bytes(out)


BROKEN = {  # name -> writer(tmp_path) -> path
    "truncated": lambda p: _write(p / "trunc.mp4", _good_bytes(p)[: len(_good_bytes(p)) // 2]),
    "header_only": lambda p: _write(p / "head.mp4", _good_bytes(p)[:600]),
    "corrupt_header": lambda p: _write(p / "corrupt.mp4", _corrupt(_good_bytes(p), 0, 64, 1)),
    "corrupt_middle": lambda p: _write(p / "corrupt_mid.mp4", _corrupt(_good_bytes(p), 600, 1000, 2)),
    "random_bytes": lambda p: _write(p / "random.mp4", np.random.default_rng(0).bytes(5000)),
    "text_file": lambda p: _write(p / "text.mp4", b"this is not a video\n"),
    "zero_bytes": lambda p: _write(p / "empty.mp4", b""),
    "zero_frames": lambda p: write_no_frames(p / "noframes.mkv"),
    "missing": lambda p: p / "missing.mp4",
    "directory": lambda p: _mkdir(p / "folder.mp4"),
    "dangling_link": lambda p: _symlink(p / "link.mp4", p / "nowhere.mp4"),
    "audio_only": lambda p: _write_audio(p / "audio.mp4"),
}


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _mkdir(path):
    path.mkdir()
    return path


def _symlink(path, target):
    os.symlink(target, path)
    return path


def _write_audio(path):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in list(stream.encode(frame)) + list(stream.encode()):
            container.mux(packet)
    return path


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(BROKEN))
def test_broken_videos_raise_video_decode_error_naming_the_file(tmp_path, kind, backend):
    path = BROKEN[kind](tmp_path)
    with pytest.raises(VideoDecodeError, match=path.name):
        read_frames(path, "uniform", T, SIZE, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unreadable_file_is_a_decode_error(tmp_path, backend):
    # A folder where the video should be: unreadable even for root, who ignores file modes.
    path = tmp_path / "locked.mp4"
    path.mkdir()
    with pytest.raises(VideoDecodeError, match="locked.mp4"):
        read_frames(path, "uniform", T, SIZE, backend=backend)
