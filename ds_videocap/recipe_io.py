"""Recipes in and out: a shipped recipe by name or a YAML file, dotted `key=value` overrides, and the
resolved config.yaml a run folder keeps. Types are checked field by field against config.py's
dataclasses; recipe_rules.validate then applies every range and cross-field rule.
"""
from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any

import yaml

from .config import RECIPES_DIR, ConfigError, RecipeCfg, as_dict
from .recipe_rules import validate


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def _merge(obj: Any, values: dict, where: str, source: str) -> None:
    names = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        dotted = f"{where}{key}"
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{where}{close[0]}'?)" if close else ""
            raise ConfigError(f"{source}: unknown field '{dotted}'{hint}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: field '{dotted}' must be a mapping, got {value!r}")
            _merge(current, value, dotted + ".", source)
        elif isinstance(current, dict) and isinstance(value, dict):  # a mapping field: keys merge, as sections do
            setattr(obj, key, {**current, **value})
        else:
            setattr(obj, key, _coerce(value, current, names[key], dotted, source))


def _coerce(value: Any, current: Any, f: dataclasses.Field, dotted: str, source: str) -> Any:
    """Check a value against the field's declared type; YAML gives ints where floats are meant."""
    # The annotation as written (config.py has `from __future__ import annotations`): "int", "str | None".
    kinds = [k.strip() for k in str(f.type).split("|")]
    if value is None:
        if "None" in kinds:
            return None
        raise ConfigError(f"{source}: field '{dotted}' may not be empty")
    expect = {"int": int, "float": float, "bool": bool, "str": str, "list": list}
    for name, typ in expect.items():
        if [k for k in kinds if k != "None"] == [name]:
            if typ is float and isinstance(value, int) and not isinstance(value, bool):
                return float(value)
            if typ is float and isinstance(value, str):  # YAML 1.1 reads "2e-4" as a string
                try:
                    return float(value)
                except ValueError:
                    pass
            if typ is not bool and isinstance(value, bool) or not isinstance(value, typ):
                raise ConfigError(f"{source}: field '{dotted}' expects {name}, got {value!r}")
            return value
    return value


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value, e.g. ce.lr=1e-5")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    if isinstance(value, str) and value.lower() in ("none", "null"):
        value = None
    return key.strip().split("."), value


def load_recipe(name_or_path: str, overrides: list[str] = ()) -> RecipeCfg:
    """Read a shipped recipe by name, or a YAML file, then apply `key=value` overrides."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml") and not path.is_file():
        path = RECIPES_DIR / f"{name_or_path}.yaml"  # a shipped recipe (names may hold dots: opt2.7b)
    if not path.is_file():
        raise ConfigError(f"recipe '{name_or_path}' not found: give a YAML file or one of {list_recipes()}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of fields, got {type(values).__name__}")
    cfg = RecipeCfg(name=path.stem)
    _merge(cfg, values, "", str(path))
    for text in overrides:
        keys, value = _parse_override(text)
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        _merge(cfg, nested, "", f"override '{text}'")
    if cfg.output_dir is None:
        cfg.output_dir = str(Path("runs") / cfg.name)
    validate(cfg)
    return cfg


def save_config(cfg: RecipeCfg, path: Path) -> None:
    Path(path).write_text(yaml.safe_dump(as_dict(cfg), sort_keys=False))


def load_saved_config(path: Path) -> RecipeCfg:
    """Read a resolved config.yaml written by save_config (no overrides, no defaults filled)."""
    values = yaml.safe_load(Path(path).read_text())
    cfg = RecipeCfg()
    _merge(cfg, values, "", str(path))
    return cfg
