"""Evaluation during training: greedy validation (its CIDEr picks the best checkpoint) and the test
split after each phase, decoded inside the engine's generation context on every rank.
"""
from __future__ import annotations

from dataclasses import replace

from .engine import broadcast_float
from .evaluate import decode_clips, decode_kwargs, score_split
from .generation import generation_context
from .metrics import start_meteor


class RunEvaluator:
    def __init__(self, cfg, engine, clips: dict, device, dtype, rank: int):
        self.cfg, self.engine, self.clips = cfg, engine, clips
        self.device, self.dtype, self.rank = device, dtype, rank
        self.skipped: list = []
        """Videos that could not be decoded for validation or test (every rank's)."""

    def decode(self, clips, greedy: bool) -> dict:
        if self.rank == 0:
            start_meteor()  # rank 0 scores: its METEOR JVM loads while the captions decode (once per run)
        data_cfg = replace(self.cfg.data, num_workers=min(self.cfg.data.num_workers, 1))
        context = generation_context(self.engine, self.cfg.scst.gather_for_generation)
        captions, skipped = decode_clips(context, clips, data_cfg, decode_kwargs(self.cfg.eval, greedy=greedy),
                                         self.cfg.eval.batch_size, self.device, self.dtype)
        self.skipped.extend(skipped)
        return captions

    def validate(self) -> tuple[dict, float | None]:
        """(scores on rank 0, {} elsewhere; validation CIDEr on every rank, None without a val split)."""
        if not self.clips["val"]:
            return {}, None
        captions = self.decode(self.clips["val"], greedy=self.cfg.eval.val_num_beams == 1)
        scores = score_split(captions, self.clips["val"]) if self.rank == 0 else {}
        return scores, broadcast_float(scores.get("CIDEr", 0.0))

    def test(self) -> tuple[dict, dict] | None:
        """(captions, scores) of the test split with the final decoding settings; scores on rank 0 only."""
        if not self.clips["test"]:
            return None
        captions = self.decode(self.clips["test"], greedy=False)
        return captions, (score_split(captions, self.clips["test"]) if self.rank == 0 else {})
