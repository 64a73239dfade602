import time

import pytest
import torch

from ds_videocap.annotations import Clip
from ds_videocap.config import DataCfg
from ds_videocap.data import (
    ResumableDistributedSampler,
    SkipTracker,
    VideoCaptionDataset,
    build_loader,
    collate_clips,
    shard_indices,
)
from ds_videocap.errors import UserError


def cfg(**kw):
    base = dict(frames=4, image_size=32, num_workers=0, decode_timeout_s=10.0)
    base.update(kw)
    return DataCfg(**base)


@pytest.fixture
def clips(make_video, tmp_path):
    good = [make_video(f"v{i}.mp4", frames=8 + i) for i in range(3)]
    return [Clip(f"v{i}", str(p), ["A Dog, runs!", "a cat sleeps"], "train") for i, p in enumerate(good)] + [
        Clip("gone", str(tmp_path / "gone.mp4"), ["nothing"], "train")]


def test_eval_sample_is_normalised_and_deterministic(clips):
    ds = VideoCaptionDataset(clips, cfg(), train=False)
    s = ds[0]
    assert tuple(s["pixel_values"].shape) == (4, 3, 32, 32) and s["pixel_values"].dtype == torch.float32
    assert s["caption"] == "a dog runs" and s["references"] == ["a dog runs", "a cat sleeps"]
    assert torch.equal(s["pixel_values"], ds[0]["pixel_values"])


def test_train_sample_follows_seed_and_epoch(clips):
    ds = VideoCaptionDataset(clips, cfg(train_sampling="headtail"), train=True, seed=1)
    a = ds[1]["pixel_values"]
    assert torch.equal(a, ds[1]["pixel_values"])
    ds.set_epoch(1)
    assert not torch.equal(a, ds[1]["pixel_values"])
    assert ds[1]["caption"] in ("a dog runs", "a cat sleeps")


def test_skipped_video_keeps_the_rest_of_the_batch(clips):
    ds = VideoCaptionDataset(clips, cfg(), train=False)
    batch = collate_clips([ds[3], ds[0], ds[1]])
    assert tuple(batch["pixel_values"].shape) == (2, 4, 3, 32, 32)
    assert batch["video_ids"] == ["v0", "v1"] and batch["indices"] == [0, 1] and len(batch["captions"]) == 2
    (skip,) = batch["skipped"]
    assert skip["video"].endswith("gone.mp4") and "not found" in skip["reason"]
    empty = collate_clips([ds[3]])
    assert empty["pixel_values"] is None and empty["video_ids"] == [] and len(empty["skipped"]) == 1


def test_slow_decode_is_skipped_after_the_timeout(clips, monkeypatch):
    import ds_videocap.video as video

    monkeypatch.setattr(video, "_read_decord", lambda *a: time.sleep(5))
    ds = VideoCaptionDataset(clips, cfg(decode_timeout_s=0.2), train=False)
    start = time.time()
    s = ds[0]
    assert "longer than 0.2" in s["skipped"] and time.time() - start < 2


def test_loader_with_workers_skips_and_times_out(clips, monkeypatch):
    import ds_videocap.video as video

    real = video._read_decord

    def stall_on_v1(path, *args):  # forked workers inherit the patch
        if path.endswith("v1.mp4"):
            time.sleep(5)
        return real(path, *args)

    monkeypatch.setattr(video, "_read_decord", stall_on_v1)
    ds = VideoCaptionDataset(clips, cfg(decode_timeout_s=0.5), train=False)
    loader, sampler = build_loader(ds, batch_size=4, shuffle=False, num_workers=1)
    (batch,) = list(loader)
    assert batch["video_ids"] == ["v0", "v2"]
    assert sorted(s["video_id"] for s in batch["skipped"]) == ["gone", "v1"]
    assert sampler.position == 4


