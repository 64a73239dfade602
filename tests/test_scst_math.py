import numpy as np
import pytest
import torch

from ds_videocap.scst import compute_baseline, policy_loss


def test_mean_others_advantages_sum_to_zero():
    rng = np.random.default_rng(0)
    rewards = rng.random((6, 5))
    adv = rewards - compute_baseline(rewards, "mean_others")
    assert np.allclose(adv.sum(axis=1), 0.0)
    # each baseline is the mean of the other four samples
    assert compute_baseline(rewards, "mean_others")[2, 1] == pytest.approx(np.delete(rewards[2], 1).mean())


def test_greedy_and_beam_mean_baselines():
    rewards = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 3.0]])
    assert np.allclose(compute_baseline(rewards, "greedy", np.array([0.5, 1.0])), [[0.5] * 3, [1.0] * 3])
    assert np.allclose(compute_baseline(rewards, "beam_mean"), [[2.0] * 3, [1.0] * 3])


def test_zero_loss_and_no_nan_when_all_samples_are_equal():
    rewards = np.full((3, 4), 0.7)
    adv = torch.as_tensor((rewards - compute_baseline(rewards, "mean_others")).reshape(-1))
    logprobs = torch.randn(12, 6, requires_grad=True)
    mask = torch.ones(12, 6)
    for norm in (False, True):
        loss = policy_loss(logprobs, mask, adv, length_norm=norm)
        assert loss.item() == 0.0 and torch.isfinite(loss)
        loss.backward()
        assert torch.all(logprobs.grad == 0)


def test_policy_loss_masks_after_end_and_length_norm():
    logprobs = torch.tensor([[-1.0, -2.0, -100.0], [-1.0, -1.0, -1.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv = torch.tensor([1.0, -1.0])
    # summed: -(1*(-3) + (-1)*(-3)) / 2 = 0
    assert policy_loss(logprobs, mask, adv, length_norm=False).item() == pytest.approx(0.0)
    # normalised: -(1*(-1.5) + (-1)*(-1)) / 2 = 0.25
    assert policy_loss(logprobs, mask, adv, length_norm=True).item() == pytest.approx(0.25)
    policy_loss(logprobs, mask, adv, length_norm=False).backward()
    assert logprobs.grad[0, 2] == 0
