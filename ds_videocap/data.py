"""Dataset, collate, a resumable distributed sampler, the loader, and skipped-video accounting.

Decoding runs in DataLoader workers. A video that fails to decode, has no frames or stalls past
`data_cfg.decode_timeout_s` comes back as a skipped sample: the collate drops it and keeps the rest of
the batch, and SkipTracker stops the run when too many of an epoch's videos are skipped.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from .captions import training_references
from .engine import gather_objects
from .errors import UserError
from .video import CLIP_MEAN, CLIP_STD, VideoDecodeError, frames_to_tensor, read_frames, sample_indices


class VideoCaptionDataset(Dataset):
    """Clip records -> CLIP-normalised frames and normalised captions.

    Randomness (frame sampling, crop, flip, which reference) is drawn from (seed, epoch, index), so a
    resumed run sees the same augmentation. The loader asks for (index, epoch) keys, so persistent
    workers follow the epoch; a plain int index uses `self.epoch`.

    With data_cfg.cache_mb > 0 each process (each DataLoader worker) keeps whole decoded clips, up to
    that many MiB, and samples frames from them: the same frames and pixels as decoding them anew, for
    no decoding after the first epochs. For small sets trained over many epochs (the synthetic default);
    once a clip does not fit, clips not yet kept are decoded as without the cache.
    """

    epoch_keys = True  # build_loader hands this dataset (index, epoch) keys

    def __init__(self, clips: list, data_cfg, train: bool, seed: int = 0, decode_threads: int = 1):
        self.clips = list(clips)
        self.cfg = data_cfg
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.decode_threads = decode_threads
        self.cache_bytes = int(data_cfg.cache_mb * 2**20)
        self.cache: dict[str, np.ndarray] = {}  # video path -> every frame, uint8 (N, size, size, 3)
        self.cached_bytes = 0
        self.cache_full = False  # a clip did not fit: the rest are decoded as without the cache
        # Load the decoder library here, before DataLoader forks its workers: each worker importing
        # it on its first clip costs a quarter of a second per worker.
        __import__("decord" if data_cfg.backend == "decord" else "av")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key) -> dict:
        index, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        clip = self.clips[index]
        cfg = self.cfg
        rng = np.random.default_rng([self.seed, epoch, index])
        head = {"video_id": clip.video_id, "video": clip.video, "index": index}
        mode = cfg.train_sampling if self.train else cfg.eval_sampling
        try:
            frames = self._frames(clip.video, mode, rng)
        except VideoDecodeError as err:
            return {"skipped": str(err), **head}
        pixels = frames_to_tensor(frames, augment=self.train and cfg.augment, rng=rng,
                                  mean=cfg.image_mean or CLIP_MEAN, std=cfg.image_std or CLIP_STD)
        refs = training_references(clip.captions, cfg.max_words)
        caption = refs[int(rng.integers(len(refs)))] if self.train else refs[0]
        return {"pixel_values": pixels, "caption": caption, "references": refs, **head}

    def _frames(self, video: str, mode: str, rng) -> np.ndarray:
        cfg = self.cfg
        decode = dict(backend=cfg.backend, timeout_s=cfg.decode_timeout_s, threads=self.decode_threads)
        clip = self.cache.get(video)
        if clip is None:
            # Once full, a whole-clip decode (of a long real video, say) would only be thrown away.
            if not self.cache_bytes or self.cache_full:
                return read_frames(video, mode, cfg.frames, cfg.image_size, rng=rng, **decode)
            clip = read_frames(video, "all", 1, cfg.image_size, **decode)
            if self.cached_bytes + clip.nbytes <= self.cache_bytes:
                self.cache[video] = clip
                self.cached_bytes += clip.nbytes
            else:
                self.cache_full = True
        # The same draws from rng as read_frames makes, so cached and decoded runs see the same frames.
        return clip[sample_indices(mode, len(clip), cfg.frames, rng)]


def collate_clips(samples: list) -> dict:
    """Stack the decoded samples; list the skipped ones (the batch shrinks, it is never dropped)."""
    kept = [s for s in samples if "skipped" not in s]
    return {
        # default_collate stacks straight into shared memory inside a worker: one copy fewer.
        "pixel_values": default_collate([s["pixel_values"] for s in kept]) if kept else None,
        "video_ids": [s["video_id"] for s in kept],
        "videos": [s["video"] for s in kept],
        "indices": [s["index"] for s in kept],
        "captions": [s["caption"] for s in kept],
        "references": [s["references"] for s in kept],
        "skipped": [{"video": s["video"], "video_id": s["video_id"], "index": s["index"], "reason": s["skipped"]}
                    for s in samples if "skipped" in s],
    }


def shard_indices(n: int, rank: int, world: int) -> list:
    """Evaluation shard: rank r takes r, r+world, ...; disjoint, complete, nothing duplicated."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world size {world}")
    return list(range(rank, n, world))


