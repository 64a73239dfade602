"""The 7B recipes' graphs at full width, with few layers, through the real CLI under ZeRO-3 on 2 ranks.

    python benchmarks/seven_b_smoke.py [--models opt,llama] [--llm-layers 1] [--image-size 56] [--out DIR]

Writes, per model, a Hugging Face folder with random weights whose every matrix has the real shape
(EVA ViT-g 1408/6144/16 heads/patch 14; Q-Former 768/12 heads, cross-attention every 2 layers, 32
queries; OPT-6.7B 4096/16384/32 heads, vocab 50272 or Vicuna-7B 4096/11008/32 heads, vocab 32001) but
only --vision-layers/--qformer-layers/--llm-layers layers per tower, then runs
`launch/train.sh msrvtt_opt6.7b_ft|msrvtt_vicuna7b_ft ds_configs/zero3_offload.json` for one CE and one
SCST step on a small synthetic set, and reports each rank's peak RSS and the wall time. The image is
smaller than 224 (default 56: 16 patches per frame) only to keep activations small; no weight depends
on it except the position embedding's length. No model code changes: a layer count is just a config.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPES = {"opt": "msrvtt_opt6.7b_ft", "llama": "msrvtt_vicuna7b_ft"}
# The real decoders' shapes (facebook/opt-6.7b, lmsys/vicuna-7b-v1.1 as InstructBLIP ships it).
TEXT = {
    "opt": dict(model_type="opt", hidden_size=4096, ffn_dim=16384, num_attention_heads=32, vocab_size=50272,
                word_embed_proj_dim=4096, max_position_embeddings=2048, do_layer_norm_before=True),
    "llama": dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                  num_key_value_heads=32, vocab_size=32001, max_position_embeddings=2048, rms_norm_eps=1e-6,
                  tie_word_embeddings=False),
}
# Full 7B parameter counts (BLIP-2 OPT-6.7B, InstructBLIP Vicuna-7B) for the memory comparison.
FULL_PARAMS = {"opt": 7.75e9, "llama": 7.91e9}
# Training-run overrides: one CE and one SCST step, micro-batch 1, 2 frames, greedy test decode.
RUN = ["ce.steps=1", "scst.steps=1", "ce.micro_batch=1", "scst.micro_batch=1", "scst.samples=2",
       "ce.warmup_steps=0", "ce.log_every=1", "scst.log_every=1", "data.frames=2", "data.num_workers=0",
       "data.augment=false", "eval.num_beams=1", "eval.max_new_tokens=3", "eval.min_new_tokens=1",
       "eval.batch_size=4", "scst.max_new_tokens=4", "ce.keep_last=1", "scst.keep_last=1"]


def write_wide_folder(family: str, tokenizer_dir: Path, out: Path, image_size: int = 56, vision_layers: int = 1,
                      qformer_layers: int = 2, llm_layers: int = 1, seed: int = 0) -> Path:
    """A BLIP-2 OPT-6.7B (family opt) or InstructBLIP Vicuna-7B (llama) folder at full width, random weights."""
    import torch
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        LlamaTokenizerFast,
    )

    from ds_videocap.export import EXTRA_JSON, write_preprocessor_config

    if (out / "config.json").is_file():
        return out
    # The synthetic sentencepiece tokenizer has a few hundred pieces; the embedding keeps the real vocab
    # (as real OPT does: 50265 tokenizer ids, 50272 rows), so sampled ids can exceed the tokenizer.
    tok = LlamaTokenizerFast.from_pretrained(str(tokenizer_dir), add_bos_token=False)
    tok.pad_token = "<pad>"
    tok.add_tokens(["<image>"], special_tokens=True)
    ids = dict(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    # Blip2VisionConfig / Blip2QFormerConfig defaults ARE EVA ViT-g and the BLIP-2 Q-Former; only depth changes.
    vision = dict(num_hidden_layers=vision_layers, image_size=image_size, patch_size=14)
    qformer = dict(num_hidden_layers=qformer_layers, cross_attention_frequency=2, encoder_hidden_size=1408,
                   vocab_size=30523, pad_token_id=tok.pad_token_id)
    text = dict(TEXT[family], num_hidden_layers=llm_layers, **ids)
    config_cls, model_cls = ((InstructBlipConfig, InstructBlipForConditionalGeneration) if family == "llama"
                             else (Blip2Config, Blip2ForConditionalGeneration))
    config = config_cls(vision_config=vision, qformer_config=qformer, text_config=text, num_query_tokens=32,
                        image_token_index=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(seed)
    model = model_cls(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    if family == "llama":
        tok.save_pretrained(out / "qformer_tokenizer")
    write_preprocessor_config(out, image_size)
    (out / EXTRA_JSON).write_text(json.dumps({"family": family}, indent=2))
    return out


def _rank_pids(out: Path) -> dict[int, int]:
    """{rank: pid} of the training processes for this output folder (RANK from their environment)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            if b"ds_videocap.cli" not in cmd or f"output_dir={out}".encode() not in cmd:
                continue
            env = dict(kv.split(b"=", 1) for kv in (entry / "environ").read_bytes().split(b"\0") if b"=" in kv)
            if b"RANK" in env and b"LOCAL_RANK" in env:
                found[int(env[b"RANK"])] = int(entry.name)
        except (OSError, ValueError):
            continue
    return found


