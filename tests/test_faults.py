"""Numerical faults and interrupted runs at the loop level: fit() with a stub engine and run.

Non-finite losses skip the update and are logged; max_nonfinite_steps in a row stop the run naming the
step and the videos; a micro-batch whose videos were all skipped still joins the step (zero weight);
a run stopped after a checkpoint and resumed from it consumes each sample of the epoch exactly once.
"""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from ds_videocap.config import SCSTCfg
from ds_videocap.data import SkipTracker, build_loader
from ds_videocap.errors import UserError
from ds_videocap.loop import NonFiniteError, Phase, StepContext, TrainState, fit


class TinySet(Dataset):
    """Index i -> a one-number 'video'; indices in `broken` come back skipped, as a bad video would."""

    def __init__(self, n, broken=()):
        self.n, self.broken = n, set(broken)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        head = {"video_id": f"v{i}", "video": f"v{i}.mp4", "index": i}
        if i in self.broken:
            return {"skipped": "cannot decode", **head}
        return {"pixel_values": torch.full((1,), float(i)), "caption": "c", "references": ["c"], **head}


class StubEngine:
    """Counts what fit() asks of the engine: backward and step once per finite micro-batch."""

    def __init__(self, accumulation=1):
        self.optimizer = SimpleNamespace(param_groups=[{"lr": 0.0}])
        self.monitor = None
        self.accumulation, self.backward_calls, self.step_calls = accumulation, 0, 0
        self.module = torch.nn.Linear(1, 1).eval()  # as from_pretrained hands a model over

    def gradient_accumulation_steps(self):
        return self.accumulation

    def backward(self, loss):
        self.backward_calls += 1

    def step(self):
        self.step_calls += 1


class StubRun(StepContext):
    """The loop's services with a stub engine; records what was said, logged and saved."""

    def __init__(self, tmp_path, rank=0, world=1, max_nonfinite=3, accumulation=1):
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.logged, self.said, self.saved = [], [], []
        super().__init__(engine=StubEngine(accumulation), rank=rank, world=world, device="cpu",
                         dtype=torch.float32, frame_shape=(2, 8), skips=SkipTracker(1.0), log=self.logged.append,
                         max_nonfinite=max_nonfinite)

    def say(self, text):
        self.said.append(text)

    def fit(self, phase):
        return fit(self, phase, TrainState(), validate=lambda *a: None, save=self.save)

    def save(self, phase, state):
        self.saved.append(json.loads(json.dumps(state.to_dict())))


def phase_cfg(save_every=0):
    return SimpleNamespace(warmup_steps=0, lr=1e-3, min_lr=0.0, log_every=1, eval_every=0, save_every=save_every)


def recording_step(losses=None):
    """A step function recording what it was fed; `losses` gives the loss of each call in turn."""
    calls = []

    def step(engine, batch, run):
        calls.append(batch)
        loss = losses[len(calls) - 1] if losses and len(calls) <= len(losses) else 1.0
        return torch.tensor(loss), {}
    return step, calls


def test_nonfinite_loss_skips_the_update_and_logs_it(tmp_path):
    run = StubRun(tmp_path)
    loader, sampler = build_loader(TinySet(12), 2, num_workers=0, drop_last=True, shuffle=False)
    step, calls = recording_step([1.0, float("nan"), float("inf"), 2.0])
    state = run.fit(Phase("ce", phase_cfg(), step, loader, sampler, 3))
    assert state.step == 3 and state.nonfinite_in_a_row == 0
    assert len(calls) == 5  # two skipped micro-batches did not count as steps
    assert run.engine.backward_calls == run.engine.step_calls == 3  # nothing ran for the NaN/inf ones
    skipped = [s for s in run.said if "non-finite" in s]
    assert len(skipped) == 2 and "step 2" in skipped[0] and "'v2', 'v3'" in skipped[0]
    logged = run.logged
    assert [r["step"] for r in logged] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in logged)
    assert logged[1]["loss"] == 2.0


def test_fit_trains_the_model_in_training_mode(tmp_path):
    run = StubRun(tmp_path)
    loader, sampler = build_loader(TinySet(4), 2, num_workers=0, drop_last=True, shuffle=False)
    modes = []

    def step(engine, batch, run):
        modes.append(engine.module.training)
        return torch.tensor(1.0), {}
    run.fit(Phase("ce", phase_cfg(), step, loader, sampler, 2))
    assert modes == [True, True]  # dropout on, and transformers' gradient checkpointing engaged


