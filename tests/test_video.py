import numpy as np
import pytest

from ds_videocap.video import (
    CLIP_MEAN,
    CLIP_STD,
    DecodeTimeout,
    VideoDecodeError,
    frames_to_tensor,
    read_frames,
    sample_indices,
)

MODES = ("uniform", "random_segment", "headtail")


def test_uniform_takes_segment_centres():
    assert sample_indices("uniform", 16, 4) == [2, 6, 10, 14]
    assert sample_indices("uniform", 10, 1) == [5]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("num_frames,T", [(1, 8), (3, 8), (8, 8), (100, 8), (7, 1), (1, 1), (2, 3)])
def test_any_length_gives_T_sorted_valid_indices(mode, num_frames, T):
    for seed in range(5):
        idx = sample_indices(mode, num_frames, T, rng=seed)
        assert len(idx) == T
        assert all(0 <= i < num_frames for i in idx)
        assert idx == sorted(idx)
        # A video shorter than T repeats frames but uses every one it has.
        if num_frames <= T:
            assert set(idx) == set(range(num_frames))


def test_random_segment_draws_one_frame_per_segment():
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = sample_indices("random_segment", 40, 4, rng)
        assert [i // 10 for i in idx] == [0, 1, 2, 3]


def test_headtail_splits_halves_like_lavis():
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = sample_indices("headtail", 100, 8, rng)
        assert all(i < 50 for i in idx[:4]) and all(i >= 50 for i in idx[4:])
        assert len(set(idx)) == 8


def test_sampling_is_deterministic_for_a_seed():
    assert sample_indices("headtail", 50, 8, 3) == sample_indices("headtail", 50, 8, 3)


def test_zero_frames_and_bad_mode():
    with pytest.raises(VideoDecodeError):
        sample_indices("uniform", 0, 4)
    with pytest.raises(ValueError):
        sample_indices("middle", 10, 4)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_decodes_the_sampled_frames(make_video, frame_level, backend):
    path = make_video(frames=16)
    frames = read_frames(path, "uniform", 4, 32, backend=backend)
    assert frames.shape == (4, 32, 32, 3) and frames.dtype == np.uint8
    levels = frames.reshape(4, -1).mean(1)
    expected = [frame_level(i) for i in (2, 6, 10, 14)]
    np.testing.assert_allclose(levels, expected, atol=6)


def test_backends_agree(make_video):
    path = make_video("a.avi", frames=12, width=80, height=60, codec="mpeg4")
    a = read_frames(path, "uniform", 5, 48, backend="decord")
    b = read_frames(path, "uniform", 5, 48, backend="pyav")
    assert a.shape == b.shape == (5, 48, 48, 3)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 4


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_one_frame_and_short_videos(make_video, backend):
    one = make_video("one.mp4", frames=1)
    assert read_frames(one, "headtail", 8, 16, backend=backend).shape == (8, 16, 16, 3)
    short = make_video("short.mp4", frames=3)
    assert read_frames(short, "random_segment", 8, 16, backend=backend, rng=0).shape == (8, 16, 16, 3)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_grayscale_odd_size_becomes_rgb(make_video, backend):
    path = make_video("gray.mkv", frames=6, width=65, height=49, codec="ffv1", pix_fmt="gray", gray=True)
    frames = read_frames(path, "uniform", 3, 24, backend=backend)
    assert frames.shape == (3, 24, 24, 3)
    native = read_frames(path, "uniform", 2, None, backend=backend)
    assert native.shape == (2, 49, 65, 3)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_bad_files_raise_decode_error(tmp_path, make_video, backend):
    good = make_video(frames=16).read_bytes()
    (tmp_path / "trunc.mp4").write_bytes(good[: len(good) // 2])
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video\n")
    for name in ("trunc.mp4", "zero.mp4", "text.mp4", "missing.mp4"):
        with pytest.raises(VideoDecodeError, match=name):
            read_frames(tmp_path / name, "uniform", 4, 16, backend=backend)


def test_timeout_interrupts_python_level_decoding(make_video, monkeypatch):
    import time

    import ds_videocap.video as video

    monkeypatch.setattr(video, "_read_decord", lambda *a: time.sleep(5))
    start = time.time()
    with pytest.raises(DecodeTimeout, match="longer than 0.2"):
        read_frames(make_video(), "uniform", 4, 16, timeout_s=0.2)
    assert time.time() - start < 2


def test_normalisation_and_augmentation():
    frames = np.full((3, 20, 20, 3), 128, np.uint8)
    x = frames_to_tensor(frames)
    assert tuple(x.shape) == (3, 3, 20, 20)
    for c in range(3):
        assert abs(x[0, c, 0, 0].item() - (128 / 255 - CLIP_MEAN[c]) / CLIP_STD[c]) < 1e-5
    ramp = np.broadcast_to(np.arange(20, dtype=np.uint8)[None, None, :, None] * 10, (4, 20, 20, 3)).copy()
    outs = [frames_to_tensor(ramp, augment=True, rng=seed) for seed in range(8)]
    assert all(tuple(o.shape) == (4, 3, 20, 20) for o in outs)
    # One crop for the whole clip: every frame of an augmented clip is identical here.
    assert all(np.allclose(o[0], o[3]) for o in outs)
    # Flips and crops vary across seeds.
    assert len({round(o[0, 0, 0, 0].item(), 3) for o in outs}) > 1
