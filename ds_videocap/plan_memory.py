"""Memory arithmetic of the planner: model states under ZeRO 0-3 and offload, activations, allowances.

Pure functions of a ModelSpec (parameter counts and dimensions read from a model built on the meta
device, see plan.py), a Shape (micro-batch, frames, tokens) and one DeepSpeed JSON. All sizes are
bytes. Two precisions:
  device="cuda": what the shipped JSONs run: bf16 parameters and gradients on the GPU, fp32 master
      weights + Adam moments + the fp32 gradient partition of the optimizer (DeepSpeed's own
      estimators count 2 + 18 bytes per trained parameter; we do the same).
  device="cpu": one plain-torch process in fp32 (AdamW, no DeepSpeed): 4 bytes per parameter,
      4 per gradient, 8 for Adam's moments. The accuracy benchmark measures this case.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .ds_json import optimizer_offloaded, param_offloaded, zero_stage

GIB = 1024 ** 3
CUDA_ALLOWANCE = 2.0 * GIB  # CUDA context (~0.5-1 GiB), cuBLAS/NCCL workspaces, allocator fragmentation
CPU_FIRST_STEP = 40 * 1024 ** 2  # CPU: thread pools and kernel caches the first step allocates (measured
                                 # at ~38 MiB with a hidden-64 model by benchmarks/bench_plan_accuracy.py)
RANK_RUNTIME = 3.0 * GIB    # host memory of one rank's process: Python, torch, CUDA libraries, DeepSpeed
PIN_FACTOR = 1.5            # DeepSpeed's additional_buffer_factor: pinned host buffers round up
QUANT_BYTES = {"8bit": 1.0 + 4 / 4096, "4bit": 0.5 + 1 / 64 + 4 / (64 * 256)}  # weights + scales
DS_DEFAULT_BUCKET = 500_000_000  # DeepSpeed's default reduce / prefetch bucket (elements)
DS_DEFAULT_PERSISTENCE = 100_000


@dataclass
class ModelSpec:
    """What the planner needs to know about a model: exact counts from the meta build, and dims."""
    family: str                      # t5 | opt | llama
    params: dict                     # per part: vision, qformer (+ query tokens, projection), llm
    trainable: int                   # after apply_trainable's rules, LoRA included
    lora: int                        # LoRA parameters (part of trainable)
    quantizable: int                 # LLM Linear weights (lm_head excluded) that bitsandbytes packs
    largest_layer: int               # largest parameter set of one module (ZeRO-3 gathers it whole)
    param_sizes: list = field(default_factory=list)  # numel of every parameter (ZeRO-3 persistence)
    dims: dict = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.params.values()) + self.lora  # PEFT adds the adapters next to the base weights

    def persistent(self, threshold: int) -> int:
        """ZeRO-3 keeps parameters below stage3_param_persistence_threshold whole on every rank."""
        return sum(n for n in self.param_sizes if n < threshold)


@dataclass
class Shape:
    micro_batch: int
    frames: int
    fusion: str = "concat"
    prompt_tokens: int = 4
    caption_tokens: int = 50
    train_vit: bool = False
    train_llm: str = "frozen"        # frozen | lora | full
    ckpt_llm: bool = False
    ckpt_vit: bool = False
    quant: str | None = None
    lora_r: int = 8
    lora_in_per_layer: float = 0.0   # summed in_features of the LoRA'd Linears, per LLM layer


def _zero(ds: dict) -> tuple[int, bool, bool, dict]:
    return zero_stage(ds), optimizer_offloaded(ds), param_offloaded(ds), ds.get("zero_optimization") or {}


def estimate_states(spec: ModelSpec, shape: Shape, ds: dict, gpus: int, device: str = "cuda") -> dict:
    """Per-GPU and node-CPU bytes of parameters, gradients and optimizer states (no activations)."""
    stage, off_opt, off_par, zero = _zero(ds)
    e = 2 if device == "cuda" else 4
    opt_bytes = 16 if device == "cuda" else 8  # fp32 master + m + v + fp32 grad partition | m + v
    trainable, frozen = spec.trainable, spec.total - spec.trainable
    quantized = spec.quantizable if shape.quant and shape.train_llm != "full" else 0
    frozen_bytes = (frozen - quantized) * e + quantized * QUANT_BYTES.get(shape.quant or "", e)
    param_bytes = trainable * e + frozen_bytes
    grad_bytes = trainable * e
    opt_total = trainable * opt_bytes
    n = max(1, gpus)
    gpu = {"params": param_bytes, "grads": grad_bytes, "optimizer": opt_total, "buffers": 0.0}
    cpu = {"params": 0.0, "optimizer": 0.0}
    if stage >= 1:
        gpu["optimizer"] = opt_total / n
    if stage >= 2:
        gpu["grads"] = grad_bytes / n
        bucket = zero.get("reduce_bucket_size", DS_DEFAULT_BUCKET)
        gpu["buffers"] += min(bucket, trainable) * e * 2  # reduce bucket, double-buffered (overlap_comm)
    persistent = spec.persistent(zero.get("stage3_param_persistence_threshold", DS_DEFAULT_PERSISTENCE)) * e
    if stage == 3:
        gpu["params"] = (param_bytes - persistent) / n + persistent
        prefetch = zero.get("stage3_prefetch_bucket_size", DS_DEFAULT_BUCKET)
        # gathered working set: the current module, the next one prefetched, and the prefetch bucket
        gpu["buffers"] += (2 * spec.largest_layer + min(prefetch, spec.total)) * e
    if off_opt:
        cpu["optimizer"] = opt_total * PIN_FACTOR  # summed over ranks: the partitions make one copy
        gpu["optimizer"] = 0.0
        gpu["grads"] = 0.0  # reduced gradients go straight to the CPU partition, buckets stay
    if off_par:
        cpu["params"] = (param_bytes - persistent) * PIN_FACTOR
        gpu["params"] = persistent
    return {"stage": stage, "offload_optimizer": off_opt, "offload_param": off_par, "gpu": gpu, "cpu": cpu,
            "model_bytes": param_bytes}


# ----- activations -------------------------------------------------------------------------------
def _layer_saved(rows: int, s: int, h: int, f: int, heads: int, e: int, *, trained: bool,
                 grad_flows: bool, gated: bool = False, eager: bool = True, dropout: bool = False,
                 ffn_dropout: bool = False, rms: bool = False, cross_kv: int = 0) -> float:
    """Bytes autograd saves for one transformer layer of `rows` sequences of `s` tokens.

    A frozen Linear whose input needs no weight gradient saves nothing of its input; gradient still
    flows through it (grad_flows) so norms, activations and attention keep what they save. Dropout
    masks are bool on CUDA (native_dropout) but a full-dtype noise tensor on the CPU (e == 4 here).
    RMS norms (T5, Llama) save an fp32 copy of their input when the model runs in 16 bits.
    """
    if not grad_flows:
        return 0.0
    tok, mask = rows * s, (1 if e == 2 else e)
    norm = e + 4 if rms and e == 2 else e
    saved = 2 * tok * h * norm                   # two norm inputs
    saved += 3 * tok * h * e                     # q, k, v for the attention backward
    saved += tok * h * e                         # attention output
    saved += tok * (3 * f if gated else f) * e   # activation-function inputs (and the gate product)
    if trained:
        saved += 3 * tok * h * e + tok * f * e   # inputs of qkv, out and fc1 projections, fc2 input
    if eager:  # softmax output, and with dropout its mask and the dropped copy (the PV matmul's input)
        saved += rows * heads * s * s * (e + (mask + e if dropout else 0))
    if dropout:
        saved += 2 * tok * h * mask + (tok * f * mask if ffn_dropout else 0)  # residual (and FFN) masks
    if cross_kv:  # cross-attention: its norm input, q, output, K and V of the encoder tokens, scores
        saved += tok * h * (norm + 2 * e) + 2 * rows * cross_kv * h * e + (tok * h * mask if dropout else 0)
        if eager:
            saved += rows * heads * s * cross_kv * (e + (mask + e if dropout else 0))
    return saved


def _ckpt(per_layer: float, layers: int, rows: int, s: int, h: int, e: int, on: bool) -> tuple[float, float]:
    """(saved, transient): checkpointing keeps each layer's input and recomputes one layer at a time."""
    if not on:
        return per_layer * layers, 0.0
    return rows * s * h * e * layers, per_layer


