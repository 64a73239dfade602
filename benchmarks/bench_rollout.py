"""SCST rollout time (ds_videocap.scst.rollout) under ZeRO-0, ZeRO-3 gathered and ZeRO-3 per-layer synced.

    python benchmarks/bench_rollout.py [--repeats 10] [--micro 16] [--samples 5] [--max-new-tokens 16]

One 2-rank launch (gloo, CPU, OMP_NUM_THREADS=1) builds the synth recipe's tiny OPT model twice from the
same folder through the train path: one engine under ds_configs/zero0.json, one under zero3.json
(partitioned while from_pretrained loads). Same pre-decoded in-memory batches (random frames, --micro
videos per rank), same seed per repeat for every variant, K=--samples multinomial samples per video
(the synth recipe's scst section: temperature 1, no top-k/top-p, baseline mean_others so no greedy
pass), max_new_tokens 16. rollout() is the real one: generation_context (eval, no grad, and under
ZeRO-3 either every parameter gathered once in coalesced all-gathers with ZeRO-3's hooks set aside,
scst.gather_for_generation=true, or generate() through the engine with synced_gpus, =false) +
model.generate.
A fourth timing is the ZeRO-3 gathered context alone (enter + exit around no generate): its fixed cost.
A fifth is the same rollout gathered the way DeepSpeed's unwrap_model_for_generation does it (one
all-gather per parameter, hooks removed and re-registered), which generation_context used before.
Variants run round-robin (order rotated each repeat) after one warm-up rollout each; a rollout's time
is the slower rank's, from a barrier to its return. Reported: median ms per rollout, ratio to ZeRO-0.
The model is untrained, so it rarely samples the stop token: every rollout generates the full 16 tokens.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ds_bench_common import (  # noqa: E402
    add_worker_args,
    bench_root,
    fake_batches,
    launch,
    load,
    median,
    report,
    run_worker_if_asked,
    worker_setup,
    write_model,
    write_tokenizer,
)

VARIANTS = ("zero0", "zero3_gather", "zero3_synced", "zero3_gather_ctx", "zero3_ds_unwrap")
LABELS = {"zero0": "ZeRO-0 (zero0.json)",
          "zero3_gather": "ZeRO-3 gathered (zero3.json, scst.gather_for_generation=true)",
          "zero3_ds_unwrap": "ZeRO-3 gathered by DeepSpeed's unwrap_model_for_generation (reference: what "
                             "generation_context replaced)",
          "zero3_synced": "ZeRO-3 per-layer synced (zero3.json, scst.gather_for_generation=false)",
          "zero3_gather_ctx": "ZeRO-3 gathered: the generation context alone (enter + exit, no generate)"}


@contextlib.contextmanager
def deepspeed_unwrap_context(engine, gather=True):
    """generation_context as it was: DeepSpeed's own gathered-generation helper."""
    import torch
    from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

    engine.module.eval()
    with torch.no_grad(), unwrap_model_for_generation(engine):
        yield engine.module, False
    engine.module.train()