def test_n_nonfinite_in_a_row_stop_the_run_naming_step_and_videos(tmp_path):
    run = StubRun(tmp_path, max_nonfinite=3)
    loader, sampler = build_loader(TinySet(20), 2, num_workers=0, drop_last=True, shuffle=False)
    step, calls = recording_step([1.0] + [float("nan")] * 10)
    with pytest.raises(NonFiniteError) as err:
        run.fit(Phase("ce", phase_cfg(), step, loader, sampler, 8))
    assert isinstance(err.value, UserError)  # the CLI prints it as one line, no traceback
    text = str(err.value)
    assert "3 non-finite losses in a row" in text and "step 2" in text and "max_nonfinite_steps=3" in text
    assert "'v6', 'v7'" in text  # the last batch's videos
    assert len(calls) == 4


def test_all_skipped_first_batch_still_joins_with_zero_weight(tmp_path):
    run = StubRun(tmp_path)
    loader, sampler = build_loader(TinySet(8, broken={0, 1}), 2, num_workers=0, drop_last=True, shuffle=False)
    step, calls = recording_step()
    run.fit(Phase("ce", phase_cfg(), step, loader, sampler, 4))
    assert len(calls) == 4 and calls[0]["zero_weight"] and not calls[1].get("zero_weight")
    assert tuple(calls[0]["pixel_values"].shape) == (1, 2, 3, 8, 8)
    assert sorted(s["video"] for s in run.skips.all_skipped) == ["v0.mp4", "v1.mp4"]
    assert [r["step"] for r in run.logged] == [2, 3, 4]  # the stand-in's step logs nothing of its own


@pytest.mark.parametrize("rank", [0, 1])
def test_resume_after_a_kill_loses_and_repeats_no_sample(tmp_path, rank):
    n, world, micro = 26, 2, 3  # 13 per rank: 4 batches and a dropped tail of 1
    data = TinySet(n, broken={5, 17})  # skipped samples count as consumed too

    class Recording:
        """The loader, noting each handed-over batch's samples (decoded and skipped alike)."""

        def __init__(self, loader):
            self.loader, self.batches = loader, []

        def __iter__(self):
            for batch in self.loader:
                self.batches.append(batch["indices"] + [s["index"] for s in batch["skipped"]])
                yield batch

    # First run: checkpoint at step 2, then "killed" during step 3 (its work is lost).
    run = StubRun(tmp_path / "a", rank, world)
    loader, sampler = build_loader(data, micro, rank, world, seed=3, num_workers=0, drop_last=True)
    loader = Recording(loader)
    step, calls = recording_step()
    run.fit(Phase("ce", phase_cfg(save_every=2), step, loader, sampler, 3))
    at_checkpoint = run.saved[0]
    assert at_checkpoint["step"] == 2 and at_checkpoint["position"] == 2 * micro
    before = [i for b in loader.batches[:2] for i in b]

    # Resumed run: a fresh loader, the checkpoint's state, to the end of the epoch.
    run2 = StubRun(tmp_path / "b", rank, world)
    loader2, sampler2 = build_loader(data, micro, rank, world, seed=3, num_workers=0, drop_last=True)
    loader2 = Recording(loader2)
    step2, _ = recording_step()
    state = TrainState(**at_checkpoint)
    fit(run2, Phase("ce", phase_cfg(), step2, loader2, sampler2, 4), state, validate=lambda *a: None,
        save=run2.save)
    after = [i for b in loader2.batches for i in b]

    epoch = sampler2.epoch_indices()[: 4 * micro]  # what one uninterrupted epoch consumes
    assert sorted(before + after) == sorted(epoch) and len(before + after) == len(set(before + after))
    other = build_loader(data, micro, 1 - rank, world, seed=3, num_workers=0, drop_last=True)[1]
    assert not set(epoch) & set(other.epoch_indices())  # the two ranks' epochs are disjoint
    # Videos skipped before the checkpoint are still listed after the resume (the summary's list).
    broken = sorted(i for i in data.broken if i in epoch)
    assert broken and sorted(s["index"] for s in run2.skips.all_skipped) == broken


def test_nonfinite_micro_batch_keeps_the_gradients_accumulated_before_it(tmp_path):
    """With gradient accumulation, a NaN micro-batch is dropped alone: the step still takes
    `accumulation` good micro-batches, and nothing already accumulated is cleared (no zero_grad)."""
    run = StubRun(tmp_path, accumulation=2)
    run.engine.zero_grad = lambda: pytest.fail("fit() must not clear accumulated gradients")
    loader, sampler = build_loader(TinySet(12), 2, num_workers=0, drop_last=True, shuffle=False)
    step, calls = recording_step([1.0, float("nan"), 3.0, 4.0])
    state = run.fit(Phase("ce", phase_cfg(), step, loader, sampler, 2))
    assert state.step == 2 and len(calls) == 5
    assert run.engine.backward_calls == run.engine.step_calls == 4
    assert run.logged[0]["loss"] == 2.0  # the mean of the step's two good micro-batches (1 and 3)