def _frozen_vit_layer(spec: ModelSpec, frames: int, e: int, device: str) -> float:
    """Working set of one ViT layer run without grad (eager attention's scores on the CPU)."""
    d = spec.dims
    nv, hv, fv, av = d["vision_tokens"], d["vision_hidden"], d["vision_ffn"], d["vision_heads"]
    return frames * nv * e * (6 * hv + 2 * fv) + (frames * av * nv * nv * e if device == "cpu" else 0)


def estimate_activations(spec: ModelSpec, shape: Shape, device: str = "cuda", rows_per_video: int = 1) -> dict:
    """Bytes of activations for one micro-batch of CE training, per part (saved for backward) and
    the largest transient working set (a frozen ViT layer, a recomputed layer, the logits).

    rows_per_video > 1 is SCST's policy-gradient pass: the visual tokens are computed once per video
    and repeated for its K sampled captions, so the LLM (and the logits) see micro_batch x K rows.
    """
    d, e, b, t = spec.dims, (2 if device == "cuda" else 4), shape.micro_batch, shape.frames
    eager_llm = device == "cpu" or shape_is_t5(spec)  # SDPA kernels on CUDA save no score matrix
    frames, nv = b * t, d["vision_tokens"]
    hv, fv, av = d["vision_hidden"], d["vision_ffn"], d["vision_heads"]
    vit_layer = _layer_saved(frames, nv, hv, fv, av, e, trained=shape.train_vit, grad_flows=shape.train_vit,
                             eager=device == "cpu")
    vit_saved, vit_transient = _ckpt(vit_layer, d["vision_layers"], frames, nv, hv, e, shape.ckpt_vit)
    if not shape.train_vit:  # runs without saving anything: one layer's working set at a time
        vit_transient = _frozen_vit_layer(spec, frames, e, device)
    vit_out = frames * nv * hv * e * 2  # post-norm output (+ the frame-embedding sum), the Q-Former's K/V input

    concat = shape.fusion == "concat"
    rows_q, kv = (b, t * nv) if concat else (frames, nv)
    q, hq, fq = d["query_tokens"], d["qformer_hidden"], d["qformer_ffn"]
    qf = 0.0
    for i in range(d["qformer_layers"]):
        cross = kv if i % d["qformer_cross_freq"] == 0 else 0
        qf += _layer_saved(rows_q, q, hq, fq, d["qformer_heads"], e, trained=True, grad_flows=True,
                           eager=device == "cpu", dropout=True, cross_kv=cross)
    qf += rows_q * kv * hv * e  # encoder states, saved as the K/V projections' input

    llm_q = q if concat else t * q
    hl, fl, heads, layers = d["llm_hidden"], d["llm_ffn"], d["llm_heads"], d["llm_layers"]
    trained, gated, drop = shape.train_llm == "full", d["llm_gated"], d["llm_dropout"]
    t5, mask = spec.family == "t5", (1 if e == 2 else e)
    common = dict(trained=trained, grad_flows=True, gated=gated, dropout=drop, rms=spec.family != "opt")
    # LoRA: dropout(x) is saved as lora_A's input, with its mask, for every adapted Linear
    lora = shape.lora_in_per_layer * (e + mask) if shape.train_llm == "lora" else 0
    caption = shape.caption_tokens
    b = b * rows_per_video  # from here on: LLM rows
    if spec.family == "t5":
        enc_s = llm_q + shape.prompt_tokens
        enc = _layer_saved(b, enc_s, hl, fl, heads, e, eager=True, ffn_dropout=t5, **common) + b * enc_s * lora
        dec = (_layer_saved(b, caption, hl, fl, heads, e, eager=True, ffn_dropout=t5, cross_kv=enc_s, **common)
               + b * caption * lora)
        enc_saved, enc_tr = _ckpt(enc, layers, b, enc_s, hl, e, shape.ckpt_llm)
        dec_saved, dec_tr = _ckpt(dec, d["llm_decoder_layers"], b, caption, hl, e, shape.ckpt_llm)
        llm_saved, llm_transient, logit_s = enc_saved + dec_saved, max(enc_tr, dec_tr), caption
    else:
        s = llm_q + shape.prompt_tokens + caption
        per = _layer_saved(b, s, hl, fl, heads, e, eager=eager_llm, **common) + b * s * lora
        llm_saved, llm_transient = _ckpt(per, layers, b, s, hl, e, shape.ckpt_llm)
        logit_s = s
    # lm_head output in the compute dtype, its fp32 copy and log-softmax for the caption positions
    logits = b * d["vocab"] * (logit_s * e + 2 * caption * 4)
    transient = max(vit_transient, llm_transient)
    return {"vit": vit_saved + vit_out, "qformer": qf, "llm": llm_saved, "logits": logits,
            "transient": transient, "total": vit_saved + vit_out + qf + llm_saved + logits + transient}


