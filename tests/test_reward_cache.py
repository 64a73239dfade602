"""The CIDEr-D document-frequency cache in the run folder: keyed to the training references (a run whose
training data changed never reads another corpus's frequencies) and written atomically."""
from types import SimpleNamespace

import numpy as np

from ds_videocap.annotations import Clip
from ds_videocap.prepare import build_reward


def clips(captions):
    return [Clip(video_id=str(i), video=f"v{i}.mp4", captions=c, split="train") for i, c in enumerate(captions)]


def test_cache_is_keyed_to_the_training_references(tmp_path):
    cfg = SimpleNamespace(output_dir=str(tmp_path))
    first = [["a red circle moves left", "a red disc goes left"], ["a blue square grows"]]
    second = [["a green triangle shrinks"], ["a blue square grows", "a blue box gets bigger"]]
    reward_a = build_reward(cfg, clips(first))
    reward_b = build_reward(cfg, clips(second))  # same folder, other data: must not reuse the first cache
    caches = sorted(p.name for p in tmp_path.iterdir())
    assert len(caches) == 2 and all(n.startswith("cider_df-") and n.endswith(".json") for n in caches)
    assert reward_a.document_frequency != reward_b.document_frequency
    again = build_reward(cfg, clips(second))  # read back from its cache
    assert again.document_frequency == reward_b.document_frequency
    candidate, refs = ["a blue square shrinks"], [["a blue square grows", "a green triangle shrinks"]]
    np.testing.assert_allclose(again.score(candidate, refs), reward_b.score(candidate, refs), rtol=1e-12)
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # written through a renamed temporary
