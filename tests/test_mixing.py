import numpy as np
import pytest

from ds_videocap.data import ResumableDistributedSampler
from ds_videocap.errors import UserError
from ds_videocap.mixing import SourceCounter, mixed_epoch_order, read_sources


def test_draws_follow_the_ratios_and_stay_in_each_source():
    sizes, ratios = [100, 700], [1.0, 7.0]
    order = np.array(mixed_epoch_order(sizes, ratios, seed=3, epoch=0))
    assert len(order) == 800 and order.min() >= 0 and order.max() < 800
    share = (order < 100).mean()
    assert share == pytest.approx(1 / 8, abs=0.03)


def test_small_source_is_reshuffled_not_truncated():
    order = np.array(mixed_epoch_order([5, 95], [1.0, 1.0], seed=0, epoch=0))
    small = order[order < 5]
    assert len(small) > 5 * 5  # drawn ~50 times from 5 clips: every clip many times
    assert set(small.tolist()) == set(range(5))
    big = order[order >= 5]
    assert len(set(big.tolist())) == len(big)  # the large source is not exhausted: no repeats


def test_order_is_a_function_of_seed_and_epoch():
    a = mixed_epoch_order([10, 20], [1, 2], seed=1, epoch=4)
    assert a == mixed_epoch_order([10, 20], [1, 2], seed=1, epoch=4)
    assert a != mixed_epoch_order([10, 20], [1, 2], seed=1, epoch=5)
    assert a != mixed_epoch_order([10, 20], [1, 2], seed=2, epoch=4)


def test_mixed_sampler_resumes_exactly():
    order = lambda epoch: mixed_epoch_order([10, 30], [1, 3], seed=0, epoch=epoch)  # noqa: E731
    full = ResumableDistributedSampler(40, rank=1, world=2, seed=0, order=order)
    full.set_epoch(2)
    expected = list(full)
    resumed = ResumableDistributedSampler(40, rank=1, world=2, seed=0, order=order)
    resumed.load_state_dict({"epoch": 2, "position": 7})
    assert list(resumed) == expected[7:]


def test_source_counter_and_source_checks():
    counter = SourceCounter(["webvid", "msrvtt"], [3, 5])
    assert counter.count([0, 2, 3, 7, 7], {}) == {"webvid": 2, "msrvtt": 3}
    assert [s.name for s in read_sources([{"train": "a.json", "ratio": 1}, {"train": "b", "ratio": 7}], "r")] == \
        ["source0", "source1"]
    with pytest.raises(UserError, match=r"data.sources\[1\].ratio"):
        read_sources([{"train": "a.json"}, {"train": "b", "ratio": 0}], "r")
    with pytest.raises(UserError, match="unknown keys"):
        read_sources([{"train": "a.json", "weight": 2}], "r")
    with pytest.raises(UserError, match="unique"):
        read_sources([{"train": "a", "name": "x"}, {"train": "b", "name": "x"}], "r")
