"""Words of the synthetic set: attribute vocabularies, paraphrased caption templates, and the parser
that reads attributes back out of a generated caption (for attribute accuracy).

Paraphrases cover the shape and motion words as well as sentence frames, so that the references of one
clip disagree in wording the way human captions do and CIDEr has consensus wording to reward.
"""
from __future__ import annotations

import numpy as np

COLORS = ("red", "green", "blue", "yellow", "purple")
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("left", "right", "up", "down", "grow", "shrink", "stay")

# Nouns per shape; none of them is shared between shapes, so the parser can map each back.
SHAPE_WORDS = {
    "circle": ("circle", "round shape", "disk", "ball"),
    "square": ("square", "box", "block", "square shape"),
    "triangle": ("triangle", "triangular shape", "wedge"),
}

# (finite verb phrase, participle phrase) per motion: "a red ball rises" / "there is a red ball rising".
MOTION_PHRASES = {
    "left": (("moves to the left", "moving to the left"), ("slides left", "sliding left"),
             ("travels leftward", "traveling leftward"), ("drifts to the left", "drifting to the left"),
             ("goes left", "going left")),
    "right": (("moves to the right", "moving to the right"), ("slides right", "sliding right"),
              ("travels rightward", "traveling rightward"), ("drifts to the right", "drifting to the right"),
              ("goes right", "going right")),
    "up": (("moves up", "moving up"), ("rises", "rising"), ("slides upward", "sliding upward"),
           ("goes up", "going up"), ("floats upward", "floating upward")),
    "down": (("moves down", "moving down"), ("falls", "falling"), ("sinks", "sinking"),
             ("slides downward", "sliding downward"), ("drops down", "dropping down")),
    "grow": (("grows", "growing"), ("gets bigger", "getting bigger"), ("expands", "expanding"),
             ("becomes larger", "becoming larger"), ("grows in size", "growing in size")),
    "shrink": (("shrinks", "shrinking"), ("gets smaller", "getting smaller"), ("contracts", "contracting"),
               ("becomes smaller", "becoming smaller"), ("shrinks in size", "shrinking in size")),
    "stay": (("stays still", "staying still"), ("does not move", "not moving"),
             ("remains in place", "remaining in place"), ("sits still", "sitting still"),
             ("remains motionless", "remaining motionless")),
}

# One-object sentence frames: {d} = "red ball", {f} = finite phrase, {p} = participle phrase.
SINGLE_FRAMES = ("a {d} {f}", "the {d} {f}", "a {d} is {p}", "there is a {d} {p}", "a {d} {p}",
                 "the {d} is {p}", "one {d} {f}", "a {d} that {f}", "we see a {d} {p}")
# Two-object frames join two finite clauses ({a}, {b}) or two participle ones.
PAIR_FRAMES = ("{a} and {b}", "{a} while {b}", "there is a {da} {pa} and a {db} {pb}",
               "two shapes a {da} {pa} and a {db} {pb}", "{a} as {b}")

# Parser keywords: single words, plus two-word phrases checked on the joined caption.
_MOTION_KEYS = {
    "left": {"left", "leftward", "leftwards"}, "right": {"right", "rightward", "rightwards"},
    "up": {"up", "upward", "upwards", "rises", "rising", "rise", "floats", "floating"},
    "down": {"down", "downward", "downwards", "falls", "falling", "sinks", "sinking", "drops", "dropping"},
    "grow": {"grows", "growing", "grow", "bigger", "larger", "expands", "expanding"},
    "shrink": {"shrinks", "shrinking", "shrink", "smaller", "contracts", "contracting"},
    "stay": {"still", "motionless", "static", "stationary", "in place", "not move", "not moving"},
}
_SHAPE_KEYS = {"circle": {"circle", "round", "disk", "ball", "circles"},
               "square": {"square", "box", "block", "squares"},
               "triangle": {"triangle", "triangular", "wedge", "triangles"}}