class StubModel(torch.nn.Module):
    """generate -> K token rows per video; decode -> one caption per row."""

    def generate(self, pixel_values, num_return_sequences=1, **_):
        return torch.ones(pixel_values.shape[0] * num_return_sequences, 4, dtype=torch.long)

    def decode(self, sequences):
        return ["a dog runs"] * sequences.shape[0]


class StubSCSTEngine(StubEngine):
    def __init__(self):
        super().__init__()
        self.module, self.logprobs = StubModel(), None

    def zero_optimization_stage(self):
        return 0

    def __call__(self, pixel_values, sequences):
        self.logprobs = torch.full(sequences.shape, -0.5, requires_grad=True)
        return self.logprobs, torch.ones(sequences.shape)

    def backward(self, loss):
        super().backward(loss)
        loss.backward()


def scst_run(tmp_path, rewards):
    reward = SimpleNamespace(score=lambda captions, refs: np.asarray(rewards(len(captions)), dtype=float))
    run = StubRun(tmp_path, max_nonfinite=1)
    run.engine, run.scst, run.reward = StubSCSTEngine(), SCSTCfg(samples=3), reward
    return run


class OneBatch:
    """A loader of one SCST batch (a dog and a cat), with the sampler fit() expects."""

    def __init__(self):
        self.position = 0

    def __iter__(self):
        yield {"pixel_values": torch.zeros(2, 2, 3, 8, 8), "references": [["a dog runs"], ["a cat"]],
               "video_ids": ["v0", "v1"], "indices": [0, 1], "skipped": []}

    def __len__(self):
        return 1

    def load_state_dict(self, state):
        pass


def test_nan_reward_skips_the_scst_update_and_names_the_reward(tmp_path):
    from ds_videocap.scst import scst_step

    run = scst_run(tmp_path, lambda n: [0.5] * (n - 1) + [float("nan")])
    data = OneBatch()
    with pytest.raises(NonFiniteError):
        run.fit(Phase("scst", phase_cfg(), scst_step, data, data, 1))
    assert run.engine.backward_calls == 0 and run.engine.step_calls == 0
    assert any("non-finite reward" in s for s in run.said)


def test_flat_rewards_give_zero_loss_not_nan(tmp_path):
    from ds_videocap.scst import scst_step

    run = scst_run(tmp_path, lambda n: [0.3] * n)
    data = OneBatch()
    run.fit(Phase("scst", phase_cfg(), scst_step, data, data, 1))
    assert run.logged[0]["loss"] == 0.0 and run.logged[0]["advantage_std"] == 0.0
    assert run.engine.step_calls == 1 and torch.all(run.engine.logprobs.grad == 0)


def test_scst_ce_term_trains_on_the_reference_the_loader_drew(tmp_path):
    """SCST's CE term (scst.ce_weight) takes batch["captions"], the reference drawn per clip and epoch
    as in the CE phase, not each clip's first reference every time."""
    from ds_videocap.scst import scst_step

    class TextModel(StubModel):
        def __init__(self):
            super().__init__()
            self.encoded = []

        def encode_text(self, captions):
            self.encoded.append(list(captions))
            return {"input_ids": torch.ones(len(captions), 3, dtype=torch.long)}

    class CETermEngine(StubSCSTEngine):
        def __init__(self):
            super().__init__()
            self.module = TextModel()

        def __call__(self, pixel_values, sequences, input_ids=None):
            assert input_ids is not None, "the CE term's captions must reach the forward"
            self.logprobs = torch.full(sequences.shape, -0.5, requires_grad=True)
            return self.logprobs, torch.ones(sequences.shape), torch.tensor(0.7, requires_grad=True)

    class DrawnBatch(OneBatch):
        def __iter__(self):
            yield {"pixel_values": torch.zeros(2, 2, 3, 8, 8), "references": [["a dog runs", "a dog is running"],
                                                                             ["a cat", "a cat sits"]],
                   "captions": ["a dog is running", "a cat sits"],
                   "video_ids": ["v0", "v1"], "indices": [0, 1], "skipped": []}

    run = scst_run(tmp_path, lambda n: [0.3] * n)
    run.engine, run.scst = CETermEngine(), SCSTCfg(samples=3, ce_weight=2.0)
    data = DrawnBatch()
    run.fit(Phase("scst", phase_cfg(), scst_step, data, data, 1))
    assert run.engine.module.encoded == [["a dog is running", "a cat sits"]]
    assert run.logged[0]["loss"] == pytest.approx(2.0 * 0.7)  # flat rewards: the CE term alone