def worker(args) -> None:
    import torch
    import torch.distributed as dist

    from ds_videocap import scst
    from ds_videocap.generation import generation_context
    from ds_videocap.scst import rollout

    overrides = [f"scst.micro_batch={args.micro}", f"scst.samples={args.samples}",
                 f"scst.max_new_tokens={args.max_new_tokens}"]
    # ZeRO-0 first: build_model sets transformers' HfDeepSpeedConfig only for stage 3 (and drops it after).
    cfg, _, engine0, rank, world = worker_setup(args.model, args.run_dir, "zero0.json", overrides, args.micro)
    _, _, engine3, _, _ = worker_setup(args.model, args.run_dir, "zero3.json", overrides, args.micro)
    runs = {"zero0": (engine0, cfg.scst), "zero3_gather": (engine3, replace(cfg.scst, gather_for_generation=True)),
            "zero3_synced": (engine3, replace(cfg.scst, gather_for_generation=False)),
            "zero3_gather_ctx": (engine3, None),
            "zero3_ds_unwrap": (engine3, replace(cfg.scst, gather_for_generation=True))}
    batches = fake_batches(cfg, 2, args.micro, seed=2, rank=rank)
    times = {v: [] for v in VARIANTS}
    lengths = {v: [] for v in VARIANTS}
    loads = [load()]
    for repeat in range(args.repeats + 1):  # repeat 0 is the warm-up
        order = VARIANTS[repeat % len(VARIANTS):] + VARIANTS[:repeat % len(VARIANTS)]
        for name in order:
            engine, scst_cfg = runs[name]
            pixels = batches[repeat % len(batches)]["pixel_values"]
            torch.manual_seed(1234 + repeat)
            dist.barrier()
            t0 = time.perf_counter()
            if scst_cfg is None:  # the fixed cost of gathering every parameter once and releasing it
                with generation_context(engine, gather=True):
                    pass
                samples = torch.zeros(args.micro * args.samples, 0)
            elif name == "zero3_ds_unwrap":
                scst.generation_context = deepspeed_unwrap_context
                samples, _ = rollout(engine, pixels, scst_cfg, want_greedy=False)
                scst.generation_context = generation_context
            else:
                samples, _ = rollout(engine, pixels, scst_cfg, want_greedy=False)
            elapsed = time.perf_counter() - t0
            assert samples.shape[0] == args.micro * args.samples
            if repeat:
                times[name].append(elapsed)
                lengths[name].append(samples.shape[1])
    loads.append(load())
    ranks = [None] * world
    dist.all_gather_object(ranks, times)
    if rank == 0:
        slowest = {v: [1000 * max(r[v][i] for r in ranks) for i in range(args.repeats)] for v in VARIANTS}
        Path(args.result).write_text(json.dumps(dict(
            micro=args.micro, samples=args.samples, max_new_tokens=args.max_new_tokens, repeats=args.repeats,
            params=sum(getattr(p, "ds_numel", p.numel()) for p in engine3.module.parameters()),
            ms=slowest, median_ms={v: median(t) for v, t in slowest.items()},
            rank0_median_ms={v: 1000 * median(ranks[0][v]) for v in VARIANTS},
            mean_length={v: sum(x) / len(x) for v, x in lengths.items()}, load=loads), indent=1))


def table(r: dict) -> str:
    base = r["median_ms"]["zero0"]
    lines = [f"| {r['micro']} videos x K={r['samples']} per rank, max_new_tokens {r['max_new_tokens']} | "
             "ms / rollout (median) | vs ZeRO-0 | tokens generated (mean) |", "|---|---:|---:|---:|"]
    for v in VARIANTS:
        m = r["median_ms"][v]
        lines.append(f"| {LABELS[v]} | {m:.0f} | {m / base:.2f}x | {r['mean_length'][v]:.1f} |")
    return "\n".join(lines) + f"\n\nload average (1/5/15 min): {r['load'][0]} -> {r['load'][1]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--micro", type=int, default=16, help="videos per rank (the synth recipe's scst.micro_batch)")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    add_worker_args(parser)
    args = parser.parse_args()
    run_worker_if_asked(args, worker)
    root = bench_root(args.out, "bench_rollout_")
    folder = write_model(root, write_tokenizer(root))
    res = launch(str(Path(__file__).resolve()),
                 ["--model", str(folder), "--run-dir", str(root / "run"), "--repeats", str(args.repeats),
                  "--micro", str(args.micro), "--samples", str(args.samples),
                  "--max-new-tokens", str(args.max_new_tokens)],
                 root / "result.json", root / "worker.log")
    print(f"{res['params']:,} parameters, launch {res['launch_wall_s']} s, per-rollout ms (slower rank) {res['ms']}, "
          f"rank 0 medians {res['rank0_median_ms']}", flush=True)
    report(root, res, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