class TinySet(torch.utils.data.Dataset):
    """Index-only samples: sampler and resume tests need no decoding."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i % 7 == 3:
            return {"skipped": "bad", "video_id": str(i), "video": f"{i}.mp4", "index": i}
        return {"pixel_values": torch.zeros(1), "video_id": str(i), "video": f"{i}.mp4", "index": i,
                "caption": "c", "references": ["c"]}


def consumed(batch):
    return batch["indices"] + [s["index"] for s in batch["skipped"]]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_yields_exactly_the_remaining_indices(workers):
    n, world, rank = 23, 2, 1
    loader, sampler = build_loader(TinySet(n), 3, rank, world, seed=5, num_workers=workers)
    sampler.set_epoch(2)
    full = sampler.epoch_indices()
    seen = []
    for k, batch in enumerate(loader):
        seen += consumed(batch)
        if k == 1:
            break  # workers have prefetched more than this; only handed-over batches count
    state = sampler.state_dict()
    assert state["epoch"] == 2 and state["position"] == 6
    loader2, sampler2 = build_loader(TinySet(n), 3, rank, world, seed=5, num_workers=0)
    sampler2.load_state_dict(state)
    sampler2.set_epoch(2)  # a resumed loop announcing the same epoch keeps the position
    rest = [i for batch in loader2 for i in consumed(batch)]
    # (within a batch the collate lists decoded samples before skipped ones, hence sorted)
    assert sorted(seen) == sorted(full[:6]) and sorted(rest) == sorted(full[6:]) and len(rest) == len(full) - 6
    sampler2.set_epoch(3)
    assert sampler2.position == 0 and len(list(loader2)) == 4


def test_shuffle_is_deterministic_and_training_shards_are_even():
    a = ResumableDistributedSampler(10, 0, 1, seed=1)
    b = ResumableDistributedSampler(10, 0, 1, seed=1)
    assert list(a) == list(b) and sorted(a) == list(range(10))
    a.set_epoch(1)
    assert list(a) != list(b)
    shards = [list(ResumableDistributedSampler(10, r, 4, seed=0)) for r in range(4)]
    assert {len(s) for s in shards} == {3} and set().union(*shards) == set(range(10))
    dropped = [list(ResumableDistributedSampler(10, r, 4, seed=0, drop_last=True)) for r in range(4)]
    assert {len(s) for s in dropped} == {2} and len(set().union(*dropped)) == 8
    tiny = [list(ResumableDistributedSampler(2, r, 5, shuffle=False)) for r in range(5)]
    assert tiny == [[0], [1], [0], [1], [0]]


@pytest.mark.parametrize("n,world", [(10, 3), (2, 4), (0, 2), (9, 3)])
def test_eval_shards_are_disjoint_and_complete(n, world):
    shards = [shard_indices(n, r, world) for r in range(world)]
    flat = [i for s in shards for i in s]
    assert sorted(flat) == list(range(n)) and len(flat) == len(set(flat))
    samplers = [ResumableDistributedSampler(n, r, world, shuffle=True, even=False) for r in range(world)]
    flat = [i for s in samplers for i in s]
    assert sorted(flat) == list(range(n))


def test_resume_with_other_world_size_is_refused():
    state = ResumableDistributedSampler(10, 0, 2).state_dict()
    with pytest.raises(UserError, match="'world' was 2"):
        ResumableDistributedSampler(10, 0, 4).load_state_dict(state)


def test_skip_tracker_reports_and_enforces_the_limit():
    tracker = SkipTracker(max_fraction=0.25)
    tracker.add({"indices": [0, 1, 2], "skipped": [{"video": "a.mp4", "reason": "bad"}]})
    assert [s["video"] for s in tracker.epoch_report()] == ["a.mp4"]
    tracker.add({"indices": [0], "skipped": [{"video": "b.mp4", "reason": "bad"}]})
    with pytest.raises(UserError, match="1 of 2 videos skipped.*b.mp4"):
        tracker.epoch_report()
    early = SkipTracker(max_fraction=0.1, epoch_size=10)
    early.add([{"video": "c.mp4", "reason": "x"}], seen=1)
    with pytest.raises(UserError, match="2 of 10"):
        early.add([{"video": "d.mp4", "reason": "x"}], seen=1)
    assert len(early.all_skipped) == 2


def test_persistent_workers_follow_the_epoch(clips):
    ds = VideoCaptionDataset(clips[:2], cfg(), train=True, seed=3)
    loader, sampler = build_loader(ds, 2, shuffle=False, num_workers=1)

    def pixels(epoch):
        sampler.set_epoch(epoch)
        (batch,) = list(loader)
        return batch["pixel_values"]

    first = pixels(0)
    assert not torch.equal(first, pixels(1))
    assert torch.equal(first, pixels(0))
    assert torch.equal(first[0], ds[(0, 0)]["pixel_values"])


@pytest.mark.parametrize("sampling", ["random_segment", "headtail", "uniform"])
def test_frame_cache_gives_the_decoded_pixels(clips, sampling):
    """data.cache_mb: samples from kept whole clips equal freshly decoded ones, epoch after epoch."""
    plain = VideoCaptionDataset(clips[:3], cfg(train_sampling=sampling), train=True, seed=3)
    cached = VideoCaptionDataset(clips[:3], cfg(train_sampling=sampling, cache_mb=64), train=True, seed=3)
    for epoch in range(3):
        for index in range(3):
            a, b = plain[(index, epoch)], cached[(index, epoch)]
            assert torch.equal(a["pixel_values"], b["pixel_values"]) and a["caption"] == b["caption"]
    assert len(cached.cache) == 3 and cached.cached_bytes == sum(c.nbytes for c in cached.cache.values())
    assert next(iter(cached.cache.values())).shape[1:] == (32, 32, 3)


def test_frame_cache_stays_within_its_budget_and_still_skips_bad_videos(clips):
    one_clip = 8 * 32 * 32 * 3  # clip v0: 8 frames of 32x32 RGB
    ds = VideoCaptionDataset(clips, cfg(cache_mb=1.5 * one_clip / 2**20), train=True)
    samples = [ds[(i, 0)] for i in range(4)]
    assert list(ds.cache) == [clips[0].video] and ds.cached_bytes == one_clip  # v1, v2 do not fit
    assert ds.cache_full  # v1 did not fit, so v2 and the rest were decoded without the cache
    assert all("pixel_values" in s for s in samples[:3]) and "not found" in samples[3]["skipped"]
    decoded = VideoCaptionDataset(clips, cfg(), train=True)
    assert torch.equal(ds[(1, 1)]["pixel_values"], decoded[(1, 1)]["pixel_values"])

