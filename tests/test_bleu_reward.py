"""scst.reward_bleu4: each caption's BLEU-4 is pycocoevalcap's own per-caption figure, and SCST's reward is
CIDEr-D plus that much of it."""
from types import SimpleNamespace

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu

from ds_videocap.bleu_reward import bleu4
from ds_videocap.reward import CiderD
from ds_videocap.scst import caption_rewards

REFS = [["a red ball moves to the left", "a red circle slides left", "the red ball goes left"],
        ["a blue square grows", "a blue box becomes larger"],
        ["a green wedge falls down", "a green triangle drops"]]
CAPTIONS = ["A red ball slides left.", "a blue box becomes larger", "a purple circle stays"]


def test_bleu4_is_pycocoevalcaps_per_caption_figure():
    mine = bleu4(CAPTIONS + [""], REFS + [REFS[0]])
    gts = {i: [r.lower().replace(".", "") for r in refs] for i, refs in enumerate(REFS)}
    res = {i: [c.lower().replace(".", "")] for i, c in enumerate(CAPTIONS)}
    _, per_order = Bleu(4).compute_score(gts, res, verbose=0)
    np.testing.assert_allclose(mine[:3], per_order[3], rtol=1e-12)
    assert mine[1] > mine[0] > mine[2] >= 0 and mine[3] == pytest.approx(0.0, abs=1e-9)  # "" names nothing
    with pytest.raises(ValueError, match="2 captions but 1 reference sets"):
        bleu4(CAPTIONS[:2], REFS[:1])


@pytest.mark.parametrize("weight", [0.0, 1.0, 2.5])
def test_scst_reward_adds_the_weighted_bleu4(weight):
    cider = CiderD.from_corpus([refs for refs in REFS])
    ctx = SimpleNamespace(reward=cider, scst=SimpleNamespace(reward_bleu4=weight))
    mixed = caption_rewards(ctx, CAPTIONS, REFS)
    np.testing.assert_allclose(mixed, cider.score(CAPTIONS, REFS) + weight * bleu4(CAPTIONS, REFS), rtol=1e-12)
