"""Paths given to `train` resolve against the folder the user ran it from (DS_VIDEOCAP_CWD, set by
launch/train.sh before it changes to the repository root); the shipped recipes' own defaults keep
resolving against the current folder; the run folder's config holds them all absolute."""
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from ds_videocap.errors import UserError
from ds_videocap.run_check import check_run

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def user(tmp_path, monkeypatch):
    home = tmp_path / "user"
    (home / "data" / "videos").mkdir(parents=True)
    records = [{"video": f"v{i}.mp4", "caption": "a dog"} for i in range(8)]
    (home / "data" / "train.json").write_text(json.dumps(records))
    (home / "data" / "stills").mkdir()
    (home / "data" / "stills" / "a.png").write_bytes(b"")  # the run check only asks that it is there
    (home / "data" / "stills.json").write_text(json.dumps([{"image": "a.png", "caption": "a dog"}]))
    shutil.copy(ROOT / "ds_configs" / "zero0.json", home / "mine.json")
    (home / "my_recipe.yaml").write_text("model: {tiny: opt}\ndata: {train: data/train.json, videos: data/videos}\n"
                                         "ce: {micro_batch: 2}\nscst: {steps: 0}\n")
    monkeypatch.chdir(ROOT)  # where train.sh runs the launcher
    monkeypatch.setenv("DS_VIDEOCAP_CWD", str(home))
    return home


def check(recipe, ds_json, *overrides):
    return check_run(SimpleNamespace(recipe=recipe, deepspeed=ds_json, overrides=list(overrides)),
                     "ds_configs/zero3_offload.json")


def test_overrides_and_the_json_resolve_against_the_users_folder(user):
    cfg, ds_config = check("synth", "mine.json", "synth_dir=null", "data.train=data/train.json",
                           "data.videos=data/videos", "output_dir=out", "ce.micro_batch=2", "scst.steps=0",
                           "resume=auto", "vision.train=data/stills.json", "vision.images=data/stills")
    assert ds_config["_source"] == str(user / "mine.json")
    assert cfg.data.train == str(user / "data" / "train.json")
    assert cfg.data.videos == str(user / "data" / "videos")
    assert cfg.output_dir == str(user / "out") and cfg.resume == "auto"
    assert cfg.vision.train == str(user / "data" / "stills.json") and cfg.vision.images == str(user / "data" / "stills")


def test_shipped_defaults_stay_relative_to_the_repository(user):
    cfg, ds_config = check("synth", "ds_configs/zero0.json")  # no such file in the user's folder: the shipped one
    assert ds_config["_source"].endswith("ds_configs/zero0.json")
    assert cfg.synth_dir == str(ROOT / "data" / "synth") and cfg.output_dir == str(ROOT / "runs" / "synth")
    assert cfg.data.test == str(ROOT / "data" / "synth" / "annotations" / "cap_test.json")


def test_a_recipe_file_and_its_paths_resolve_against_the_users_folder(user):
    cfg, _ = check("my_recipe.yaml", None)
    assert cfg.name == "my_recipe" and cfg.data.train == str(user / "data" / "train.json")
    assert cfg.output_dir == str(user / "runs" / "my_recipe")


def test_a_missing_relative_path_names_the_users_folder(user):
    with pytest.raises(UserError, match=rf"field 'data.train': annotation file '{user}/nope.json' not found"):
        check("synth", "mine.json", "synth_dir=null", "data.train=nope.json", "data.videos=data/videos",
              "vision.steps=0")


def test_a_moved_run_folder_finds_its_init_model(tmp_path, monkeypatch):
    from ds_videocap.paths import follow_run_folder
    from ds_videocap.recipe_io import load_recipe

    monkeypatch.chdir(tmp_path)  # the old relative paths must not exist where the test runs

    cfg = load_recipe("synth", ["output_dir=/old/place/run", "model.path=/old/place/run/init_model",
                                f"data.test={tmp_path / 'cap_test.json'}"])
    (tmp_path / "cap_test.json").write_text("[]")
    follow_run_folder(cfg, tmp_path / "run")
    assert cfg.model.path == str(tmp_path / "run" / "init_model") and cfg.output_dir == str(tmp_path / "run")
    assert cfg.data.test == str(tmp_path / "cap_test.json")  # outside the run folder: kept
    relative = load_recipe("synth", ["output_dir=runs/synth", "model.path=runs/synth/init_model"])
    follow_run_folder(relative, tmp_path / "elsewhere" / "synth")  # a config from before absolute paths
    assert relative.model.path == str(tmp_path / "elsewhere" / "synth" / "init_model")