class ResumableDistributedSampler(Sampler):
    """Per-rank indices for one epoch; shuffled from (seed, epoch); resumable mid-epoch.

    `position` counts this rank's samples consumed in the epoch (advanced by the loader that
    build_loader returns, as batches reach the caller, so prefetched batches do not count). A
    resumed run yields exactly the indices that were not yet consumed.
    even=True (training): pad by wrapping (or drop the tail when drop_last) so every rank gets the same
    count. even=False (evaluation): disjoint shards, sizes differ by at most one.
    """

    def __init__(self, n: int, rank: int = 0, world: int = 1, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False, even: bool = True, order=None):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world size {world}")
        self.n, self.rank, self.world, self.seed = n, rank, world, seed
        self.shuffle, self.drop_last, self.even = shuffle, drop_last, even
        self.epoch = 0
        self.position = 0
        # order(epoch) -> the epoch's global index order (mixing.mixed_epoch_order); default: a permutation
        self.order = order

    def set_epoch(self, epoch: int) -> None:
        # The same epoch again (a resumed run re-announcing it) keeps the restored position.
        if epoch != self.epoch:
            self.position = 0
        self.epoch = epoch

    def epoch_indices(self) -> list:
        """This rank's full list for the current epoch (consumed ones included)."""
        order = list(range(self.n))
        if self.order is not None:
            order = self.order(self.epoch)
        elif self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n).tolist()
        if not self.even:
            return [order[i] for i in shard_indices(self.n, self.rank, self.world)]
        if self.drop_last:
            order = order[: self.n // self.world * self.world]
        elif self.n and self.n % self.world:
            pad = self.world - self.n % self.world
            order += (order * (pad // self.n + 1))[:pad]
        return order[self.rank::self.world]

    def __len__(self) -> int:
        return len(self.epoch_indices())

    def __iter__(self):
        indices = self.epoch_indices()
        if self.position >= len(indices):  # a finished epoch iterated again starts over
            self.position = 0
        return iter(indices[self.position:])

    def advance(self, count: int) -> None:
        self.position += count

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "n": self.n, "world": self.world,
                "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        for key in ("n", "world", "seed"):
            if key in state and state[key] != getattr(self, key):
                raise UserError(f"sampler state: '{key}' was {state[key]} when saved, is {getattr(self, key)} "
                                f"now; resume with the same data, world size and seed (or start the epoch over)")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])


class _EpochBatches(Sampler):
    """Batches of (index, epoch) keys: the epoch travels with each index to persistent workers.
    Datasets without `epoch_keys` get plain indices."""

    def __init__(self, sampler: ResumableDistributedSampler, batch_size: int, drop_last: bool, keys: bool):
        self.sampler, self.batch_size, self.drop_last, self.keys = sampler, batch_size, drop_last, keys

    def __iter__(self):
        batch = []
        for index in self.sampler:
            batch.append((index, self.sampler.epoch) if self.keys else index)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


class _CountingLoader(DataLoader):
    """Advances the sampler's position as each batch is handed to the caller."""

    def __iter__(self):
        sampler = self.batch_sampler.sampler
        for batch in super().__iter__():
            sampler.advance(len(batch["indices"]) + len(batch["skipped"]))
            yield batch
        # A partial batch dropped by drop_last still counts as the end of the epoch.
        sampler.position = max(sampler.position, len(sampler))


def _init_worker(worker_id: int) -> None:
    # Each worker decodes one clip at a time; intra-op threads would oversubscribe the cores.
    torch.set_num_threads(1)


def build_loader(dataset, batch_size: int, rank: int = 0, world: int = 1, seed: int = 0, shuffle: bool = True,
                 num_workers: int = 2, drop_last: bool = False, even: bool = True, prefetch_factor: int = 2,
                 order=None):
    """-> (DataLoader, sampler). Call sampler.set_epoch(e) before each epoch; save/load sampler.state_dict().

    even=False gives evaluation shards (nothing duplicated or dropped; ranks may differ by one sample).
    """
    sampler = ResumableDistributedSampler(len(dataset), rank, world, seed, shuffle, drop_last, even, order)
    keys = getattr(dataset, "epoch_keys", False)
    # Persistent workers: starting them costs more than a small epoch's decoding.
    workers = dict(num_workers=num_workers, worker_init_fn=_init_worker, prefetch_factor=prefetch_factor,
                   persistent_workers=True) if num_workers > 0 else dict(num_workers=0)
    # Its own generator: drawing worker seeds from the global RNG would shift dropout masks between
    # an uninterrupted run and a resumed one (the iterator is created at different points).
    loader = _CountingLoader(dataset, batch_sampler=_EpochBatches(sampler, batch_size, drop_last, keys),
                             collate_fn=collate_clips, pin_memory=torch.cuda.is_available(),
                             generator=torch.Generator().manual_seed(seed), **workers)
    return loader, sampler


class SkipTracker:
    """Counts skipped videos per epoch, keeps them all for the run summary, enforces the limit."""

    def __init__(self, max_fraction: float, epoch_size: int | None = None):
        self.max_fraction = max_fraction
        self.epoch_size = epoch_size
        self.seen = 0
        self.epoch_skipped: list = []
        self.all_skipped: list = []

    def add(self, skipped, seen: int | None = None) -> None:
        """`skipped`: a collated batch (its "skipped" list and size are read) or a list of skips."""
        if isinstance(skipped, dict):
            seen = len(skipped["indices"]) + len(skipped["skipped"])
            skipped = skipped["skipped"]
        self.seen += seen if seen is not None else len(skipped)
        self.epoch_skipped.extend(skipped)
        self.all_skipped.extend(skipped)
        # Fail fast once the epoch can no longer stay under the limit.
        if self.epoch_size and len(self.epoch_skipped) > self.max_fraction * self.epoch_size:
            self._fail(self.epoch_size)

    def epoch_report(self) -> list:
        """The epoch's skipped videos; raises UserError when their fraction exceeds the limit."""
        skipped, total = self.epoch_skipped, max(self.seen, self.epoch_size or 0)
        if total and len(skipped) > self.max_fraction * total:
            self._fail(total)
        self.epoch_skipped, self.seen = [], 0
        return skipped

    def merge_ranks(self) -> None:
        """Give every rank the union of all ranks' skipped videos (a collective: every rank calls it).
        Each rank decodes its own shard, and rank 0 alone writes summary.json."""
        parts = gather_objects(self.all_skipped)
        self.all_skipped = list({s["video"]: s for part in parts for s in part}.values())

    def _fail(self, total: int) -> None:
        # Decode errors already start with the path; name each video once.
        examples = "; ".join(s["reason"] if s["reason"].startswith(str(s["video"])) else f"{s['video']}: {s['reason']}"
                             for s in self.epoch_skipped[:3])
        raise UserError(f"{len(self.epoch_skipped)} of {total} videos skipped this epoch, more than "
                        f"data.max_skipped_fraction={self.max_fraction:g} (run `ds-videocap data check`); "
                        f"e.g. {examples}")


def blank_batch(frames: int, image_size: int) -> dict:
    """A zero-weight stand-in for a rank that has no decodable video to offer but must keep step with
    the others' collectives (training with every video of a micro-batch skipped, or a decode shard
    that ran out first under per-layer synced ZeRO-3 generation)."""
    return {"pixel_values": torch.zeros(1, frames, 3, image_size, image_size), "video_ids": [], "videos": [],
            "indices": [], "captions": [""], "references": [[""]], "skipped": []}
