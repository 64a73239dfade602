"""Per-rank memory of a ~100M-parameter model under ZeRO-0, 1, 2 and 3, 2 ranks, fp32 on the CPU.

    python benchmarks/bench_zero_memory.py [--configs zero0.json,zero1.json,zero2.json,zero3.json] [--steps 3]

The parent writes one widened tiny OPT BLIP-2 folder with build_tiny_folder (ViT 384 x 8 layers,
Q-Former 384 x 6, OPT 768 x 10, 16 queries, 32 px frames, patch 8: 100.0M parameters, every part
trained as in the synth recipe), then per DeepSpeed JSON starts one fresh 2-rank launch (gloo,
OMP_NUM_THREADS=1) that builds the model and engine through the train path (prepare_model under the
JSON, so ZeRO-3 partitions while from_pretrained loads; build_optimizer: torch AdamW), and runs
--steps CE steps (micro-batch 4, 4 frames, pre-decoded random frames). Each rank reports:
  params held   sum of p.numel() (ZeRO-0/1/2) or p.ds_tensor.numel() + the elements still
                materialised in p.data (ZeRO-3's persistent small parameters) after the steps
  Adam state    elements of exp_avg + exp_avg_sq in the innermost torch optimizer
  fp32 master   elements of the parameters that optimizer updates when they are not the model's
                own tensors (ZeRO-1/2/3 keep an fp32 copy of this rank's partition)
  RSS           /proc/self/statm after imports + init_distributed (base), after deepspeed.initialize
                (gc'd), and ru_maxrss after the steps (peak of the whole process, loading included)
"""
from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ds_bench_common import (  # noqa: E402
    add_worker_args,
    bench_root,
    fake_batches,
    launch,
    load,
    report,
    run_worker_if_asked,
    worker_setup,
    write_model,
    write_tokenizer,
)

SIZES = dict(vision_hidden=384, vision_layers=8, qformer_hidden=384, qformer_layers=6, num_query_tokens=16,
             llm_hidden=768, llm_layers=10, patch_size=8)
MIB = 2 ** 20


def rss_mib() -> float:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def inner_optimizer(opt):
    import torch

    while not isinstance(opt, torch.optim.Optimizer):
        opt = opt.optimizer
    return opt


def master_elements(opt) -> int:
    """fp32 master weights that are a separate copy of this rank's partition (ZeRO-1/2: always a
    clone; ZeRO-3 in fp32: the partition itself, no copy); ZeRO-0 updates the model's tensors."""
    if hasattr(opt, "single_partition_of_fp32_groups"):
        return sum(t.numel() for t in opt.single_partition_of_fp32_groups)
    if hasattr(opt, "fp32_partitioned_groups_flat"):
        return sum(m.numel() for m, p in zip(opt.fp32_partitioned_groups_flat, opt.fp16_partitioned_groups_flat)
                   if m.numel() and m.data_ptr() != p.data_ptr())
    return 0


def worker(args) -> None:
    import torch
    import torch.distributed as dist

    from ds_videocap.engine import init_distributed

    init_distributed()  # idempotent: worker_setup calls it again
    gc.collect()
    base = rss_mib()
    overrides = [f"ce.micro_batch={args.micro}", "data.frames=4", "ce.warmup_steps=0"]
    # e.g. zero3.json:reduce_bucket_size=5e6+stage3_max_live_parameters=1e7
    config, _, extra = args.config.partition(":")
    zero = {k: json.loads(v) if not v.replace(".", "").replace("e", "").isdigit() else int(float(v))
            for k, v in (kv.split("=") for kv in extra.split("+") if kv)}
    probes = {}

    def probe(label):
        gc.collect()
        probes[label] = rss_mib()

    cfg, ds, engine, rank, world = worker_setup(args.model, args.run_dir, config, overrides,
                                                zero_overrides=zero, probe=probe)
    model = engine.module
    gc.collect()
    after_setup, peak_setup = rss_mib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    total = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    trainable = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
    batches = fake_batches(cfg, args.steps, args.micro, seed=1, rank=rank)
    for i, b in enumerate(batches):
        loss = engine(b["pixel_values"], **model.encode_text(b["captions"]))
        if i == 0:
            probe("after 1st forward")
        engine.backward(loss)
        if i == 0:
            probe("after 1st backward")
        engine.step()
        if i == 0:
            probe("after 1st step")
    gc.collect()
    held = sum(p.ds_tensor.numel() + p.data.numel() if hasattr(p, "ds_tensor") else p.numel()
               for p in model.parameters())
    opt = inner_optimizer(engine.optimizer)
    adam = sum(t.numel() for s in opt.state.values() for k, t in s.items()
               if torch.is_tensor(t) and k in ("exp_avg", "exp_avg_sq"))
    master = master_elements(engine.optimizer)
    mine = dict(rank=rank, base_mib=base, setup_mib=after_setup, peak_setup_mib=peak_setup,
                after_steps_mib=rss_mib(), peak_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                params_held=held, adam_elements=adam, master_elements=master, loss=float(loss), probes=probes)
    ranks = [None] * world
    dist.all_gather_object(ranks, mine)
    if rank == 0:
        Path(args.result).write_text(json.dumps(dict(config=args.config, params_total=total,
                                                     params_trainable=trainable, steps=args.steps,
                                                     micro=args.micro, ranks=ranks, load=load()), indent=1))