def _hwm_mib(pid: int) -> float | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(m.group(1)) / 1024 if m else None


def run_recipe(family: str, folder: Path, synth: Path, out: Path, *extra: str, timeout: int = 1200) -> dict:
    """Run the recipe through launch/train.sh; return wall time, per-rank peak RSS, metrics and logs."""
    cmd = ["bash", str(ROOT / "launch" / "train.sh"), RECIPES[family], str(ROOT / "ds_configs" / "zero3_offload.json"),
           f"model.path={folder}", f"data.videos={synth / 'videos'}",
           f"data.train={synth / 'annotations' / 'cap_train.json'}",
           f"data.test={synth / 'annotations' / 'cap_test.json'}", f"output_dir={out}", *RUN, *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", NUM_GPUS="2", PYTHONUNBUFFERED="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    log = out.parent / f"{out.name}.log"
    start = time.time()
    peaks: dict[int, float] = {}
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, text=True, env=env)
        pids: dict[int, int] = {}
        while proc.poll() is None:
            # VmHWM is the kernel's own high-water mark, so sampling only has to see each rank once
            # more before it exits; the last sample can miss the final seconds (test decode).
            pids.update(_rank_pids(out))
            for rank, pid in pids.items():
                hwm = _hwm_mib(pid)
                if hwm is not None:
                    peaks[rank] = max(peaks.get(rank, 0.0), hwm)
            if time.time() - start > timeout:
                proc.kill()
                break
            time.sleep(0.5)
    wall = time.time() - start
    text = log.read_text()
    metrics = []
    if (out / "metrics.jsonl").is_file():
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    params = re.search(r"\[model\] ([\d,]+) parameters", text)
    return dict(family=family, recipe=RECIPES[family], returncode=proc.returncode, wall_s=round(wall, 1),
                peak_rss_mib={r: round(v) for r, v in sorted(peaks.items())}, metrics=metrics, log=str(log),
                params=int(params.group(1).replace(",", "")) if params else None, log_tail=text[-4000:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="opt,llama")
    parser.add_argument("--vision-layers", type=int, default=1)
    parser.add_argument("--qformer-layers", type=int, default=2)
    parser.add_argument("--llm-layers", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=56)
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--out", default="/tmp/seven_b_smoke")
    parser.add_argument("extra", nargs="*", help="more key=value recipe overrides")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from ds_videocap.synth import make_synthetic_set

    root = Path(args.out)
    synth = make_synthetic_set(root / "synth", videos=args.videos, seed=42)
    results = []
    for family in args.models.split(","):
        t0 = time.time()
        folder = write_wide_folder(family, synth / "tokenizer", root / f"model_{family}", args.image_size,
                                   args.vision_layers, args.qformer_layers, args.llm_layers)
        built_s = time.time() - t0
        # the recipe says 224; the data pipeline must resize to what the folder's ViT was built for
        res = run_recipe(family, folder, synth, root / f"run_{family}", f"data.image_size={args.image_size}",
                         *args.extra)
        fp32_gib = res["params"] * 4 / 2**30 if res["params"] else float("nan")
        ce = [m for m in res["metrics"] if m.get("phase") == "ce" and "loss" in m]
        scst = [m for m in res["metrics"] if m.get("phase") == "scst" and "reward" in m]
        print(f"{family}: rc {res['returncode']}, folder {built_s:.0f} s, run {res['wall_s']} s, "
              f"{res['params']} params ({fp32_gib:.2f} GiB fp32; full 7B {FULL_PARAMS[family] * 4 / 2**30:.0f} GiB), "
              f"peak RSS MiB per rank {res['peak_rss_mib']}, CE loss {[m['loss'] for m in ce]}, "
              f"SCST reward {[m['reward'] for m in scst]}", flush=True)
        if res["returncode"] != 0:
            print(res["log_tail"], file=sys.stderr)
        results.append({k: v for k, v in res.items() if k not in ("log_tail", "metrics")} | {"folder_s": built_s})
    (root / "results.json").write_text(json.dumps(results, indent=1))
    return 0 if all(r["returncode"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