def estimate_rollout(spec: ModelSpec, shape: Shape, samples: int, device: str = "cuda") -> float:
    """Bytes of one SCST rollout: generate() under no_grad, K samples per video, shape.caption_tokens
    new tokens each. Nothing is saved for backward; what peaks is the key/value cache of micro_batch x K
    sequences at full length, the visual prefix repeated K times, the prefill's working set of one layer,
    and each step's fp32 next-token scores (logits, processed scores, probabilities).
    """
    d, e, b, t = spec.dims, (2 if device == "cuda" else 4), shape.micro_batch, shape.frames
    rows, new, hl = b * samples, shape.caption_tokens, d["llm_hidden"]
    # What the decoder attends to before the first new token: the visual tokens and the prompt (T5: its
    # encoder's output, whose cross-attention K/V every decoder layer caches beside its self-attention K/V).
    prefix = d["query_tokens"] * (1 if shape.fusion == "concat" else t) + shape.prompt_tokens
    layers = d["llm_decoder_layers"] if shape_is_t5(spec) else d["llm_layers"]
    cache = 2 * layers * rows * (prefix + new) * hl * e + rows * prefix * hl * e  # K/V + the repeated prefix
    prefill = rows * prefix * e * (4 * hl + 2 * d["llm_ffn"])
    if device == "cpu" or shape_is_t5(spec):  # eager attention keeps the prefill's score matrix
        prefill += rows * d["llm_heads"] * prefix * prefix * e
    scores = 3 * rows * d["vocab"] * 4
    return max(_frozen_vit_layer(spec, b * t, e, device), cache + prefill + scores)