def _clause(rng: np.random.Generator, color: str, shape: str, motion: str) -> tuple[str, str, str]:
    """(descriptor, finite phrase, participle phrase) with randomly chosen paraphrases."""
    words = SHAPE_WORDS[shape]
    phrases = MOTION_PHRASES[motion]
    finite, participle = phrases[rng.integers(len(phrases))]
    return f"{color} {words[rng.integers(len(words))]}", finite, participle


def _sentence(rng: np.random.Generator, objects: list[tuple[str, str, str]]) -> str:
    if len(objects) == 1:
        d, f, p = _clause(rng, *objects[0])
        return SINGLE_FRAMES[rng.integers(len(SINGLE_FRAMES))].format(d=d, f=f, p=p)
    (da, fa, pa), (db, fb, pb) = (_clause(rng, *o) for o in objects)
    frame = PAIR_FRAMES[rng.integers(len(PAIR_FRAMES))]
    return frame.format(a=f"a {da} {fa}", b=f"a {db} {fb}", da=da, pa=pa, db=db, pb=pb)


def write_captions(rng: np.random.Generator, objects: list[tuple[str, str, str]], count: int = 5) -> list[str]:
    """`count` distinct paraphrased references for a clip showing (colour, shape, motion) objects."""
    captions: list[str] = []
    for _ in range(50 * count):  # the pool is large (hundreds of sentences); this loop ends early
        text = _sentence(rng, objects)
        if text not in captions:
            captions.append(text)
        if len(captions) == count:
            break
    return captions


def still_caption(rng: np.random.Generator, objects: list[tuple[str, str]]) -> str:
    """What one frame can show of (colour, shape) objects: "a red ball and a blue box", never a motion."""
    def noun(shape: str) -> str:
        return SHAPE_WORDS[shape][rng.integers(len(SHAPE_WORDS[shape]))]

    return " and ".join(f"a {color} {noun(shape)}" for color, shape in objects)


def read_attributes(caption: str) -> dict[str, set[str]]:
    """Colours, shapes and motions named in a caption (any paraphrase of the templates)."""
    words = caption.lower().replace(",", " ").replace(".", " ").split()
    tokens = set(words) | {" ".join(pair) for pair in zip(words, words[1:])}
    return {
        "colors": {c for c in COLORS if c in tokens},
        "shapes": {s for s, keys in _SHAPE_KEYS.items() if tokens & keys},
        "motions": {m for m, keys in _MOTION_KEYS.items() if tokens & keys},
    }


def attribute_accuracy(captions: dict, attributes: dict) -> dict[str, float]:
    """Share of clips whose caption names exactly the clip's colours / shapes / motions.

    A clip counts as right for an attribute when the set of values named equals the set it shows:
    a two-shape clip needs both named, and naming an extra value (hedging) is wrong. `all_acc`
    needs all three right. Clips without a caption count as wrong.
    """
    return named_set_accuracy({k: read_attributes(captions.get(k, "") or "") for k in attributes}, attributes)


def named_set_accuracy(named: dict, attributes: dict) -> dict[str, float]:
    """attribute_accuracy's rule on sets already read: `named` maps each clip to the {"colors", "shapes",
    "motions"} sets its caption (or any other prediction) names."""
    keys = [k for k in attributes if attributes[k]]
    if not keys:
        return {"color_acc": 0.0, "shape_acc": 0.0, "motion_acc": 0.0, "all_acc": 0.0}
    right = {"colors": 0, "shapes": 0, "motions": 0, "all": 0}
    for key in keys:
        ok = [named[key][a] == set(attributes[key].get(a, ())) for a in ("colors", "shapes", "motions")]
        for a, good in zip(("colors", "shapes", "motions"), ok):
            right[a] += good
        right["all"] += all(ok)
    n = len(keys)
    return {"color_acc": right["colors"] / n, "shape_acc": right["shapes"] / n,
            "motion_acc": right["motions"] / n, "all_acc": right["all"] / n}
