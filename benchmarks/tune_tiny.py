"""Fast single-process tuning of the tiny from-scratch captioner on the synthetic set (no DeepSpeed).

    python benchmarks/tune_tiny.py --steps 400 --patch 4 --tag p4
    python benchmarks/tune_tiny.py --steps 400 --pos-std 0.02 --frame-std 0.02 --tag std002

Builds the tiny folder with ds_videocap.build.build_tiny_folder (the knobs below override its
defaults; init stds are re-drawn after build_model), trains with plain AdamW (weight decay 0.05 on
matrices, gradient clipping 1.0, as the launcher's DeepSpeed configs do) under engine.lr_at, and
evaluates greedy captions on the val split: CE loss, CIDEr (pycocoevalcap) and attribute accuracy.
The decoded clips (all 16 frames, uint8) are cached in /tmp once; training samples T frames per clip
with the launcher's random_segment rule, evaluation the uniform one. Optional SCST (--scst-steps)
follows the repository's scst step (K samples, mean-of-others baseline, CIDEr-D reward). Still-frame
experiments (tiny_stills.py): --stills-steps N trains on fresh stills with still captions before CE,
--mix-stills K adds K static still clips to every CE batch. --video-stage-steps N trains the visual side
alone first (ViT, frame embedding, Q-Former, projection: the vision stage's balanced regression, on each
clip's caption vector). --motion-tokens turns on model.motion_tokens (ds_videocap/motion.py), and
--conv-tokens FILE model.conv_tokens from a stills-trained state (probe_conv_tokens.py); --motion-input KIND
gives the frame differences the other ways tried before it (add_motion_input). Evaluations also give the
accuracies on the two-object clips alone (two_*).
Prints one JSON line per evaluation; --out appends them to a file.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ds_videocap.annotations import read_annotations  # noqa: E402
from ds_videocap.captions import normalize_caption  # noqa: E402
from ds_videocap.cooccur import cooccurrence_table  # noqa: E402
from ds_videocap.synth_captions import attribute_accuracy  # noqa: E402
from ds_videocap.video import CLIP_MEAN, CLIP_STD, read_frames, sample_indices  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_stills import StillStream  # noqa: E402

MOTION_LR_MULT = 1.0  # --motion-lr-mult: the learning rate of add_motion_input's parameters over the others'
SHAPE_LABELS = ("circle", "square", "triangle")  # --label-weight's classes (the diagnostic only)


def load_split(synth: Path, split: str):
    clips = read_annotations(synth / "annotations" / f"cap_{split}.json", synth / "videos")
    # keyed to the set's READY stamp (videos, seed): a regenerated set must not reuse another set's frames
    stamp = json.loads((synth / "READY").read_text())
    cache = Path(tempfile.gettempdir()) / f"tune_tiny_{split}_{len(clips)}_seed{stamp['seed']}_{stamp['videos']}.npy"
    if cache.is_file():
        frames = np.load(cache)
    else:
        frames = np.stack([read_frames(c.video, "uniform", 16, 32, backend="pyav") for c in clips])
        np.save(cache, frames)
    return clips, frames  # (N, 16, 32, 32, 3) uint8


def to_pixels(frames: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(frames).permute(0, 1, 4, 2, 3).float()  # (B, T, 3, H, W)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 1, 3, 1, 1)
    return (x / 255.0 - mean) / std


def pick_frames(frames: np.ndarray, idx: np.ndarray, T: int, rng, train: bool) -> torch.Tensor:
    rows = []
    for i in idx:
        sel = sample_indices("random_segment" if train else "uniform", frames.shape[1], T, rng)
        rows.append(frames[i, sel])
    return to_pixels(np.stack(rows))


def build(args):
    from ds_videocap.build import build_model, build_tiny_folder
    from ds_videocap.recipe_io import load_recipe

    folder = Path(tempfile.mkdtemp(prefix="tune_tiny_"))
    kw = dict(image_size=32, seed=args.seed)
    for name in ("patch_size", "vision_hidden", "vision_layers", "qformer_hidden", "qformer_layers",
                 "num_query_tokens", "llm_hidden", "llm_layers"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    build_tiny_folder(args.family, args.synth / "tokenizer", folder, **kw)
    cfg = load_recipe(args.recipe)
    cfg.model.path = str(folder)
    cfg.model.tiny = None
    cfg.model.frame_embedding = not args.no_frame_embedding
    cfg.model.fusion = args.fusion or cfg.model.fusion
    cfg.model.motion_tokens = args.motion_tokens
    cfg.model.motion_patch = args.motion_patch
    cfg.model.conv_tokens = args.conv_tokens is not None
    model = build_model(cfg.model, cfg.lora, word_head_pool=args.words_pool if args.words_weight else None)
    if args.stem:  # early convolutions before the patch embedding (probe_shape.ConvStem); --init-vit must match
        from probe_shape import ConvStem
        embeddings = model.hf.vision_model.embeddings
        embeddings.patch_embedding = ConvStem(3, args.stem, embeddings.patch_embedding)
    g = torch.Generator().manual_seed(args.seed + 1)
    with torch.no_grad():
        if args.pos_std is not None:
            pe = model.hf.vision_model.embeddings.position_embedding
            pe.copy_(torch.randn(pe.shape, generator=g) * args.pos_std)
        if args.frame_std is not None and model.frame_embedding is not None:
            fe = model.frame_embedding
            fe.copy_(torch.randn(fe.shape, generator=g) * args.frame_std)
        if args.patch_std is not None:
            w = model.hf.vision_model.embeddings.patch_embedding.weight
            std = args.patch_std if args.patch_std > 0 else 1.0 / math.sqrt(w[0].numel())  # <=0: fan-in
            w.copy_(torch.randn(w.shape, generator=g) * std)
    if args.linear_init == "fan_in":  # nn.Linear weights at std 1/sqrt(fan-in) instead of the configs' 0.02
        parts = {"vit": ("vision_model",), "vit_qformer": ("vision_model", "qformer"),
                 "all": ("vision_model", "qformer", "language_projection", "language_model")}[args.linear_init_scope]
        with torch.no_grad():
            for name, m in model.hf.named_modules():
                if isinstance(m, torch.nn.Linear) and name.startswith(parts) and not name.endswith("lm_head"):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * m.weight.shape[1] ** -0.5)
    if args.xattn_std is not None:  # sharper initial Q-Former cross-attention (query/key projections)
        with torch.no_grad():
            for name, w in model.hf.qformer.named_parameters():
                if "crossattention.attention." in name and name.endswith(("query.weight", "key.weight")):
                    w.copy_(torch.randn(w.shape, generator=g) * args.xattn_std)
    if args.dropout is not None:
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = args.dropout
            elif isinstance(getattr(m, "dropout", None), float):  # OPT's layers call F.dropout(p=self.dropout)
                m.dropout = args.dropout
    return model


def add_motion_input(model, kind):
    """The ways of giving the captioner frame differences d_t = x_{t+1} - x_t (the last frame repeats the one
    before) tried before motion.py (benchmarks/README.md, fourteenth round): "pixel" adds M d_t to the frame
    (M 3x3, zero-init); "patch" adds a zero-init patch embedding of d_t to the frame's patch embedding;
    "frames" runs d_t through the ViT as T more frames; "tokens" / "mlp" / "tubelet" give the Q-Former
    more keys: a patch embedding of d_t (then GELU + linear for "mlp", of [x_t, x_t+1] for "tubelet") plus
    the ViT's own position embeddings, LayerNorm'd. motion.py is "mlp" with a position table of its own."""
    import types
    emb = model.hf.vision_model.embeddings.patch_embedding
    original = model.encode_visual

    def deltas(px):
        if px.shape[1] < 2:
            return torch.zeros_like(px)
        d = px[:, 1:] - px[:, :-1]
        return torch.cat([d, d[:, -1:]], 1)

    if kind == "frames":  # the differences as T more frames through the same ViT (frame embedding rows T..2T-1)
        def encode(self, px):
            return original(torch.cat([px, deltas(px)], 1))
        model.encode_visual = types.MethodType(encode, model)
        return
    if kind in ("tokens", "tubelet", "mlp"):  # more Q-Former keys: a patch embedding of d + the ViT's positions
        chans = 6 if kind == "tubelet" else 3
        model.motion_patch = torch.nn.Conv2d(chans, emb.out_channels, emb.kernel_size, emb.stride, bias=False)
        if kind == "mlp":
            model.motion_mlp = torch.nn.Sequential(torch.nn.GELU(), torch.nn.Linear(emb.out_channels, emb.out_channels))
        model.motion_norm = torch.nn.LayerNorm(emb.out_channels)
        vision = model.hf.vision_model
        state = {}

        def add_tokens(m, i, out):
            if "d" not in state:
                return out
            t = model.motion_patch(state["d"]).flatten(2).transpose(1, 2)
            if kind == "mlp":
                t = model.motion_mlp(t)
            t = model.motion_norm(t + vision.embeddings.position_embedding[:, 1:].to(t.dtype))
            out.last_hidden_state = torch.cat([out.last_hidden_state, t], 1)
            return out
        vision.register_forward_hook(add_tokens)

        def encode(self, px):
            d = deltas(px)
            state["d"] = (torch.cat([px, px + d], 2) if kind == "tubelet" else d).flatten(0, 1)
            try:
                return original(px)
            finally:
                state.pop("d")
        model.encode_visual = types.MethodType(encode, model)
        return
    if kind == "pixel":
        model.motion_mix = torch.nn.Parameter(torch.zeros(3, 3))

        def encode(self, px):
            return original(px + torch.einsum("ij,btjhw->btihw", self.motion_mix, deltas(px)))
    else:
        model.motion_patch = torch.nn.Conv2d(3, emb.out_channels, emb.kernel_size, emb.stride, bias=False)
        torch.nn.init.zeros_(model.motion_patch.weight)
        state = {}
        emb.register_forward_hook(lambda m, i, o: o + model.motion_patch(state["d"]) if "d" in state else o)

        def encode(self, px):
            state["d"] = deltas(px).flatten(0, 1)
            try:
                return original(px)
            finally:
                state.pop("d")
    model.encode_visual = types.MethodType(encode, model)


def evaluate(model, clips, frames, T, max_new_tokens=16, batch=100, num_beams=1):
    from ds_videocap.evaluate import score_split

    model.eval()
    caps = {}
    with torch.no_grad():
        for s in range(0, len(clips), batch):
            idx = np.arange(s, min(s + batch, len(clips)))
            px = pick_frames(frames, idx, T, None, train=False)
            seqs = model.generate(px, num_beams=num_beams, max_new_tokens=max_new_tokens,
                                  min_new_tokens=3 if num_beams > 1 else 0)
            for i, c in zip(idx, model.decode(seqs)):
                caps[clips[i].video_id] = c
    model.train()
    scores = score_split(caps, clips)
    keep = ("CIDEr", "color_acc", "shape_acc", "motion_acc", "all_acc")
    out = {k: round(float(scores[k]), 4) for k in keep}
    two = {c.video_id: c.attributes for c in clips if len(c.attributes.get("colors", ())) == 2}
    out.update({f"two_{k}": round(v, 4) for k, v in attribute_accuracy(caps, two).items()})
    return out, caps


def decay_groups(model, wd, vit_lr_mult=1.0, llm_lr_mult=1.0):
    """AdamW groups: decay on matrices only; the ViT's and LLM's groups carry lr_mult (scaled in the schedule)."""
    groups = {}
    for n, p in model.named_parameters():
        if p.requires_grad:
            decay = not (p.ndim < 2 or "norm" in n.lower() or n.endswith(".bias"))
            mult = vit_lr_mult if "vision_model" in n else llm_lr_mult if "language_model" in n else 1.0
            mult = MOTION_LR_MULT if n.startswith("motion_") else mult
            groups.setdefault((decay, mult), []).append(p)
    return [{"params": ps, "weight_decay": wd if decay else 0.0, "lr_mult": mult}
            for (decay, mult), ps in groups.items()]


def emit(args, record):
    record = {"tag": args.tag, **record}
    line = json.dumps(record)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--synth", type=Path, default=ROOT / "data" / "synth")
    p.add_argument("--val-synth", type=Path, default=None,
                   help="evaluate on this set's val split (default --synth); draw it with another seed")
    p.add_argument("--recipe", default="synth")
    p.add_argument("--family", default="opt")
    p.add_argument("--tag", default="run")
    p.add_argument("--out", default=None)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--total-steps", type=int, default=None, help="schedule length (default --steps)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--beta2", type=float, default=0.999, help="AdamW's second-moment decay (ce.betas[1])")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr", type=float, default=1e-5)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--wd", type=float, default=0.05)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--patch-size", type=int, default=None)
    p.add_argument("--vision-hidden", type=int, default=None)
    p.add_argument("--vision-layers", type=int, default=None)
    p.add_argument("--qformer-hidden", type=int, default=None)
    p.add_argument("--qformer-layers", type=int, default=None)
    p.add_argument("--num-query-tokens", type=int, default=None)
    p.add_argument("--llm-hidden", type=int, default=None)
    p.add_argument("--llm-layers", type=int, default=None)
    p.add_argument("--pos-std", type=float, default=None, help="re-draw the ViT position embedding")
    p.add_argument("--frame-std", type=float, default=None, help="re-draw the frame-index embedding")
    p.add_argument("--patch-std", type=float, default=None, help="re-draw the patch embedding (<=0: 1/sqrt(fan_in))")
    p.add_argument("--linear-init", default="0.02", choices=("0.02", "fan_in"))
    p.add_argument("--linear-init-scope", default="vit", choices=("vit", "vit_qformer", "all"))
    p.add_argument("--xattn-std", type=float, default=None, help="re-draw Q-Former cross-attention q/k")
    p.add_argument("--dropout", type=float, default=None,
                   help="every dropout p (nn.Dropout, OPT's floats); default: the folder's 0, as in the main job")
    p.add_argument("--no-frame-embedding", action="store_true")
    p.add_argument("--fusion", default=None, help="concat | per_frame (default: the recipe's)")
    p.add_argument("--vit-lr-mult", type=float, default=1.0, help="the ViT's learning rate over the others' in CE")
    p.add_argument("--llm-lr-mult", type=float, default=1.0, help="the LLM's learning rate over the others' in CE")
    p.add_argument("--itc-weight", type=float, default=0.0, help="contrastive term in CE (ds_videocap/align.py)")
    p.add_argument("--itc-temperature", type=float, default=0.1)
    p.add_argument("--itc-pool", default="mean", help="caption pooling of the contrastive term: mean | idf")
    p.add_argument("--itc-all-refs", action="store_true", help="contrastive text side: mean over all references")
    p.add_argument("--itc-text-side", default="embedding", help="embedding | detached | random | cooccur (align.py)")
    p.add_argument("--itc-text-rank", type=int, default=16, help="the cooccur text side's dimensions (cooccur.py)")
    p.add_argument("--itc-swap", action="store_true", help="swapped-word caption negatives (ce.itc_swap_negatives)")
    p.add_argument("--words-weight", type=float, default=0.0, help="word-head term in CE (ds_videocap/words.py)")
    p.add_argument("--words-pool", default="mean", help="the word head's pooling: mean | max")
    p.add_argument("--scst-steps", type=int, default=0)
    p.add_argument("--scst-lr", type=float, default=2e-5)
    p.add_argument("--scst-min-lr", type=float, default=None, help="default scst-lr / 10")
    p.add_argument("--scst-batch", type=int, default=32)
    p.add_argument("--scst-k", type=int, default=5)
    p.add_argument("--scst-advantage", default="raw", help="raw | group_norm")
    p.add_argument("--scst-ce-weight", type=float, default=0.0)
    p.add_argument("--scst-temperature", type=float, default=1.0)
    p.add_argument("--scst-eval-every", type=int, default=50)
    p.add_argument("--stills-steps", type=int, default=0, help="a still-frame stage before CE (tiny_stills.py)")
    p.add_argument("--stills-batch", type=int, default=128)
    p.add_argument("--stills-lr", type=float, default=1e-3)
    p.add_argument("--stills-itc", type=float, default=None, help="its contrastive weight (default: --itc-weight)")
    p.add_argument("--stills-keep", default="all", choices=("all", "vit"),
                   help="what the video stage keeps of the stills stage: everything, or only the ViT")
    p.add_argument("--freeze-vit", action="store_true", help="the video stage keeps the ViT frozen (as BLIP-2)")
    p.add_argument("--mix-stills", type=int, default=0, help="static still clips added to each CE batch")
    p.add_argument("--stem", type=int, default=0, help="a 3x3 conv of this many channels before the patch embedding")
    p.add_argument("--init-vit", default=None,
                   help="start from this ViT state dict (probe_frame_targets.py --save-vit): a pretrained vision tower")
    p.add_argument("--label-weight", type=float, default=0.0,
                   help="DIAGNOSTIC ONLY, it reads the set's shape labels: a per-frame shape classifier on the ViT, "
                        "trained jointly (an upper bound for any caption-derived vision term)")
    p.add_argument("--video-stage-steps", type=int, default=0,
                   help="before CE: ViT+Q-Former regress each clip's caption vector (balanced axes)")
    p.add_argument("--video-stage-lr", type=float, default=1e-3)
    p.add_argument("--video-stage-rank", type=int, default=16)
    p.add_argument("--video-stage-balance", type=float, default=2.0)
    p.add_argument("--video-stage-batch", type=int, default=64)
    p.add_argument("--motion-tokens", action=argparse.BooleanOptionalAction, default=False,
                   help="model.motion_tokens (ds_videocap/motion.py)")
    p.add_argument("--motion-patch", type=int, default=None, help="model.motion_patch (default: the ViT's)")
    p.add_argument("--conv-tokens", default=None,
                   help="model.conv_tokens, starting from this probe_conv_tokens.py --save state dict")
    p.add_argument("--motion-input", default="none",
                   choices=("none", "pixel", "patch", "frames", "tokens", "tubelet", "mlp"),
                   help="the variants tried before motion.py (add_motion_input)")
    p.add_argument("--motion-lr-mult", type=float, default=1.0, help="--motion-input parameters' lr multiplier")
    p.add_argument("--clip", type=float, default=1.0, help="gradient clipping norm (logged as grad_norm)")
    p.add_argument("--save", default=None, help="save the CE state_dict here")
    p.add_argument("--load", default=None, help="skip CE: load this state_dict")
    return p


def main():
    args = parser().parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    train_clips, train_frames = load_split(args.synth, "train")
    val_clips, val_frames = load_split(args.val_synth or args.synth, "val")
    refs = [[normalize_caption(c, 50) for c in clip.captions] for clip in train_clips]
    model = build(args)
    if args.motion_input != "none":
        add_motion_input(model, args.motion_input)
        global MOTION_LR_MULT
        MOTION_LR_MULT = args.motion_lr_mult
    if args.itc_text_side == "cooccur":
        ids = [model.caption_ids(clip) for clip in refs]
        model.text_table, _ = cooccurrence_table(ids, model.language_model.get_input_embeddings().num_embeddings,
                                              args.itc_text_rank)
    n_params = sum(p.numel() for p in model.parameters())
    # which set: `data synth` and the main job redraw data/synth with their seed, so the path alone does not say
    ready = json.loads((args.synth / "READY").read_text())
    emit(args, {"event": "config", "params": n_params, "synth_ready": ready,
                **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}})
    from ds_videocap.optim import lr_at

    rng = np.random.default_rng(args.seed)
    stills = StillStream(np.random.default_rng(args.seed + 2))
    if args.stills_steps:
        run_stills(args, model, stills, val_clips, val_frames)
        if args.stills_keep == "vit":  # a fresh Q-Former, projection and LLM on the still-trained ViT
            vit, table = model.hf.vision_model.state_dict(), model.text_table
            model = build(args)
            model.hf.vision_model.load_state_dict(vit)
            model.text_table = table
    if args.init_vit:
        model.hf.vision_model.load_state_dict(torch.load(args.init_vit))
    if args.conv_tokens:  # trained on stills first, as the vision stage trains them
        model.conv_tokens.load_state_dict(torch.load(args.conv_tokens))
    if args.freeze_vit:
        model.hf.vision_model.requires_grad_(False)
    if args.video_stage_steps:
        run_video_stage(args, model, train_clips, train_frames, rng)
    if args.load:
        model.load_state_dict(torch.load(args.load))
    else:
        groups = decay_groups(model, args.wd, args.vit_lr_mult, args.llm_lr_mult)
        if args.label_weight:
            label_head = torch.nn.Linear(model.hf.vision_model.config.hidden_size, len(SHAPE_LABELS))
            groups.append({"params": list(label_head.parameters()), "weight_decay": 0.0, "lr_mult": 1.0})
        opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, args.beta2))
        total = args.total_steps or args.steps
        order, pos, losses, t0 = rng.permutation(len(train_clips)), 0, [], time.time()
        model.train()
        for step in range(args.steps):
            if pos + args.batch > len(order):
                order, pos = rng.permutation(len(train_clips)), 0
            idx = order[pos:pos + args.batch]
            pos += args.batch
            px = pick_frames(train_frames, idx, args.frames, rng, train=True)
            caps = [refs[i][rng.integers(len(refs[i]))] for i in idx]
            if args.mix_stills:  # a still repeated over the clip's frames: a static clip, a still's caption
                still_frames, still_caps = stills.draw(args.mix_stills)
                px = torch.cat([px, to_pixels(np.repeat(still_frames[:, None], args.frames, axis=1))])
                caps += still_caps
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, args.warmup, args.lr, args.min_lr) * g["lr_mult"]
            inputs = model.encode_text(caps)
            batch_refs = model.encode_references([refs[i] for i in idx])
            all_refs = batch_refs if args.itc_all_refs else None
            loss = model(pixel_values=px, **inputs, itc_weight=args.itc_weight, itc_temperature=args.itc_temperature,
                         itc_text_pool=args.itc_pool, itc_swap_negatives=args.itc_swap, itc_references=all_refs,
                         itc_text_side=args.itc_text_side, words_weight=args.words_weight,
                         word_references=batch_refs)
            if args.label_weight:  # the diagnostic: single-object clips' shape label on every frame (a second ViT pass)
                shapes = [train_clips[i].attributes["shapes"] for i in idx]
                labels = torch.tensor([SHAPE_LABELS.index(s[0]) if len(s) == 1 else -100 for s in shapes])
                feats = model.hf.vision_model(pixel_values=px.flatten(0, 1)).last_hidden_state.mean(1)
                label_loss = torch.nn.functional.cross_entropy(
                    label_head(feats), labels.repeat_interleave(px.shape[1]), ignore_index=-100)
                loss = loss + args.label_weight * label_loss
                model.last_loss_parts["label_loss"] = label_loss.detach()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            model.last_loss_parts["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
            losses.append(loss.item())
            parts = {k: round(v.item(), 4) for k, v in model.last_loss_parts.items()}
            done = step + 1
            if done % args.log_every == 0:
                emit(args, {"event": "ce", "step": done, "loss": round(float(np.mean(losses)), 4), **parts,
                            "s_per_step": round((time.time() - t0) / done, 3)})
                losses = []
            if (args.eval_every and done % args.eval_every == 0) or done == args.steps:
                scores, caps_out = evaluate(model, val_clips, val_frames, args.frames)
                emit(args, {"event": "eval", "phase": "ce", "step": done, **scores,
                            "example": list(caps_out.values())[:3]})
        if args.save:
            torch.save(model.state_dict(), args.save)
    if args.scst_steps:
        run_scst(args, model, train_clips, train_frames, val_clips, val_frames, refs, rng)


def run_video_stage(args, model, train_clips, train_frames, rng):
    """The visual side alone (ViT, frame embedding, Q-Former, projection) regresses each clip's caption
    vector (vision_stage.caption_vectors over its references), axes balanced by their loss rates."""
    from ds_videocap.vision_stage import balanced_loss, caption_vectors

    targets, spectrum = caption_vectors([c.captions for c in train_clips], args.video_stage_rank, 50)
    emit(args, {"event": "video_stage", "spectrum": spectrum[:24]})
    width = model.hf.language_projection.out_features
    head = torch.nn.Linear(width, args.video_stage_rank)
    params = [p for n, p in model.named_parameters() if p.requires_grad and "language_model" not in n]
    params += list(head.parameters())
    opt = torch.optim.AdamW(params, lr=args.video_stage_lr, weight_decay=args.wd)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.video_stage_lr, total_steps=args.video_stage_steps,
                                                pct_start=0.1)
    state, t0, losses = {}, time.time(), []
    model.train()
    for step in range(args.video_stage_steps):
        idx = rng.choice(len(train_clips), args.video_stage_batch, replace=False)
        px = pick_frames(train_frames, idx, args.frames, rng, train=True)
        pred = head(model.encode_visual(px).float().mean(1))
        per_axis = ((pred - targets[torch.as_tensor(idx)]) ** 2).mean(0)
        loss = balanced_loss(per_axis, state, args.video_stage_balance)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, args.clip)
        opt.step()
        sched.step()
        losses.append(per_axis.detach().mean().item())
        if (step + 1) % args.log_every == 0:
            emit(args, {"event": "video_stage", "step": step + 1, "loss": round(float(np.mean(losses)), 4),
                        "axes": [round(x, 3) for x in per_axis.tolist()],
                        "s_per_step": round((time.time() - t0) / (step + 1), 3)})
            losses = []


def run_stills(args, model, stills, val_clips, val_frames):
    """Captioning single fresh stills (one frame each) with the caption loss and contrastive term."""
    from ds_videocap.optim import lr_at

    opt = torch.optim.AdamW(decay_groups(model, args.wd), lr=args.stills_lr)
    itc = args.itc_weight if args.stills_itc is None else args.stills_itc
    t0, losses = time.time(), []
    model.train()
    for step in range(args.stills_steps):
        frames, caps = stills.draw(args.stills_batch)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.stills_steps, 50, args.stills_lr, args.stills_lr / 20)
        # the video stage's text side and pooling (one caption a still: no references to average)
        loss = model(pixel_values=to_pixels(frames[:, None]), **model.encode_text(caps), itc_weight=itc,
                     itc_temperature=args.itc_temperature, itc_text_side=args.itc_text_side,
                     itc_text_pool=args.itc_pool)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % args.log_every == 0:
            emit(args, {"event": "stills", "step": step + 1, "loss": round(float(np.mean(losses)), 4),
                        "s_per_step": round((time.time() - t0) / (step + 1), 3), "example": caps[0]})
            losses = []
    scores, caps_out = evaluate(model, val_clips, val_frames, args.frames)
    emit(args, {"event": "eval", "phase": "stills", **scores, "example": list(caps_out.values())[:3]})


def run_scst(args, model, train_clips, train_frames, val_clips, val_frames, refs, rng):
    from ds_videocap.optim import lr_at
    from ds_videocap.reward import CiderD
    from ds_videocap.scst import compute_baseline, policy_loss
    from ds_videocap.scst_advantage import compute_advantages

    scores, _ = evaluate(model, val_clips, val_frames, args.frames)
    emit(args, {"event": "eval", "phase": "scst", "step": 0, **scores})
    reward = CiderD.from_corpus([c.captions for c in train_clips])
    opt = torch.optim.AdamW(decay_groups(model, args.wd), lr=args.scst_lr)
    min_lr = args.scst_min_lr if args.scst_min_lr is not None else args.scst_lr / 10
    k, t0, log = args.scst_k, time.time(), []
    for step in range(args.scst_steps):
        idx = rng.choice(len(train_clips), args.scst_batch, replace=False)
        px = pick_frames(train_frames, idx, args.frames, rng, train=True)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.scst_steps, 0, args.scst_lr, min_lr)
        model.eval()
        with torch.no_grad():
            samples = model.generate(px, do_sample=True, num_return_sequences=k, temperature=args.scst_temperature,
                                     top_k=0, max_new_tokens=16)
        model.train()
        captions = model.decode(samples)
        rewards = reward.score(captions, [train_clips[i].captions for i in idx for _ in range(k)]).reshape(-1, k)
        baseline = compute_baseline(rewards, "mean_others")
        adv = torch.as_tensor(compute_advantages(rewards, baseline, args.scst_advantage).reshape(-1))
        logprobs, mask = model.sequence_logprobs(px, samples)
        loss = policy_loss(logprobs, mask, adv, False)
        if args.scst_ce_weight:  # as scst_step's ce_weight: the first reference of each video
            loss = loss + args.scst_ce_weight * model(pixel_values=px, **model.encode_text(
                [normalize_caption(train_clips[i].captions[0], 50) for i in idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        log.append(float(rewards.mean()))
        done = step + 1
        if done % 10 == 0:
            emit(args, {"event": "scst", "step": done, "reward": round(float(np.mean(log)), 4),
                        "s_per_step": round((time.time() - t0) / done, 3)})
            log = []
        if done % args.scst_eval_every == 0 or done == args.scst_steps:
            scores, caps_out = evaluate(model, val_clips, val_frames, args.frames)
            emit(args, {"event": "eval", "phase": "scst", "step": done, **scores,
                        "example": list(caps_out.values())[:3]})


if __name__ == "__main__":
    main()
