"""Is shape in the synthetic frames, and can the tiny ViT learn it when told directly?

    python benchmarks/probe_shape.py --net cnn
    python benchmarks/probe_shape.py --net vit --patch-size 8     # the synth recipe's ViT
    python benchmarks/probe_shape.py --net vit --patch-size 4
    python benchmarks/probe_shape.py --net vit --stem 16          # a 3x3 conv stem before the patch embedding
    python benchmarks/tune_tiny.py --steps 800 --save /tmp/ce800.pt && \
        python benchmarks/probe_shape.py --captioner /tmp/ce800.pt

A diagnostic for the default run's weak spot (its captioner learns colour but not shape): one middle
frame of every single-object training clip, labelled with the clip's shape from the annotations'
attributes, classified by a small CNN or by the tiny BLIP-2 ViT (the synth recipe's sizes and init:
position embedding std 0.5, fan-in patch embedding) with a mean-pooled linear head. 85/15 split,
AdamW lr 1e-3, batch 64. Prints held-out accuracy every 100 steps (chance is 1/3). Frames come from
benchmarks/tune_tiny.py's decoded cache, so the first run decodes the set once.

With --captioner (a state dict saved by tune_tiny.py --save, the synth recipe's model) it asks where
shape is lost instead: linear probes (frozen features, 400 AdamW steps) on the captioner's ViT tokens
and on the visual tokens its LLM receives, and whether the LLM's own scores for the prefixes
"a <colour> <shape word>" (log-sum-exp over each shape's synonyms) tell the shapes apart.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tune_tiny import ROOT, load_split, to_pixels  # noqa: E402

SHAPES = ("circle", "square", "triangle")
CLIP_FRAMES = 4  # the synth recipe's data.frames (tune_tiny.py's default --frames)


def shape_frames(synth: Path, split: str = "train"):
    """The middle frame of each single-object clip of `split`, and its shape's index in SHAPES."""
    clips, frames = load_split(synth, split)
    keep = [i for i, c in enumerate(clips) if len(c.attributes["shapes"]) == 1]
    labels = torch.tensor([SHAPES.index(clips[i].attributes["shapes"][0]) for i in keep])
    middle = frames[keep][:, frames.shape[1] // 2][:, None]  # (N, 1, H, W, 3)
    return to_pixels(middle)[:, 0], labels


def build_net(kind: str, patch_size: int, size: int, pos_std: float | None = None, hidden: int = 96,
              layers: int = 2, linear_init: str = "0.02", stem: int = 0) -> nn.Module:
    if kind == "cnn":
        return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(64 * (size // 4) ** 2, len(SHAPES)))
    from transformers import Blip2VisionConfig, Blip2VisionModel

    from ds_videocap.build import TINY_INIT_STD

    vit = Blip2VisionModel(Blip2VisionConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                                             num_attention_heads=4, image_size=size, patch_size=patch_size,
                                             initializer_range=0.02))
    with torch.no_grad():  # as build_tiny_folder initialises the tiny ViT
        vit.embeddings.position_embedding.normal_(0.0, TINY_INIT_STD if pos_std is None else pos_std)
        weight = vit.embeddings.patch_embedding.weight
        weight.normal_(0.0, weight[0].numel() ** -0.5)
        if stem:  # early convolutions (Xiao et al. 2021): a 3x3 conv before the patch embedding
            vit.embeddings.patch_embedding = ConvStem(3, stem, vit.embeddings.patch_embedding)
        if linear_init == "fan_in":  # every linear layer at std 1/sqrt(fan-in) instead of 0.02
            for module in vit.encoder.modules():
                if isinstance(module, nn.Linear):
                    module.weight.normal_(0.0, module.weight.shape[1] ** -0.5)

    class ViTProbe(nn.Module):
        def __init__(self):
            super().__init__()
            self.vit, self.head = vit, nn.Linear(hidden, len(SHAPES))

        def forward(self, pixels):
            return self.head(self.vit(pixel_values=pixels).last_hidden_state.mean(1))

    return ViTProbe()


class ConvStem(nn.Module):
    """A 3x3 conv (stride 1) and GELU in front of the ViT's patch embedding; `weight` is the patch
    embedding's, which transformers reads for the input dtype."""

    def __init__(self, channels: int, width: int, patch: nn.Conv2d):
        super().__init__()
        self.conv = nn.Conv2d(channels, width, 3, padding=1)
        self.patch = nn.Conv2d(width, patch.out_channels, patch.kernel_size, patch.stride)
        with torch.no_grad():
            self.patch.weight.normal_(0.0, self.patch.weight[0].numel() ** -0.5)

    @property
    def weight(self):
        return self.patch.weight

    def forward(self, pixels):
        return self.patch(nn.functional.gelu(self.conv(pixels)))


def linear_probe(features: torch.Tensor, labels: torch.Tensor, steps: int = 400) -> float:
    """Held-out accuracy (last 15%) of a linear classifier on standardised frozen features."""
    x = features.flatten(1)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    split = int(0.85 * len(x))
    head = nn.Linear(x.shape[1], len(SHAPES))
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-2)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(head(x[:split]), labels[:split])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (head(x[split:]).argmax(1) == labels[split:]).float().mean().item()


@torch.no_grad()
def prefix_scores(model, pixels, colours: list[str]) -> torch.Tensor:
    """(N, 3): log p("a <colour> <word>") summed over each shape's synonyms, under the LLM."""
    from ds_videocap.synth_captions import SHAPE_WORDS

    columns = []
    for shape in SHAPES:
        per_word = []
        for word in SHAPE_WORDS[shape]:
            ids = model.encode_text([f"a {c} {word}" for c in colours])["input_ids"]
            logprobs, mask = model.sequence_logprobs(pixels, ids)
            stop = mask.sum(1).long() - 1  # a prefix, not a whole caption: leave the stop token out
            logprobs[torch.arange(len(ids)), stop] = 0
            per_word.append(logprobs.sum(1))
        columns.append(torch.logsumexp(torch.stack(per_word), 0))
    return torch.stack(columns, 1)


def where_shape_is_lost(args) -> None:
    import numpy as np
    from tune_tiny import build, load_split, pick_frames
    from tune_tiny import parser as tune_parser

    # the model tune_tiny.py --save trained, built the way it builds it (its defaults: the synth recipe's)
    tune_args = tune_parser().parse_args(["--synth", str(args.synth)])
    model = build(tune_args)
    model.load_state_dict(torch.load(args.captioner))
    model.eval()
    pixels, labels = shape_frames(args.synth)
    clips, frames = load_split(args.synth, "train")
    keep = [i for i, c in enumerate(clips) if len(c.attributes["shapes"]) == 1]
    with torch.no_grad():
        vit = torch.cat([model.hf.vision_model(pixel_values=pixels[s:s + 256]).last_hidden_state
                         for s in range(0, len(pixels), 256)])
        clip_pixels = [pick_frames(frames, np.array(keep[s:s + 256]), CLIP_FRAMES, None, train=False)
                       for s in range(0, len(keep), 256)]
        visual = torch.cat([model.encode_visual(p) for p in clip_pixels])
    print(f"linear probe, captioner's ViT tokens (one frame): held-out shape accuracy {linear_probe(vit, labels):.3f}")
    print(f"linear probe, the visual tokens its LLM receives: held-out shape accuracy "
          f"{linear_probe(visual, labels):.3f}")
    val_clips, val_frames = load_split(args.synth, "val")
    single = [i for i, c in enumerate(val_clips) if len(c.attributes["shapes"]) == 1]
    truth = torch.tensor([SHAPES.index(val_clips[i].attributes["shapes"][0]) for i in single])
    scores = prefix_scores(model, pick_frames(val_frames, np.array(single), CLIP_FRAMES, None, train=False),
                           [val_clips[i].attributes["colors"][0] for i in single])
    corrected = scores - scores.mean(0)  # take out the words' prior: only what the video adds counts
    accuracy = (scores.argmax(1) == truth).float().mean()
    print(f"LLM prefix scores on {len(single)} val clips: shape accuracy {accuracy:.3f}"
          f" (argmax), {(corrected.argmax(1) == truth).float().mean():.3f} (prior removed)")
    for index, shape in enumerate(SHAPES):
        print(f"  {shape} clips: mean score per candidate shape {scores[truth == index].mean(0).numpy().round(3)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synth", type=Path, default=ROOT / "data" / "synth")
    parser.add_argument("--net", choices=("cnn", "vit"), default="vit")
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--pos-std", type=float, default=None, help="ViT position embedding std (default the recipe's)")
    parser.add_argument("--hidden", type=int, default=96)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--linear-init", choices=("0.02", "fan_in"), default="0.02",
                        help="the ViT's linear layers: std 0.02 (the recipe's) or 1/sqrt(fan-in)")
    parser.add_argument("--stem", type=int, default=0, help="channels of a 3x3 conv before the ViT's patch embedding")
    parser.add_argument("--captioner", default=None, help="a tune_tiny.py --save state dict: where is shape lost?")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    if args.captioner:
        where_shape_is_lost(args)
        return 0
    pixels, labels = shape_frames(args.synth)
    split = int(0.85 * len(labels))
    net = build_net(args.net, args.patch_size, pixels.shape[-1], args.pos_std, args.hidden, args.layers,
                    args.linear_init, args.stem)
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr)
    for step in range(1, args.steps + 1):
        batch = torch.randint(0, split, (64,))
        loss = nn.functional.cross_entropy(net(pixels[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            with torch.no_grad():
                accuracy = (net(pixels[split:]).argmax(1) == labels[split:]).float().mean().item()
            print(f"{args.net} patch {args.patch_size} step {step}: loss {loss.item():.3f}, "
                  f"held-out shape accuracy {accuracy:.3f} ({len(labels) - split} frames)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
