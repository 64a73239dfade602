"""Which per-frame training signal teaches the tiny ViT shape? (issue 15; benchmarks/README.md, eleventh round)

    python benchmarks/probe_frame_targets.py frames --target label           # the shape label: the upper bound
    python benchmarks/probe_frame_targets.py frames --target label --net cnn # the same for a 2-layer CNN
    python benchmarks/probe_frame_targets.py frames --target lsa             # the clip's caption vector, 16 axes
    python benchmarks/probe_frame_targets.py frames --target lsa --axes 6,7  # only the axes that hold shape (an oracle)
    python benchmarks/probe_frame_targets.py frames --target words           # which tokens the references hold (BCE)
    python benchmarks/probe_frame_targets.py frames --target bank            # soft contrast with every clip's vector
    python benchmarks/probe_frame_targets.py frames --target frame_pairs     # two frames of a clip as positives
    python benchmarks/probe_frame_targets.py stills --target lsa --rank 8 [--axes 0,1] [--balance 2]
    python benchmarks/probe_frame_targets.py frames --target label --steps 1600 --save-vit /tmp/vit.pt
    python benchmarks/tune_tiny.py ... --init-vit /tmp/vit.pt                # the captioner on a pretrained ViT

Each run trains the synth recipe's tiny ViT (build_net: its sizes and init) alone, one frame per sample,
batch 128, AdamW lr 1e-3 one-cycle, one thread, and every 200 steps prints a linear probe of shape:
a logistic classifier on the frozen mean-pooled ViT features of 1,500 training clips' middle frames,
scored on the val split's single-object clips (chance 1/3, a random ViT 0.40-0.42).

`frames` draws a random frame of a random training clip (all clips; the label target only single-object
ones). Its caption targets come from the clip's five references: `lsa` is the clip's vector in the
co-occurrence space the contrastive term uses (cooccur.cooccurrence_table on word ids; the mean of the
references' mean token vectors, each axis standardised), regressed with MSE through a linear head;
`--axes` keeps some axes only (which axes hold shape is read off the labels, so that row is an oracle).
`words`: each token's share of the references, BCE. `bank`: the head's unit vector against every
training clip's vector, with the softmax of the clip's own vector against them as the soft target.
`frame_pairs`: no text, two distinct frames of a clip are positives and the batch's other frames
negatives (SimCLR with an MLP head). `stills` draws a pool of 20,000 stills of fresh clips (tiny_stills:
five still captions each, "a red ball and a blue box") and regresses their caption vectors;
`--balance A` weighs each axis by (its loss now / its first loss)^A (GradNorm's rate balancing).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_shape import SHAPES, build_net, shape_frames  # noqa: E402
from tiny_stills import STILLS_SEED, still_caption  # noqa: E402
from tune_tiny import ROOT, load_split, to_pixels  # noqa: E402

from ds_videocap.captions import training_references  # noqa: E402
from ds_videocap.synth import render_clip  # noqa: E402
from ds_videocap.vision_stage import caption_vectors  # noqa: E402

PROBE_TRAIN_FRAMES = 1500  # the linear shape probe's training frames (middle frames of single-object clips)


def word_ids(docs: list[list[str]]) -> tuple[list[list[list[int]]], int]:
    vocab: dict[str, int] = {}
    return [[[vocab.setdefault(w, len(vocab)) for w in c.split()] for c in doc] for doc in docs], len(vocab)


def stage_targets(captions: list[list[str]], rank: int) -> torch.Tensor:
    """Each document's caption vector as the vision stage builds it (vision_stage.caption_vectors)."""
    targets, spectrum = caption_vectors(captions, rank, 50)
    print(f"co-occurrence spectrum {spectrum}", flush=True)
    return targets


def word_shares(ids, vocab: int) -> torch.Tensor:
    shares = torch.zeros(len(ids), vocab)
    for row, doc in enumerate(ids):
        for ref in doc:
            shares[row, list(set(ref))] += 1.0 / len(doc)
    return shares


