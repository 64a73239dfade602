"""Run under `deepspeed --num_gpus 2`: the train set-up builds the model partitioned under ZeRO-3.

Argv: tokenizer dir, output dir, DeepSpeed JSON. Every rank checks that each large parameter holds
only its shard (about half) while ds_shape keeps the full shape, then trains and generates with
parameter persistence off so that every parameter (query tokens included) must be fetched.
"""
import sys

import torch
import torch.distributed as dist

from ds_videocap.ds_json import adapt_ds_config, read_ds_config
from ds_videocap.engine import exit_distributed, init_distributed, initialize
from ds_videocap.generation import generation_context
from ds_videocap.optim import build_optimizer
from ds_videocap.prepare import prepare_model
from ds_videocap.recipe_io import load_recipe

tokenizer, out, ds_json = sys.argv[1:4]
rank, world = init_distributed()
# the model as train builds it, without the recipe's vision stage (it needs the set's stills)
cfg = load_recipe("synth", [f"model.tokenizer={tokenizer}", f"output_dir={out}", "vision.steps=0"])
ds = adapt_ds_config(read_ds_config(ds_json), 2, out, say=lambda *_: None)
ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # partition everything
cfg, model = prepare_model(cfg, ds, rank, say=lambda *_: None)

built_partitioned = [n for n, p in model.named_parameters() if hasattr(p, "ds_shape")]
assert all(n.startswith("hf.") for n in built_partitioned)
# from_pretrained partitions as it loads. Blip2's attention swaps in its qkv bias after the Linear
# is built, so those few biases are left to deepspeed.initialize, which partitions whatever remains.
missing = [p.numel() for n, p in model.hf.named_parameters() if not hasattr(p, "ds_shape")]
total = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.hf.parameters())
assert sum(missing) < 0.01 * total, f"{sum(missing)} of {total} elements not partitioned by from_pretrained"

engine = initialize(model, build_optimizer(model, ds, 1e-3, 0.05, (0.9, 0.999)), ds)
partitioned = 0
for name, p in model.named_parameters():  # after initialize the hand-built frame embedding is too
    full = int(torch.Size(p.ds_shape).numel())
    assert p.ds_numel == full, name
    assert p.numel() == 0, f"{name}: {p.numel()} elements live outside a forward"
    shard = p.ds_tensor.numel()
    assert shard == -(-full // world), f"{name}: shard {shard} of {full}"
    partitioned += 1
assert partitioned > 50
pixels = torch.randn(2, cfg.data.frames, 3, cfg.data.image_size, cfg.data.image_size)
loss = engine(pixels, **model.encode_text(["a red circle moves left", "a blue square grows"]))
engine.backward(loss)
engine.step()


def hook_count():
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def greedy(gather):
    with generation_context(engine, gather=gather) as (gen, synced):
        return gen.generate(pixels, max_new_tokens=6, num_beams=1, do_sample=False, synced_gpus=synced)


# The gathered context gathers in one coalesced all-gather and takes ZeRO-3's hooks out for the block:
# it must produce what per-layer fetching produces, and leave the engine exactly as it found it.
def whole():
    return [n for n, p in model.named_parameters() if p.numel()]


text = model.encode_text(["a red circle moves left", "a blue square grows"])
coordinator = engine.optimizer.parameter_offload.get_param_coordinator()
hooks_before, trace_before, whole_before = hook_count(), coordinator.is_invalid_trace(), whole()
assert whole_before == [], whole_before  # after a step ZeRO-3 has released every parameter
gathered = greedy(True)
assert hook_count() == hooks_before > 0, (hook_count(), hooks_before)
assert coordinator.is_invalid_trace() == trace_before, "the gathered context changed the prefetch trace"
assert whole() == [], f"left gathered after generation: {whole()}"
model.eval()  # no dropout: the two losses must be equal
with torch.no_grad():
    loss_before = engine(pixels, **text).item()
assert torch.equal(greedy(True), gathered)
with torch.no_grad():
    loss_after = engine(pixels, **text).item()
assert loss_after == loss_before, (loss_after, loss_before)  # ZeRO-3's hooks still fetch what the loss needs
model.train()
fetched = greedy(False)
assert torch.equal(gathered, fetched), (gathered, fetched)
for gather in (True, False):
    with generation_context(engine, gather=gather) as (gen, synced):
        # rank-dependent lengths: one rank stops early, the other must not hang
        seqs = gen.generate(pixels, max_new_tokens=3 + 5 * rank, do_sample=True, num_return_sequences=2,
                            synced_gpus=synced)
    assert seqs.shape[0] == 4
    logprobs, mask = engine(pixels, sequences=seqs)
    engine.backward(-(logprobs * mask).sum())
    engine.step()
dist.barrier()
if rank == 0:
    print(f"PARTITIONED-OK {partitioned} parameters, world {world}")
exit_distributed(0)  # not interpreter exit: gloo can abort it
