"""One self-critical (SCST) update: rollout (generate + CIDEr-D reward, BLEU-4 mixed in on request) then the
policy-gradient loss.

generate() runs without grad inside the generation context (ZeRO-3 parameters gathered once);
the log-probs of the sampled captions are then recomputed WITH gradient through the engine.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .bleu_reward import bleu4
from .generation import generation_context
from .scst_advantage import compute_advantages


def compute_baseline(rewards: np.ndarray, mode: str, greedy_rewards: np.ndarray | None = None) -> np.ndarray:
    """rewards (B, K) -> baseline (B, K).

    mean_others: the mean of the other K-1 samples (advantages of a video sum to zero);
    greedy: the greedy caption's reward (classic SCST); beam_mean: the mean of all beams (the study).
    """
    k = rewards.shape[1]
    if mode == "greedy":
        return np.repeat(greedy_rewards.reshape(-1, 1), k, axis=1)
    if mode == "mean_others":
        baseline = (rewards.sum(axis=1, keepdims=True) - rewards) / (k - 1)
    elif mode == "beam_mean":
        baseline = np.repeat(rewards.mean(axis=1, keepdims=True), k, axis=1)
    else:
        raise ValueError(f"unknown SCST baseline {mode!r}")
    # Equal rewards carry no signal: make their advantage exactly zero, not float round-off.
    flat = np.ptp(rewards, axis=1) == 0
    baseline[flat] = rewards[flat]
    return baseline


def policy_loss(logprobs: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor,
                length_norm: bool) -> torch.Tensor:
    """-(advantage x sum of token log-probs), tokens after the end of the caption masked out.

    Averaged over samples; with length_norm each sample's sum is divided by its length first.
    """
    mask = mask.to(logprobs.dtype)
    seq_logprob = (logprobs * mask).sum(dim=1)
    if length_norm:
        seq_logprob = seq_logprob / mask.sum(dim=1).clamp(min=1)
    return -(advantages.to(logprobs.dtype) * seq_logprob).mean()


def rollout(engine, pixel_values: torch.Tensor, cfg, want_greedy: bool):
    """Sampled (or beam) captions for every video, and the greedy ones when the baseline needs them."""
    k = cfg.samples
    with generation_context(engine, gather=cfg.gather_for_generation) as (model, synced):
        if cfg.baseline == "beam_mean":
            samples = model.generate(pixel_values, num_beams=k, num_return_sequences=k,
                                     max_new_tokens=cfg.max_new_tokens, synced_gpus=synced)
        else:
            samples = model.generate(pixel_values, do_sample=True, num_return_sequences=k,
                                     temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                                     max_new_tokens=cfg.max_new_tokens, synced_gpus=synced)
        greedy = None
        if want_greedy:
            greedy = model.generate(pixel_values, num_beams=1, max_new_tokens=cfg.max_new_tokens,
                                    synced_gpus=synced)
    return samples, greedy


def caption_rewards(ctx, captions: list[str], references: list[list[str]]) -> np.ndarray:
    """CIDEr-D of each caption, plus scst.reward_bleu4 x its BLEU-4 when that is set."""
    rewards = ctx.reward.score(captions, references)
    if ctx.scst.reward_bleu4:
        rewards = rewards + ctx.scst.reward_bleu4 * bleu4(captions, references)
    return rewards


def scst_step(engine, batch: dict, ctx):
    """Rollout, reward, policy-gradient loss -> (loss, metrics); fit() does backward and step."""
    cfg, model = ctx.scst, engine.module
    pixel_values = batch["pixel_values"].to(ctx.device, ctx.dtype)
    k = cfg.samples
    started = time.perf_counter()
    samples, greedy = rollout(engine, pixel_values, cfg, want_greedy=cfg.baseline == "greedy")
    rollout_ms = 1000 * (time.perf_counter() - started)

    captions = model.decode(samples)
    references = [refs for refs in batch["references"] for _ in range(k)]
    rewards = caption_rewards(ctx, captions, references).reshape(-1, k)
    greedy_rewards = caption_rewards(ctx, model.decode(greedy), batch["references"]) if greedy is not None else None
    baseline = compute_baseline(rewards, cfg.baseline, greedy_rewards)
    advantages = torch.as_tensor(compute_advantages(rewards, baseline, cfg.advantage).reshape(-1), device=ctx.device)

    if cfg.ce_weight:  # the CE term in the same forward: the videos are encoded once for both terms
        # batch["captions"]: the reference the CE phase would train on (one drawn per clip and epoch)
        inputs = {n: v.to(ctx.device) for n, v in model.encode_text(batch["captions"]).items()}
        logprobs, mask, ce_loss = engine(pixel_values=pixel_values, sequences=samples.to(ctx.device), **inputs)
        loss = policy_loss(logprobs, mask, advantages, cfg.length_norm) + cfg.ce_weight * ce_loss
    else:
        logprobs, mask = engine(pixel_values=pixel_values, sequences=samples.to(ctx.device))
        loss = policy_loss(logprobs, mask, advantages, cfg.length_norm)
    with torch.no_grad():
        token_mask = mask.to(logprobs.dtype)
        entropy_proxy = -(logprobs.detach() * token_mask).sum() / token_mask.sum().clamp(min=1)
    metrics = {
        "reward": float(rewards.mean()),
        "baseline": float(baseline.mean()),
        "advantage_std": float((rewards - baseline).std()),
        "sample_len": float(mask.sum(dim=1).float().mean()),
        "entropy": float(entropy_proxy),
        "rollout_ms": rollout_ms,
    }
    if not np.isfinite(rewards).all():  # the loss is non-finite too: the log names the cause
        metrics["nonfinite"] = "reward"
    return loss, metrics
