"""CE step time of the project's loop (ds_videocap.loop.fit + ce_step) against a bare DeepSpeed loop.

    python benchmarks/bench_ce_overhead.py [--configs zero0.json,zero3_offload.json] [--block 6] [--rounds 3]

Per DeepSpeed JSON, one 2-rank launch (gloo, CPU, OMP_NUM_THREADS=1) builds the synth recipe's tiny
OPT model and engine as `ds-videocap train` does, then times on the SAME engine and the SAME
pre-decoded in-memory micro-batches (random frames, templated captions; no decoder, no DataLoader):
  fit:  ds_videocap.loop.fit(Run, Phase("ce", cfg.ce, ce_step, loader, sampler, total), state) with the
        real train.Run (check_finite all-reduce, skip tracking, monitors), lr set every step, tqdm on
        rank 0, metrics.jsonl + tensorboard/csv every ce.log_every steps. Only Run.save is a no-op
        (fit saves at the end of each call; a checkpoint is not per-step work).
  bare: pre-encoded captions; loss = engine(pixel_values, **inputs); engine.backward(loss); engine.step().
  bare_cf: bare plus run.check_finite(loss) between forward and backward (the loop's one extra
        collective, a 1-element all-reduce), to isolate its cost.
Blocks of --block optimizer steps in the order fit, bare, bare_cf, bare_cf, bare, fit, repeated --rounds
times after one warm-up block of each, so that background load hits all alike; a block's time runs from
a barrier to rank 0's return (fit's per-call work -- tqdm bar, sampler restore, merge of skipped
videos -- included, once per block). Reported: median ms/step per variant, their ratios, the median of
per-round ratios, CPU ms/step of both ranks (time.process_time, steadier than wall time on a loaded
machine), and a breakdown: ms/step inside wrappers around the engine calls and the loop's own pieces.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
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

VARIANTS = ("fit", "bare", "bare_cf")
PIECES = ("forward", "backward", "step", "encode_text", "check_finite", "set_lr", "log", "tqdm", "skips")


class ListSampler:
    """The part of the distributed sampler fit() uses: position, load_state_dict, len (samples)."""

    def __init__(self, n_batches: int, micro: int):
        self.n, self.micro, self.position = n_batches, micro, 0

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]

    def __len__(self) -> int:
        return self.n * self.micro


class ListLoader:
    def __init__(self, batches: list, sampler: ListSampler):
        self.batches, self.sampler = batches, sampler

    def __iter__(self):
        for i in range(self.sampler.position // self.sampler.micro, len(self.batches)):
            self.sampler.position = (i + 1) * self.sampler.micro
            yield self.batches[i]

    def __len__(self) -> int:
        return len(self.batches)


def worker(args) -> None:
    import torch
    import torch.distributed as dist
    import tqdm as tqdm_module

    import ds_videocap.loop as loop
    from ds_videocap.ce import ce_step
    from ds_videocap.data import SkipTracker
    from ds_videocap.ds_json import compute_dtype

    overrides = [f"ce.micro_batch={args.micro}", f"ce.log_every={args.log_every}", "ce.eval_every=0",
                 "ce.save_every=0", "ce.warmup_steps=100"]
    cfg, ds, engine, rank, world = worker_setup(args.model, args.run_dir, args.config, overrides)
    model = engine.module
    batches = fake_batches(cfg, args.batches, args.micro, seed=0, rank=rank)
    encoded = [model.encode_text(b["captions"]) for b in batches]
    log = []
    run = loop.StepContext(engine=engine, rank=rank, world=world, device=engine.device, dtype=compute_dtype(ds),
                           frame_shape=(cfg.data.frames, cfg.data.image_size), skips=SkipTracker(1.0),
                           log=log.append)

    # ---- timing wrappers (a perf_counter pair per call: ~1 us) ----
    spent = {p: 0.0 for p in PIECES}

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] += time.perf_counter() - t
        return wrapper

    engine.forward = timed("forward", engine.forward)
    engine.backward = timed("backward", engine.backward)
    engine.step = timed("step", engine.step)
    model.encode_text = timed("encode_text", model.encode_text)
    loop.any_rank = timed("check_finite", loop.any_rank)
    run.skips.add = timed("skips", run.skips.add)
    run.skips.merge_ranks = timed("skips", run.skips.merge_ranks)
    loop.set_lr = timed("set_lr", loop.set_lr)
    run.log = timed("log", run.log)
    tq = tqdm_module.tqdm
    tq.update = timed("tqdm", tq.update)
    tq.set_postfix = timed("tqdm", tq.set_postfix)
    tq.close = timed("tqdm", tq.close)

    sampler = ListSampler(len(batches), args.micro)
    loader = ListLoader(batches, sampler)
    state = loop.TrainState()
    cursor = [0]
    total_planned = (args.rounds * 2 + 1) * args.block + 10

    def fit_block(n):
        phase = loop.Phase("ce", cfg.ce, ce_step, loader, sampler, min(state.step + n, total_planned))
        return loop.fit(run, phase, state, validate=lambda *a: None, save=lambda *a: None)

    def bare_block(n):
        for _ in range(n):
            i = cursor[0] % len(batches)
            cursor[0] += 1
            loss = engine(batches[i]["pixel_values"], **encoded[i])
            engine.backward(loss)
            engine.step()

    def bare_cf_block(n):  # the bare loop plus the project's non-finite check (one 1-element all-reduce)
        for _ in range(n):
            i = cursor[0] % len(batches)
            cursor[0] += 1
            loss = engine(batches[i]["pixel_values"], **encoded[i])
            loop.any_rank(not bool(torch.isfinite(loss.detach()).all()))
            engine.backward(loss)
            engine.step()

    variants = {"fit": fit_block, "bare": bare_block, "bare_cf": bare_cf_block}
    times = {v: [] for v in variants}
    cpu = {v: [] for v in variants}  # this rank's CPU ms per step (all its threads)
    pieces = {v: {p: 0.0 for p in PIECES} for v in variants}
    steps = {v: 0 for v in variants}
    order = list(VARIANTS) + (list(VARIANTS) + list(reversed(VARIANTS))) * args.rounds
    loads = [load()]
    for k, name in enumerate(order):
        warm = k < len(VARIANTS)
        for p in PIECES:
            spent[p] = 0.0
        dist.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        variants[name](args.block)
        elapsed, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        if not warm:
            times[name].append(1000 * elapsed / args.block)
            cpu[name].append(1000 * cpu_s / args.block)
            steps[name] += args.block
            for p in PIECES:
                pieces[name][p] += spent[p]
    loads.append(load())
    # latency of the check's collective alone, between steps (ranks in step after a barrier)
    latency = []
    for _ in range(20):
        dist.barrier()
        t = time.perf_counter()
        dist.all_reduce(torch.zeros(1))
        latency.append(1000 * (time.perf_counter() - t))
    cpu_ranks = [None] * world
    dist.all_gather_object(cpu_ranks, cpu)
    pieces_ranks = [None] * world
    dist.all_gather_object(pieces_ranks, {v: {p: 1000 * t / max(steps[v], 1) for p, t in pieces[v].items()}
                                          for v in pieces})
    if rank == 0:
        cpu_both = {v: [sum(c[v][i] for c in cpu_ranks) for i in range(len(cpu[v]))] for v in cpu}
        per_round = []
        for r in range(args.rounds):  # fit, bare, bare_cf, bare_cf, bare, fit: same slots per round
            f = times["fit"][2 * r] + times["fit"][2 * r + 1]
            b = times["bare"][2 * r] + times["bare"][2 * r + 1]
            c = times["bare_cf"][2 * r] + times["bare_cf"][2 * r + 1]
            per_round.append({"fit/bare": f / b, "bare_cf/bare": c / b, "fit/bare_cf": f / c})
        result = dict(config=args.config, micro=args.micro, block=args.block, rounds=args.rounds,
                      params=sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()),
                      ms_per_step=times, median_ms={k: median(v) for k, v in times.items()},
                      mean_ms={k: sum(v) / len(v) for k, v in times.items()},
                      cpu_ms_per_step_both_ranks=cpu_both,
                      median_cpu_ms={k: median(v) for k, v in cpu_both.items()},
                      round_ratios=per_round,
                      median_round_ratio={k: median([x[k] for x in per_round]) for k in per_round[0]},
                      pieces_ms_per_step=pieces_ranks[0], pieces_ms_per_step_rank1=pieces_ranks[1],
                      allreduce_latency_ms=median(latency),
                      load=loads, state_step=state.step)
        Path(args.result).write_text(json.dumps(result, indent=1))


def table(results: list[dict]) -> str:
    lines = ["| config | bare loop ms/step | bare + check_finite ms/step | fit + ce_step ms/step | "
             "fit / bare | fit / bare, median of rounds | check_finite share: bare_cf / bare (rounds) | "
             "CPU ms/step both ranks: bare / bare_cf / fit | fit / bare (CPU) | load avg (1/5/15 min) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        m, c, q = r["median_ms"], r["median_cpu_ms"], r["median_round_ratio"]
        lines.append(f"| {r['config']} | {m['bare']:.1f} | {m['bare_cf']:.1f} | {m['fit']:.1f} | "
                     f"{m['fit'] / m['bare']:.3f} | {q['fit/bare']:.3f} | {q['bare_cf/bare']:.3f} | "
                     f"{c['bare']:.0f} / {c['bare_cf']:.0f} / {c['fit']:.0f} | {c['fit'] / c['bare']:.3f} | "
                     f"{r['load'][0]} -> {r['load'][1]} |")
    lines += ["", "Breakdown, ms per optimizer step inside wrapped calls (rank 0 / rank 1); 'rest' = mean "
              "block ms/step minus the pieces (rank 0): the loop's own Python, the batch hand-over, fit's "
              "per-call set-up:", "",
              "| config | variant | " + " | ".join(PIECES) + " | rest |", "|---|---|" + "---:|" * (len(PIECES) + 1)]
    for r in results:
        for v in VARIANTS[::-1]:
            p0, p1 = r["pieces_ms_per_step"][v], r["pieces_ms_per_step_rank1"][v]
            rest = r["mean_ms"][v] - sum(p0.values())
            lines.append(f"| {r['config']} | {v} | " + " | ".join(f"{p0[k]:.1f} / {p1[k]:.1f}" for k in PIECES) +
                         f" | {rest:.1f} |")
    lines.append("")
    lines.append("1-element gloo all_reduce alone, between steps after a barrier (median of 20): " +
                 ", ".join(f"{r['config']} {r['allreduce_latency_ms']:.2f} ms" for r in results))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="zero0.json,zero3_offload.json")
    parser.add_argument("--block", type=int, default=6, help="optimizer steps per timed block")
    parser.add_argument("--rounds", type=int, default=3, help="fit,bare,bare_cf,bare_cf,bare,fit rounds")
    parser.add_argument("--micro", type=int, default=32, help="micro-batch per rank (the synth recipe's 32)")
    parser.add_argument("--batches", type=int, default=8, help="distinct in-memory micro-batches, cycled")
    parser.add_argument("--log-every", type=int, default=10)
    add_worker_args(parser, "--config")
    args = parser.parse_args()
    run_worker_if_asked(args, worker)
    root = bench_root(args.out, "bench_ce_overhead_")
    folder = write_model(root, write_tokenizer(root))
    results = []
    for config in args.configs.split(","):
        print(f"[{config}] load {load()}", flush=True)
        res = launch(str(Path(__file__).resolve()),
                     ["--config", config, "--model", str(folder), "--run-dir", str(root / f"run_{config}"),
                      "--block", str(args.block),
                      "--rounds", str(args.rounds), "--micro", str(args.micro), "--batches", str(args.batches),
                      "--log-every", str(args.log_every)],
                     root / f"{config}.result.json", root / f"{config}.log")
        print(f"[{config}] {res['params']:,} parameters, launch {res['launch_wall_s']} s, median ms/step "
              f"{res['median_ms']}, round ratios {res['round_ratios']}", flush=True)
        results.append(res)
    report(root, results, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
