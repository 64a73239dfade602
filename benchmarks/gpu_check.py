"""The GPU check behind benchmarks/gpu_check.sh: the study's models at their real sizes, random weights
built from configs (no download), trained and decoded through launch/train.sh and the CLI.

Cases (each a real `bash launch/train.sh` run on the local GPUs, a few steps each):
  t5xl_zero2_f8        BLIP-2 ViT-g/14 + Q-Former + FLAN-T5-XL (LoRA), ZeRO-2 bf16, 8 frames, CE + SCST
  t5xl_zero3off_f16    the same under ZeRO-3 + CPU offload, 16 frames, CE + SCST (gathered rollout)
  t5xl_eval, _caption  `ds-videocap eval` / `caption` of the first run on the GPU
  opt67_zero2_f8       BLIP-2 OPT-6.7B (LLM frozen), ZeRO-2 bf16, 8 frames, CE + SCST
  opt67_hybrid         the same SCST with DeepSpeed's Hybrid Engine JSON
  vicuna7b_zero3off    InstructBLIP Vicuna-7B (LoRA), ZeRO-3 + offload, 8 frames, CE + SCST, gathered rollout
  vicuna7b_synced      its SCST with the per-layer (synced) ZeRO-3 rollout instead
Figures per case: samples/s per phase, peak GPU memory next to `ds-videocap plan`'s estimate for the
same recipe and JSON, rollout ms, and the CE step's model FLOPs utilisation (see flops_per_sample).
A total time budget (--budget-s) skips the cases that would not fit, and says so.

--smoke runs the same orchestration on the CPU with the tiny models (2 ranks, fp32): the test suite
uses it so that this script keeps working between GPU sessions.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16, per GPU
MODELS = {"t5xl": "msrvtt_flant5xl_ft", "opt67": "msrvtt_opt6.7b_ft", "vicuna7b": "msrvtt_vicuna7b_ft"}
TINY = {"t5xl": "t5", "opt67": "opt", "vicuna7b": "llama"}
STEPS = ["ce.steps=4", "scst.steps=2", "ce.warmup_steps=0", "ce.log_every=1", "scst.log_every=1",
         "ce.micro_batch=8", "scst.micro_batch=2", "scst.samples=4", "scst.max_new_tokens=16",
         "eval.batch_size=8", "eval.max_new_tokens=16", "data.num_workers=2", "ce.keep_last=1", "scst.keep_last=1",
         # a short vision stage on the set's stills: its gradient all-reduce runs over NCCL, on the real ViT
         "vision.steps=4", "vision.micro_batch=8", "vision.log_every=1"]
CASES = [  # (name, model, DeepSpeed JSON, frames, extra overrides)
    ("t5xl_zero2_f8", "t5xl", "ds_configs/zero2.json", 8, []),
    ("t5xl_zero3off_f16", "t5xl", "ds_configs/zero3_offload.json", 16, []),
    ("opt67_zero2_f8", "opt67", "ds_configs/zero2.json", 8, []),
    ("opt67_hybrid", "opt67", "benchmarks/gpu_check_hybrid_engine.json", 8, ["ce.steps=0"]),
    ("vicuna7b_zero3off", "vicuna7b", "ds_configs/zero3_offload.json", 8, ["scst.gather_for_generation=true"]),
    ("vicuna7b_synced", "vicuna7b", "ds_configs/zero3_offload.json", 8,
     ["ce.steps=0", "scst.gather_for_generation=false"]),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/ds_videocap_gpu_check", help="working folder (models, runs, results)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="skip cases that would run past this")
    parser.add_argument("--only", nargs="*", default=None, help="run only these cases")
    parser.add_argument("--smoke", action="store_true", help="the tiny models on the CPU (tests the script)")
    args = parser.parse_args(argv)
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here (torch.cuda.is_available() is False): nothing to check")
        return 0
    start, work = time.time(), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    synth = work / "synth"
    run([sys.executable, "-m", "ds_videocap.cli", "data", "synth", "--out", str(synth), "--videos", "40",
         "--seed", "42"])
    device = "cpu (smoke)" if args.smoke else torch.cuda.get_device_name(0)
    results, first_run = [], None
    cases = [c for c in CASES if args.only is None or c[0] in args.only]
    for model_key in dict.fromkeys(c[1] for c in cases):
        folder = None
        for name, _, ds_json, frames, extra in (c for c in cases if c[1] == model_key):
            if time.time() - start > args.budget_s:
                results.append({"case": name, "status": "skipped: time budget spent"})
                continue
            if args.smoke and "hybrid" in ds_json:
                results.append({"case": name, "status": "skipped: the Hybrid Engine needs CUDA"})
                continue
            if folder is None and not args.smoke:
                t = time.time()
                folder = write_random_folder(model_key, synth / "tokenizer", work / "models" / model_key)
                print(f"[gpu_check] {model_key}: random-weight folder written in {time.time() - t:.0f} s", flush=True)
            result = train_case(work, synth, name, model_key, folder, ds_json, frames, extra, args.smoke, device)
            results.append(result)
            if first_run is None and result["status"] == "ok":
                first_run = (work / "runs" / name, frames)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)  # the disk holds one 7B folder at a time
    if first_run is not None and (args.only is None or "eval" in args.only):
        results += decode_cases(first_run[0], synth, first_run[1])
    report = {"device": device, "wall_s": round(time.time() - start, 1), "cases": results}
    (work / "gpu_check.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0 if all(r["status"].startswith(("ok", "skipped")) for r in results) else 1


def run(command: list[str], env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:6])} ... exit {proc.returncode}: {proc.stderr[-1500:]}")
    return proc


def train_case(work, synth, name, model_key, folder, ds_json, frames, extra, smoke, device) -> dict:
    out = work / "runs" / name
    shutil.rmtree(out, ignore_errors=True)
    recipe = "synth" if smoke else MODELS[model_key]
    model = [f"model.tiny={TINY[model_key]}", "model.llm=lora" if model_key != "opt67" else "model.llm=frozen",
             "model.vit=frozen"] if smoke else [f"model.path={folder}", "data.image_size=224"]
    overrides = [f"synth_dir={synth}", "synth_videos=40", "seed=42", f"output_dir={out}", f"data.frames={frames}",
                 "data.augment=false",
                 *model, *STEPS, *extra]
    if smoke:
        overrides += ["eval.num_beams=2"]
    env = {"NUM_GPUS": "2" if smoke else str(_gpu_count()), "OMP_NUM_THREADS": "1" if smoke else "8"}
    started = time.time()
    try:
        run(["bash", "launch/train.sh", recipe, ds_json, *overrides], env=env, timeout=900)
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        return {"case": name, "status": f"failed: {str(err)[-1200:]}"}
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    result = {"case": name, "status": "ok", "wall_s": round(time.time() - started, 1), "frames": frames,
              "config": ds_json}
    for phase in ("ce", "scst"):
        rows = [m for m in metrics if m.get("phase") == phase and "loss" in m]
        if not rows:
            continue
        steady = rows[1:] or rows  # the first step carries warm-up (allocations, kernels, ZeRO traces)
        result[f"{phase}_samples_per_s"] = round(sum(m["samples_per_s"] for m in steady) / len(steady), 3)
        result[f"{phase}_gpu_peak_gib"] = max((m["gpu_peak_gib"] for m in rows if "gpu_peak_gib" in m), default=None)
        if phase == "scst":
            result["rollout_ms"] = round(sum(m["rollout_ms"] for m in steady) / len(steady), 1)
    result["plan_gpu_gib"] = plan_estimate(recipe, ds_json, overrides)
    if "ce_samples_per_s" in result and not smoke:
        flops = flops_per_sample(recipe, overrides, frames)
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device), None)
        result["ce_flops_per_sample"] = flops
        if peak:
            result["ce_mfu"] = round(flops * result["ce_samples_per_s"] / (peak * 1e12 * _gpu_count()), 4)
    return result


def decode_cases(run_dir: Path, synth: Path, frames: int) -> list[dict]:
    """`eval` and `caption` of a run folder, on the GPU (the CLI's default device)."""
    results = []
    for name, command in (
            ("eval", ["eval", "--checkpoint", str(run_dir), "--annotations",
                      str(synth / "annotations" / "cap_test.json"), "--videos", str(synth / "videos"), "--json",
                      "--frames", str(frames)]),
            ("caption", ["caption", "--checkpoint", str(run_dir), str(synth / "videos"), "--json",
                         "--frames", str(frames), "--batch-size", "8"])):
        started = time.time()
        try:
            proc = run([sys.executable, "-m", "ds_videocap.cli", *command], timeout=600)
            payload = json.loads(proc.stdout)
            results.append({"case": name, "status": "ok", "wall_s": round(time.time() - started, 1),
                            "videos": len(payload) if isinstance(payload, list) else payload.get("decoded")})
        except (RuntimeError, ValueError, subprocess.TimeoutExpired) as err:
            results.append({"case": name, "status": f"failed: {str(err)[-1200:]}"})
    return results


def plan_estimate(recipe: str, ds_json: str, overrides: list[str]) -> float | None:
    """`ds-videocap plan`'s GPU estimate (GiB per GPU) for this recipe and JSON."""
    keep = [o for o in overrides if o.split("=")[0].startswith(("model.", "data.frames", "ce.", "scst.", "lora."))]
    proc = run([sys.executable, "-m", "ds_videocap.cli", "plan", "--recipe", recipe, "--gpus", str(_gpu_count()),
                "--json", *keep])
    rows = json.loads(proc.stdout)["configs"]
    return next((r["gpu_gib"] for r in rows if Path(r["config"]).name == Path(ds_json).name), None)


def flops_per_sample(recipe: str, overrides: list[str], frames: int) -> float:
    """Model FLOPs of one CE training sample, counted as 2 x parameters x tokens per matmul pass:
    the frozen ViT runs forward only (T x 257 tokens); the Q-Former trains (forward + both backward
    passes = 3 x forward, 32 queries, plus its cross-attention K/V over the T x 257 frame tokens); the
    LLM (frozen or LoRA) runs forward and the input-gradient backward (2 x forward) over 32 visual +
    prompt + caption tokens (16 here). Attention score FLOPs are left out (small at these lengths)."""
    from ds_videocap.plan import build_spec, load_plan_recipe, read_hf_config

    cfg = load_plan_recipe(recipe, [o for o in overrides if o.startswith(("model.", "data.", "lora."))])
    config = read_hf_config(cfg)
    spec = build_spec(config, cfg.model, cfg.lora)
    vision_tokens = frames * ((config.vision_config.image_size // config.vision_config.patch_size) ** 2 + 1)
    queries = config.num_query_tokens
    cross_layers = -(-config.qformer_config.num_hidden_layers // config.qformer_config.cross_attention_frequency)
    cross_kv = 2 * config.vision_config.hidden_size * config.qformer_config.hidden_size * cross_layers
    llm_tokens = queries + 4 + 16
    vit = 2 * spec.params["vision"] * vision_tokens
    qformer = 3 * 2 * (spec.params["qformer"] * queries + cross_kv * vision_tokens)
    llm = 2 * 2 * spec.params["llm"] * llm_tokens
    return float(vit + qformer + llm)


def write_random_folder(model_key: str, tokenizer_dir: Path, out: Path) -> Path:
    """The study configuration of MODELS[model_key] with random bf16 weights, made on the GPU and saved
    as an ordinary Hugging Face folder; the synthetic set's sentencepiece model is its tokenizer."""
    import torch
    from transformers import Blip2ForConditionalGeneration, InstructBlipForConditionalGeneration

    from ds_videocap.build import tiny_tokenizer
    from ds_videocap.plan import load_plan_recipe, read_hf_config
    from ds_videocap.processor import save_processor
    from ds_videocap.video import CLIP_MEAN, CLIP_STD

    config = read_hf_config(load_plan_recipe(MODELS[model_key]))
    family = TINY[model_key]
    tok = tiny_tokenizer(family, tokenizer_dir)
    text = config.text_config
    text.vocab_size = len(tok)
    text.pad_token_id, text.eos_token_id = tok.pad_token_id, tok.eos_token_id
    if family == "t5":
        text.decoder_start_token_id = tok.pad_token_id
    else:
        text.bos_token_id = tok.bos_token_id
    config.image_token_index = tok.convert_tokens_to_ids("<image>")
    cls = InstructBlipForConditionalGeneration if config.model_type == "instructblip" else Blip2ForConditionalGeneration
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with torch.device("cuda"):
        model = cls._from_config(config, dtype=torch.bfloat16)
    with torch.no_grad():
        model.query_tokens.normal_(0.0, 0.02)  # transformers zero-initialises them
    model.save_pretrained(out)
    qformer_tok = tok if config.model_type == "instructblip" else None  # InstructBLIP reads qformer_tokenizer/
    save_processor(out, tok, qformer_tok, config.vision_config.image_size, CLIP_MEAN, CLIP_STD,
                   config.num_query_tokens)
    del model
    torch.cuda.empty_cache()
    return out


def _gpu_count() -> int:
    import torch

    return max(1, torch.cuda.device_count())


if __name__ == "__main__":
    sys.exit(main())
