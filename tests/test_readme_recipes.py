"""The README's recipe table is checked against the shipped recipe files, so that the two cannot drift
(it once said SCST 2e-5 for the synth recipes, which use 1e-4)."""
import re
from pathlib import Path

import pytest

from ds_videocap.recipe_io import list_recipes, load_recipe

README = Path(__file__).resolve().parent.parent / "README.md"
LR = re.compile(r"\b(CE|SCST) ([0-9.e+-]+) -> ([0-9.e+-]+)")


def recipe_rows() -> dict:
    """recipe name -> the README row's cells (model, what trains, frames, lr), from the recipe table."""
    lines = README.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| recipe | model | what trains |"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        for name in re.findall(r"`([^`]+)`", cells[0]):
            rows[name] = cells[1:]
    return rows


def test_every_shipped_recipe_is_in_the_table():
    assert sorted(recipe_rows()) == list_recipes()


@pytest.mark.parametrize("name", list_recipes())
def test_table_row_matches_the_recipe(name):
    _, trains, frames, lr = recipe_rows()[name]
    # the study's recipes leave model.path to the user; any value lets the recipe validate
    cfg = load_recipe(name, [] if name.startswith("synth") else ["model.path=/models/any"])
    assert int(frames) == cfg.data.frames
    stated = {phase.lower(): (float(a), float(b)) for phase, a, b in LR.findall(lr)}
    runs = {p: (getattr(cfg, p).lr, getattr(cfg, p).min_lr) for p in ("ce", "scst") if getattr(cfg, p).steps}
    assert stated == runs, f"README says {lr!r}; the recipe runs {runs}"
    assert ("LoRA" in trains) == (cfg.model.llm == "lora")
    assert ("LLM frozen" in trains) == (cfg.model.llm == "frozen")
    assert ("everything" in trains) == (cfg.model.llm == "full" and cfg.model.vit == "full")
    assert ("SCST" in trains) == bool(cfg.scst.steps and not cfg.ce.steps)
    assert ("vision stage" in trains) == bool(cfg.vision.steps)