def shape_is_t5(spec: ModelSpec) -> bool:
    return spec.family == "t5"  # T5's relative position bias keeps it on eager attention


def estimate_phases(spec: ModelSpec, ce: Shape | None, scst: Shape | None, samples: int,
                    device: str = "cuda") -> dict:
    """Activations of the phases a recipe runs; the plan takes the larger (they never coexist).

    `scst` is the SCST micro-batch's shape with caption_tokens = scst.max_new_tokens: its peak is the
    larger of the rollout and the policy-gradient pass over micro_batch x K sampled captions.
    """
    out = {}
    if ce is not None:
        out["ce"] = estimate_activations(spec, ce, device)
    if scst is not None:
        acts = estimate_activations(spec, scst, device, rows_per_video=samples)
        rollout = estimate_rollout(spec, scst, samples, device)
        out["scst"] = dict(acts, rollout=rollout, total=max(acts["total"], rollout))
    phase = max(out, key=lambda k: out[k]["total"])
    return dict(out[phase], phase=phase, **{f"{k}_total": v["total"] for k, v in out.items()})


def estimate_config(spec: ModelSpec, shape: Shape, ds: dict, gpus: int, device: str = "cuda",
                    scst: Shape | None = None, samples: int = 0, ce: bool = True) -> dict:
    """Everything for one DeepSpeed JSON: per-GPU bytes, node CPU bytes and their breakdown.

    `shape` is CE's micro-batch; `scst`, when the recipe runs SCST, its micro-batch (see estimate_phases).
    """
    states = estimate_states(spec, shape, ds, gpus, device)
    acts = estimate_phases(spec, shape if ce or scst is None else None, scst, samples, device)
    gpu_parts = dict(states["gpu"], activations=acts["total"])
    gpu_parts["runtime"] = CUDA_ALLOWANCE if device == "cuda" else CPU_FIRST_STEP
    gpu = sum(gpu_parts.values())
    n = max(1, gpus)
    cpu_parts = dict(states["cpu"])
    if device == "cuda":
        cpu_parts["runtime"] = RANK_RUNTIME * n
        # Loading comes before the offloaded states exist: below ZeRO-3 every rank materialises the whole
        # bf16 model on the host before moving it to its GPU; ZeRO-3 partitions it as it loads (one copy
        # over the node), and with offload_param that copy is the one counted under params.
        load = 0.0 if states["offload_param"] else states["model_bytes"] * (n if states["stage"] < 3 else 1)
        cpu_parts["load_peak"] = max(0.0, load - sum(states["cpu"].values()))
    return {"stage": states["stage"], "offload_optimizer": states["offload_optimizer"],
            "offload_param": states["offload_param"], "gpu_bytes": gpu, "cpu_bytes": sum(cpu_parts.values()),
            "gpu_breakdown": gpu_parts, "cpu_breakdown": cpu_parts, "activations": acts}


def speed_rank(result: dict) -> tuple:
    """Fastest first: lower ZeRO stage, then no offload. ZeRO-3 gathers every (frozen too) weight
    each step, which costs more than moving the small trained set's optimizer to the CPU."""
    return (result["offload_param"], result["stage"] == 3, result["stage"], result["offload_optimizer"])