def shape_probe(features, train_x, train_y, val_x, val_y) -> float:
    with torch.no_grad():
        f_train, f_val = features(train_x), features(val_x)
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-6
    f_train, f_val = (f_train - mu) / sd, (f_val - mu) / sd
    head = nn.Linear(f_train.shape[1], len(SHAPES))
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-2)
    for _ in range(300):
        loss = F.cross_entropy(head(f_train), train_y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (head(f_val).argmax(1) == val_y).float().mean().item()


def frame_batches(args, rng):
    """-> (draw(batch) -> (pixels, target rows), targets) for the `frames` mode."""
    clips, frames = load_split(args.synth, "train")
    pool = np.arange(len(clips))
    if args.target == "label":
        pool = np.array([i for i, c in enumerate(clips) if len(c.attributes["shapes"]) == 1])
        targets = torch.full((len(clips),), -100)
        targets[pool] = torch.tensor([SHAPES.index(clips[i].attributes["shapes"][0]) for i in pool])
    elif args.target == "words":
        targets = word_shares(*word_ids([training_references(c.captions, 50) for c in clips]))
    else:
        targets = stage_targets([c.captions for c in clips], args.rank)

    def draw(batch):
        if args.target == "frame_pairs":  # batch/2 clips, two distinct frames each
            rows = pool[rng.integers(len(pool), size=batch // 2)]
            pick = np.stack([rng.choice(frames.shape[1], size=2, replace=False) for _ in rows])
            x = frames[rows[:, None], pick].reshape(-1, *frames.shape[2:])
            return to_pixels(x[:, None])[:, 0], torch.arange(len(rows)).repeat_interleave(2)
        rows = pool[rng.integers(len(pool), size=batch)]
        x = frames[rows, rng.integers(frames.shape[1], size=batch)]
        return to_pixels(x[:, None])[:, 0], torch.as_tensor(rows)

    return draw, targets


def still_batches(args, rng):
    frames, captions = [], []
    for i in range(args.stills):
        clip, objects = render_clip(10**6 + i, STILLS_SEED)
        frames.append(clip[rng.integers(len(clip))])
        captions.append([still_caption(rng, objects) for _ in range(5)])
    frames = np.stack(frames)
    targets = stage_targets(captions, args.rank)

    def draw(batch):
        rows = rng.integers(len(frames), size=batch)
        return to_pixels(frames[rows][:, None])[:, 0], torch.as_tensor(rows)

    return draw, targets


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", choices=("frames", "stills"))
    p.add_argument("--target", default="lsa", choices=("label", "lsa", "words", "bank", "frame_pairs"))
    p.add_argument("--synth", type=Path, default=ROOT / "data" / "synth")
    p.add_argument("--net", choices=("vit", "cnn"), default="vit")
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--hidden", type=int, default=96)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--rank", type=int, default=16, help="co-occurrence axes (stills: 8 hold colour and shape)")
    p.add_argument("--axes", default=None, help="keep only these axes of the caption vector, e.g. 6,7")
    p.add_argument("--balance", type=float, default=0.0, help="per-axis loss-rate balancing exponent (lsa)")
    p.add_argument("--tau", type=float, default=0.05, help="bank / frame_pairs temperature")
    p.add_argument("--stills", type=int, default=20000, help="the stills pool")
    p.add_argument("--probe-every", type=int, default=200, help="probe shape every N steps (and at the last)")
    p.add_argument("--stem", type=int, default=0, help="channels of a 3x3 conv before the ViT's patch embedding")
    p.add_argument("--save-vit", default=None, help="save the trained ViT's state dict (for tune_tiny --init-vit)")
    args = p.parse_args()
    if args.source == "stills" and args.target not in ("lsa", "bank"):
        p.error("stills: --target lsa or bank (stills have no labels and no clips)")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0 if args.source == "frames" else 5)
    draw, targets = (frame_batches if args.source == "frames" else still_batches)(args, rng)
    if args.axes:
        targets = targets[:, [int(a) for a in args.axes.split(",")]]
    net = build_net(args.net, args.patch, 32, hidden=args.hidden, layers=args.layers, stem=args.stem)
    if args.net == "cnn":
        encoder, width = net[:-1], net[-1].in_features
    else:
        encoder, width = (lambda x: net.vit(pixel_values=x).last_hidden_state.mean(1)), args.hidden
    out = {"label": len(SHAPES), "frame_pairs": 32}.get(args.target, targets.shape[-1])
    head = (nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, out))
            if args.target == "frame_pairs" else nn.Linear(width, out))
    opt = torch.optim.AdamW(list(net.parameters()) + list(head.parameters()), lr=args.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps, pct_start=0.1)
    train_x, train_y = shape_frames(args.synth, "train")
    probe_data = (train_x[:PROBE_TRAIN_FRAMES], train_y[:PROBE_TRAIN_FRAMES], *shape_frames(args.synth, "val"))
    unit_targets = F.normalize(targets.float(), dim=1) if args.target == "bank" else None
    first = rate = None
    start = time.time()
    for step in range(1, args.steps + 1):
        x, rows = draw(args.batch)
        y = head(encoder(x))
        if args.target == "label":
            loss = F.cross_entropy(y, targets[rows])
        elif args.target == "words":
            loss = F.binary_cross_entropy_with_logits(y, targets[rows])
        elif args.target == "bank":
            soft = torch.softmax(unit_targets[rows] @ unit_targets.T / args.tau, 1)
            loss = -(soft * torch.log_softmax(F.normalize(y, dim=1) @ unit_targets.T / args.tau, 1)).sum(1).mean()
        elif args.target == "frame_pairs":
            z = F.normalize(y, dim=1)
            sim = (z @ z.T / args.tau).fill_diagonal_(-1e9)
            positive = (rows[:, None] == rows[None, :]).float().fill_diagonal_(0)
            loss = -(positive * torch.log_softmax(sim, 1)).sum(1).div(positive.sum(1)).mean()
        else:
            per_axis = ((y - targets[rows]) ** 2).mean(0)
            if args.balance:  # axes that learn slowly weigh more (GradNorm's inverse training rate)
                with torch.no_grad():
                    rate = per_axis.detach() if rate is None else 0.95 * rate + 0.05 * per_axis.detach()
                    first = rate.clone() if first is None else first
                    weight = (rate / first) ** args.balance
                loss = (weight / weight.mean() * per_axis).mean()
            else:
                loss = per_axis.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % args.probe_every == 0 or step == args.steps:
            print(f"{args.source} {args.target} step {step}: loss {loss.item():.3f}, shape probe "
                  f"{shape_probe(encoder, *probe_data):.3f} ({(time.time() - start) / step * 1000:.0f} ms/step)",
                  flush=True)
    if args.save_vit and args.net == "vit":
        torch.save(net.vit.state_dict(), args.save_vit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
