"""Check the memory planner against memory measured on the CPU: one plain-torch fp32 process.

For each case a tiny BLIP-2 / InstructBLIP folder (build_tiny_folder, widened so that model states,
not the Python runtime, dominate) is written once; a fresh child process then imports everything,
reads its resident set size, builds the VideoCaptioner in fp32 with the case's trainable parts,
and runs two CE steps with torch.optim.AdamW (the second one runs with Adam's moments allocated,
as every later step does); the SCST cases (ce.steps=0) run two SCST steps instead: K sampled
captions per video, all run to max_new_tokens, then the policy-gradient pass with grad. Measured =
peak RSS (ru_maxrss) after the second step minus RSS before building; planned =
ds_videocap.plan.plan_recipe(device="cpu") for the same recipe under
ds_configs/zero0.json (the ZeRO-0 case without DeepSpeed: fp32 weights, fp32 grads, Adam m and v).
The child builds the model with its constructor rather than from_pretrained, so that the memory-
mapped weight file does not count: the planner plans training, not loading.

Usage: python benchmarks/bench_plan_accuracy.py [--json] [--only NAME] [--malloc-mmap-threshold 131072]
       python benchmarks/bench_plan_accuracy.py --tables   (the study models' plans, for docs/planner_tables.md)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CAPTIONS = [f"a {c} {s} moves {m} slowly across the dark screen" for c in ("red", "green", "blue", "white")
            for s in ("circle", "square", "triangle") for m in ("left", "right", "up", "down")]
# name: (family, hidden, layers, image size, recipe overrides)
CASES = {
    "opt-full": ("opt", 512, 4, 32, ["model.llm=full", "model.vit=full", "ce.micro_batch=8", "data.frames=4"]),
    "opt-qformer": ("opt", 512, 4, 32, ["ce.micro_batch=8", "data.frames=4"]),
    "t5-lora": ("t5", 512, 4, 32, ["model.llm=lora", "ce.micro_batch=8", "data.frames=4"]),
    "llama-full-ckpt": ("llama", 512, 4, 32, ["model.llm=full", "model.grad_checkpointing_llm=true",
                                              "ce.micro_batch=16", "data.frames=4"]),
    "opt-qformer-b32-64px": ("opt", 384, 4, 64, ["ce.micro_batch=32", "data.frames=4"]),
    # SCST only (ce.steps=0): a rollout of K samples, then the policy-gradient pass over B x K captions
    "opt-full-scst": ("opt", 512, 4, 32, ["model.llm=full", "ce.steps=0", "scst.steps=1", "scst.micro_batch=8",
                                          "scst.samples=8", "scst.max_new_tokens=32", "data.frames=4"]),
    "t5-lora-scst": ("t5", 512, 4, 32, ["model.llm=lora", "ce.steps=0", "scst.steps=1", "scst.micro_batch=8",
                                        "scst.samples=8", "scst.max_new_tokens=32", "data.frames=4"]),
}
CAPTION_TOKENS = 16
STUDY = ("msrvtt_flant5xl_ft", "msrvtt_opt2.7b_ft", "msrvtt_opt6.7b_ft", "msrvtt_vicuna7b_ft")
SETUPS = ((1, 80.0, 64), (8, 80.0, 64), (1, 24.0, 64), (1, 24.0, 16))  # GPUs, GiB each, ce.micro_batch


def write_folders(root: Path) -> dict:
    from ds_videocap.build import build_tiny_folder
    from ds_videocap.tokenizer import train_caption_tokenizer

    tok = train_caption_tokenizer(CAPTIONS, root / "tokenizer")
    folders = {}
    for family, hidden, layers, image, _ in CASES.values():
        key = (family, hidden, layers, image)
        if key not in folders:
            folders[key] = build_tiny_folder(
                family, tok, root / "_".join(map(str, key)), image_size=image, patch_size=8,
                vision_hidden=hidden, vision_layers=layers, qformer_hidden=hidden, qformer_layers=layers,
                num_query_tokens=16, llm_hidden=hidden, llm_layers=layers)
    return folders


def recipe_for(folder: Path, image: int, overrides: list[str]):
    from ds_videocap.recipe_io import load_recipe
    # the synth recipe trains everything; each case states what it trains on top of a frozen base
    return load_recipe("synth", [f"model.path={folder}", "model.tiny=null", "model.frame_embedding=false",
                                 "model.llm=frozen", "model.vit=frozen", "scst.steps=0",
                                 f"data.image_size={image}", f"model.max_txt_len={CAPTION_TOKENS}", *overrides])


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_child(folder: str, image: int, overrides: list[str]) -> dict:
    """In a fresh process: RSS before building, peak RSS after two AdamW steps."""
    import resource

    import bitsandbytes  # noqa: F401  apply_trainable imports these; modules are runtime, not model memory
    import peft  # noqa: F401
    import torch
    from transformers import (
        AutoConfig,
        AutoTokenizer,
        Blip2ForConditionalGeneration,
        InstructBlipForConditionalGeneration,
    )

    from ds_videocap.build import DEFAULT_PROMPTS, read_family
    from ds_videocap.model import VideoCaptioner
    from ds_videocap.trainable import apply_trainable

    torch.set_num_threads(2)
    cfg = recipe_for(Path(folder), image, overrides)
    config = AutoConfig.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    family = read_family(config)
    cls = InstructBlipForConditionalGeneration if config.model_type == "instructblip" else Blip2ForConditionalGeneration
    scst = bool(cfg.scst.steps) and not cfg.ce.steps
    batch = cfg.scst.micro_batch if scst else cfg.ce.micro_batch
    pixels = torch.randn(batch, cfg.data.frames, 3, image, image)
    before = rss_bytes()
    hf = cls(config)
    model = VideoCaptioner(hf, tokenizer, family, prompt=DEFAULT_PROMPTS[family], max_txt_len=CAPTION_TOKENS)
    apply_trainable(model, cfg.model, cfg.lora)
    model.train()
    text = model.encode_text([" ".join(CAPTIONS[i % len(CAPTIONS)].split() * 4) for i in range(batch)])
    assert text["input_ids"].shape[1] == CAPTION_TOKENS, text["input_ids"].shape
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for _ in range(2):
        if scst:  # every sample runs to max_new_tokens: the rollout's largest cache
            n = cfg.scst.max_new_tokens
            samples = model.generate(pixels, do_sample=True, num_return_sequences=cfg.scst.samples,
                                     max_new_tokens=n, min_new_tokens=n)
            logprobs, mask = model.sequence_logprobs(pixels, samples)
            loss = -(logprobs.sum(1) / mask.sum(1)).mean()
        else:
            loss = model(pixels, **text)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"measured_bytes": peak - before, "rss_before": before}


def plan_case(folder: Path, image: int, overrides: list[str]) -> dict:
    from ds_videocap.plan import plan_recipe
    plan = plan_recipe(recipe_for(folder, image, overrides), device="cpu",
                       configs=[ROOT / "ds_configs" / "zero0.json"])
    return {"planned_bytes": plan["configs"][0]["gpu_bytes"], "params_total": plan["params_total"],
            "params_trainable": plan["params_trainable"]}


def print_study_tables(cpu_mem: float = 256.0) -> None:
    """One markdown table per GPU setup: per-GPU GiB / node CPU GiB under each JSON, and the pick."""
    from ds_videocap.plan import build_spec, load_plan_recipe, plan_recipe, read_hf_config

    recipes = {name: load_plan_recipe(name) for name in STUDY}
    specs = {name: build_spec(read_hf_config(cfg), cfg.model, cfg.lora) for name, cfg in recipes.items()}
    for gpus, mem, micro in SETUPS:
        for cfg in recipes.values():
            cfg.ce.micro_batch = micro
        plans = [plan_recipe(recipes[n], gpus=gpus, gpu_mem=mem, cpu_mem=cpu_mem, spec=specs[n]) for n in STUDY]
        names = [r["config"].split("/")[-1].removesuffix(".json") for r in plans[0]["configs"]]
        print(f"\n### {gpus} x {mem:g} GiB GPU, {cpu_mem:g} GiB CPU, micro-batch {micro} per GPU\n")
        print("| recipe | params (trainable) | " + " | ".join(names) + " | recommended |")
        print("|---|---:|" + "---:|" * len(names) + "---|")
        for name, plan in zip(STUDY, plans):
            cells = [f"{r['gpu_gib']:.1f} / {r['cpu_gib']:.0f}{'' if r['fits'] else ' ✗'}" for r in plan["configs"]]
            pick = (plan["recommended"] or "nothing fits").split("/")[-1]
            print(f"| {name} | {plan['params_total'] / 1e9:.2f} B ({plan['params_trainable'] / 1e6:.0f} M) | "
                  + " | ".join(cells) + f" | {pick} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only", default=None)
    parser.add_argument("--tables", action="store_true", help="print the study models' plans instead")
    parser.add_argument("--malloc-mmap-threshold", type=int, default=None,
                        help="set MALLOC_MMAP_THRESHOLD_ (bytes) in the children: glibc then serves every larger "
                             "allocation by mmap and returns it on free, so peak RSS follows the live tensors "
                             "instead of growing with the allocator's kept and fragmented memory")
    parser.add_argument("--child", nargs=3, metavar=("FOLDER", "IMAGE", "OVERRIDES_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child[0], int(args.child[1]), json.loads(args.child[2]))))
        return
    if args.tables:
        print_study_tables()
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folders = write_folders(Path(tmp))
        for name, (family, hidden, layers, image, overrides) in CASES.items():
            if args.only and name != args.only:
                continue
            folder = folders[(family, hidden, layers, image)]
            env = dict(os.environ, PYTHONWARNINGS="ignore")
            if args.malloc_mmap_threshold:
                env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
            out = subprocess.run([sys.executable, __file__, "--child", str(folder), str(image), json.dumps(overrides)],
                                 capture_output=True, text=True, check=True, env=env)
            measured = json.loads(out.stdout.strip().splitlines()[-1])
            planned = plan_case(folder, image, overrides)
            rows.append({"case": name, "family": family, "hidden": hidden, "layers": layers, "overrides": overrides,
                         **planned, **measured, "ratio": planned["planned_bytes"] / measured["measured_bytes"]})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    mib = 1024 ** 2
    print("| case | params (trainable) | settings | measured MiB | planned MiB | planned / measured |")
    print("|---|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['params_total'] / 1e6:.1f} M ({r['params_trainable'] / 1e6:.1f} M) | "
              f"{' '.join(r['overrides'])} | {r['measured_bytes'] / mib:.0f} | {r['planned_bytes'] / mib:.0f} | "
              f"{r['ratio']:.2f} |")


if __name__ == "__main__":
    main()
