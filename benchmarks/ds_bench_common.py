"""Shared by the 2-rank DeepSpeed benchmarks (bench_ce_overhead, bench_zero_memory, bench_rollout).

Each benchmark script is both the parent (`python benchmarks/bench_X.py`: writes the tokenizer and
the model folder once, starts `deepspeed --num_gpus 2 --no_local_rank <script> --worker ...` per
case, reads the JSON rank 0 wrote and prints a markdown table) and the worker (run by the launcher).
Workers build the real model and engine the way `ds-videocap train` does: load_recipe("synth"),
adapt_ds_config, prepare_model, build_optimizer, initialize.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLOURS, SHAPES = ("red", "green", "blue", "white", "yellow"), ("circle", "square", "triangle")
MOTIONS = ("moves left", "moves right", "moves up", "moves down", "grows", "shrinks", "stays still")
CAPTIONS = [f"a {c} {s} {m}" for c in COLOURS for s in SHAPES for m in MOTIONS]


def write_tokenizer(root: Path) -> Path:
    from ds_videocap.tokenizer import train_caption_tokenizer

    out = root / "tokenizer"
    if not (out / "tokenizer.model").is_file() and not any(out.glob("*.model")):
        train_caption_tokenizer(CAPTIONS + [f"the {c} {s} slowly {m}" for c in COLOURS for s in SHAPES
                                            for m in MOTIONS], out)
    return out


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def child_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def add_worker_args(parser, *extra: str) -> None:
    """The parent's --out, and the arguments it hands its `--worker` children (hidden from --help)."""
    parser.add_argument("--out", default=None,
                        help="folder for the model, logs and results (default: a new temp folder)")
    for name in ("--result", "--model", "--run-dir", *extra):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)


def run_worker_if_asked(args, worker) -> None:
    """In a `--worker` child, run worker(args) and end the rank (never returns); in the parent, return.

    The rank ends through exit_distributed, not interpreter exit, which gloo can abort (see there).
    """
    if not args.worker:
        return
    from ds_videocap.engine import exit_distributed

    worker(args)
    exit_distributed(0)


def bench_root(out: str | None, prefix: str) -> Path:
    """The benchmark's working folder: --out, or a new temporary one."""
    root = Path(out or tempfile.mkdtemp(prefix=prefix))
    root.mkdir(parents=True, exist_ok=True)
    return root


def report(root: Path, results, table) -> None:
    """Keep the raw results next to the logs and print the README table."""
    (root / "results.json").write_text(json.dumps(results, indent=1))
    print()
    print(table(results))


def free_port() -> int:
    s = socket.socket()
    s.bind(("", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def launch(script: str, args: list[str], result: Path, log: Path, timeout: int = 600, env: dict | None = None) -> dict:
    """Run `script --worker args` on 2 ranks under the DeepSpeed launcher; return rank 0's JSON."""
    cmd = ["deepspeed", "--num_gpus", "2", "--no_local_rank", "--master_port", str(free_port()), script,
           "--worker", "--result", str(result), *args]
    start = time.time()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=dict(child_env(), **(env or {})),
                              timeout=timeout)
    if proc.returncode != 0 or not result.is_file():
        tail = log.read_text()[-5000:]
        raise SystemExit(f"worker failed (rc {proc.returncode}), log {log}:\n{tail}")
    out = json.loads(result.read_text())
    out["launch_wall_s"] = round(time.time() - start, 1)
    return out


def write_model(root: Path, tokenizer: Path, name: str = "model", **sizes) -> Path:
    """The synth recipe's tiny OPT folder (build_tiny_folder defaults unless `sizes` widen it), once."""
    from ds_videocap.build import build_tiny_folder

    folder = root / name
    if not (folder / "config.json").is_file():
        build_tiny_folder("opt", tokenizer, folder, image_size=32, seed=42, **sizes)
    return folder


def worker_setup(model_dir: str, out: str, ds_json: str, overrides: list[str], micro_batch=None,
                 zero_overrides: dict | None = None, probe=None):
    """init_distributed + the train path's model and engine (the synth recipe, all parts trained).
    `out` must be the same folder on every rank (the parent makes it); zero_overrides update the
    JSON's zero_optimization section; probe(label) is called once the model is built."""
    from ds_videocap.ds_json import adapt_ds_config, read_ds_config
    from ds_videocap.engine import init_distributed, initialize
    from ds_videocap.optim import build_optimizer
    from ds_videocap.prepare import prepare_model
    from ds_videocap.recipe_io import load_recipe

    rank, world = init_distributed()
    cfg = load_recipe("synth", [f"model.path={model_dir}", "model.tiny=null", f"output_dir={out}", "vision.steps=0",
                                *overrides])
    raw = read_ds_config(ROOT / "ds_configs" / ds_json)
    raw.setdefault("zero_optimization", {}).update(zero_overrides or {})
    ds = adapt_ds_config(raw, micro_batch if micro_batch is not None else cfg.ce.micro_batch, out,
                         say=lambda *_: None)
    cfg, model = prepare_model(cfg, ds, rank, say=lambda *_: None)
    if probe:
        probe("model built")
    engine = initialize(model, build_optimizer(model, ds, cfg.ce.lr, cfg.ce.weight_decay, cfg.ce.betas), ds)
    return cfg, ds, engine, rank, world


def fake_batches(cfg, n: int, micro: int, seed: int, rank: int) -> list[dict]:
    """n pre-decoded micro-batches in the collate's format: random frames, templated captions."""
    import torch

    gen = torch.Generator().manual_seed(seed * 1000 + rank)
    size, frames = cfg.data.image_size, cfg.data.frames
    batches = []
    for b in range(n):
        idx = [(b * micro + i + rank * 7919) % len(CAPTIONS) for i in range(micro)]
        batches.append({
            "pixel_values": torch.randn(micro, frames, 3, size, size, generator=gen),
            "video_ids": [f"v{i}" for i in idx], "videos": [f"v{i}.mp4" for i in idx], "indices": idx,
            "captions": [CAPTIONS[i] for i in idx],
            "references": [[CAPTIONS[i], CAPTIONS[(i + 1) % len(CAPTIONS)]] for i in idx], "skipped": [],
        })
    return batches


def median(values):
    values = sorted(values)
    n = len(values)
    return (values[n // 2] + values[(n - 1) // 2]) / 2 if n else float("nan")