def table(results: list[dict]) -> str:
    base = next((r for r in results if r["config"] == "zero0.json"), results[0])

    def avg(r, key):
        return sum(x[key] for x in r["ranks"]) / len(r["ranks"])

    def per(r, key, scale, digits):
        return " / ".join(f"{x[key] / scale:.{digits}f}" for x in r["ranks"])

    base_delta = avg(base, "peak_mib") - avg(base, "base_mib")
    lines = ["| config | params held per rank (M) | of total | Adam m+v per rank (M) | fp32 master copy per rank (M) | "
             "RSS base (MiB) | RSS after setup (MiB) | RSS after steps (MiB) | peak RSS (MiB) | peak - base (MiB) | "
             "peak - base vs ZeRO-0 |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        delta = avg(r, "peak_mib") - avg(r, "base_mib")
        lines.append(f"| {r['config']} | {per(r, 'params_held', 1e6, 1)} | "
                     f"{avg(r, 'params_held') / r['params_total']:.2f} | {per(r, 'adam_elements', 1e6, 1)} | "
                     f"{per(r, 'master_elements', 1e6, 1)} | {per(r, 'base_mib', 1, 0)} | "
                     f"{per(r, 'setup_mib', 1, 0)} | {per(r, 'after_steps_mib', 1, 0)} | {per(r, 'peak_mib', 1, 0)} | "
                     f"{delta:.0f} | {delta / base_delta:.2f} |")
    return "\n".join(lines) + ("\n\n(rank 0 / rank 1 where two figures; 'of total' and the deltas average the "
                               f"ranks; load average at the end of each launch: {[r['load'] for r in results]})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="zero0.json,zero1.json,zero2.json,zero3.json")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--micro", type=int, default=4)
    parser.add_argument("--malloc-mmap-threshold", type=int, default=None,
                        help="set MALLOC_MMAP_THRESHOLD_ (bytes) in the ranks: glibc then serves every larger "
                             "allocation by mmap and gives it back on free, so RSS follows live tensors")
    add_worker_args(parser, "--config")
    args = parser.parse_args()
    run_worker_if_asked(args, worker)
    root = bench_root(args.out, "bench_zero_memory_")
    folder = write_model(root, write_tokenizer(root), name="model_100m", **SIZES)
    results = []
    for config in args.configs.split(","):
        res = launch(str(Path(__file__).resolve()),
                     ["--config", config, "--model", str(folder), "--run-dir", str(root / f"run_{config}"),
                      "--steps", str(args.steps), "--micro", str(args.micro)],
                     root / f"{config}.result.json", root / f"{config}.log",
                     env=({"MALLOC_MMAP_THRESHOLD_": str(args.malloc_mmap_threshold)}
                          if args.malloc_mmap_threshold else None))
        print(f"[{config}] {res['params_total']:,} parameters ({res['params_trainable']:,} trainable), launch "
              f"{res['launch_wall_s']} s, load {res['load']}, per rank "
              f"{[{k: round(v, 1) if isinstance(v, float) else v for k, v in x.items()} for x in res['ranks']]}",
              flush=True)
        results.append(res)
    report(root, results, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
