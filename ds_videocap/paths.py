"""Where a relative path given to `train` points, and absolute paths for the run folder.

launch/train.sh changes to the repository root before it starts the launcher, and records the folder
the user ran it from in DS_VIDEOCAP_CWD. Paths the user gives (`--deepspeed`, a recipe file, `key=value`
overrides and the paths inside their own recipe file) resolve against that folder; the defaults written
in a shipped recipe (`synth_dir: data/synth`, `output_dir` runs/<recipe>) keep resolving against the
repository root, as they always have. Every path is then stored absolute in the run's config.yaml, so
`eval`, `export` and `report` work from any folder.
"""
from __future__ import annotations

import os
from pathlib import Path

from .config import RECIPES_DIR

CWD_ENV = "DS_VIDEOCAP_CWD"
# Recipe fields holding a path (data.sources entries are handled apart: a list of mappings).
PATH_FIELDS = ("output_dir", "resume", "init_from", "synth_dir", "data.videos", "data.train", "data.val",
               "data.test", "model.path", "model.tokenizer", "vision.train", "vision.images")


def user_dir() -> Path:
    """The folder the user ran the command from (launch/train.sh passes it on before its cd)."""
    return Path(os.environ.get(CWD_ENV) or os.getcwd())


def from_user(path: str | None) -> str | None:
    """A path the user typed, made absolute against the folder they ran the command from."""
    if path is None:
        return None
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (user_dir() / p).resolve())


def user_file(path: str | None) -> str | None:
    """A file argument (--deepspeed, --recipe): the user's folder first; when nothing is there, the
    path as given (resolved later against the repository root: ds_configs/zero2.json, a recipe name)."""
    if path is None:
        return None
    candidate = from_user(path)
    return candidate if Path(candidate).exists() else path


def _get(cfg, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _set(cfg, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    obj = cfg
    for part in parents:
        obj = getattr(obj, part)
    setattr(obj, last, value)


def shipped_values(recipe: str) -> dict:
    """{field: value} of the path fields a shipped recipe sets itself ({} for the user's own file)."""
    import yaml

    path = RECIPES_DIR / f"{recipe}.yaml"
    if Path(recipe).is_file() or not path.is_file():
        return {}
    values = yaml.safe_load(path.read_text()) or {}
    found = {"output_dir": str(Path("runs") / recipe)}  # load_recipe's default, also the repository's
    for dotted in PATH_FIELDS:
        node = values
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, str):
            found[dotted] = node
    return found


def absolute_paths(cfg, shipped: dict) -> None:
    """Make every path field of `cfg` absolute, in place. A field still holding the value its shipped
    recipe gives it (`shipped`, from shipped_values) is relative to the current folder (the repository
    root under train.sh); any other value came from the user and is relative to their folder."""
    here = Path.cwd()
    for dotted in PATH_FIELDS:
        value = _get(cfg, dotted)
        if not value or (dotted == "resume" and value == "auto"):
            continue
        if shipped.get(dotted) == value:
            p = Path(value).expanduser()
            _set(cfg, dotted, str(p if p.is_absolute() else (here / p).resolve()))
        else:
            _set(cfg, dotted, from_user(value))
    for source in cfg.data.sources or []:
        if isinstance(source, dict):  # malformed entries are reported by mixing.read_sources
            for key in ("train", "videos"):
                if isinstance(source.get(key), str):
                    source[key] = from_user(source[key])


def follow_run_folder(cfg, run_dir) -> None:
    """A run's config read from its folder: paths that pointed inside the run's output_dir (its
    init_model above all) follow the folder where config.yaml now is, when the run was moved or its
    config holds paths relative to another folder (runs made before paths were stored absolute)."""
    old, run_dir = cfg.output_dir, Path(run_dir).resolve()
    if not old:
        return
    for dotted in PATH_FIELDS:
        value = _get(cfg, dotted)
        if value and not Path(value).exists() and Path(value).is_relative_to(old):
            _set(cfg, dotted, str(run_dir / Path(value).relative_to(old)))
    cfg.output_dir = str(run_dir)
