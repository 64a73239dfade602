"""Still frames with still captions ("a red ball", "a red ball and a blue box") for tune_tiny.py's
still-image experiments: a stage before the video CE (--stills-steps), or stills mixed into each
video batch as static clips (--mix-stills). benchmarks/README.md, "Still frames before video".

The stills are frames of freshly drawn synthetic clips (ds_videocap.synth.render_clip with a seed no
split uses), so no still is seen twice and none shows a test clip; a still caption names what one
frame can show (colour and shape, never motion), with the shape words' paraphrases drawn at random.
"""
from __future__ import annotations

import numpy as np

from ds_videocap.synth import render_clip
from ds_videocap.synth_captions import still_caption as caption_of_still

STILLS_SEED = 999  # not the set's seed: fresh clips


def still_caption(rng: np.random.Generator, objects: list[dict]) -> str:
    return caption_of_still(rng, [(o["color"], o["shape"]) for o in objects])


class StillStream:
    """Draws (frames (N, 32, 32, 3) uint8, captions) batches: one random frame of each fresh clip."""

    def __init__(self, rng: np.random.Generator, start: int = 10**6):
        self.rng, self.index = rng, start

    def draw(self, count: int) -> tuple[np.ndarray, list[str]]:
        frames, captions = [], []
        for _ in range(count):
            self.index += 1
            clip, objects = render_clip(self.index, STILLS_SEED)
            frames.append(clip[self.rng.integers(len(clip))])
            captions.append(still_caption(self.rng, objects))
        return np.stack(frames), captions
