"""check_run: every user mistake is one UserError naming the file and the field, raised before any rank
initialises torch.distributed (the launcher e2e test, test_e2e_bad_input.py, shows what users see)."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from ds_videocap.config import ConfigError
from ds_videocap.errors import UserError
from ds_videocap.recipe_io import load_recipe
from ds_videocap.run_check import check_run

ZERO0 = "ds_configs/zero0.json"


@pytest.mark.parametrize("override,words", [
    ("ce.log_every=0", "'ce.log_every' must be >= 1"),
    ("scst.save_every=-1", "'scst.save_every' must be >= 0"),
    ("ce.betas=[0.9]", "'ce.betas' must be two numbers"),
    ("lora.dropout=1.5", "'lora.dropout' must be within"),
    ("eval.batch_size=0", "'eval.batch_size' must be >= 1"),
    ("data.num_workers=-2", "'data.num_workers' must be >= 0"),
    ("max_nonfinite_steps=0", "'max_nonfinite_steps' must be >= 1"),
    ("ce.lr=fast", "'ce.lr' expects float"),
    ("ce.stepz=3", "did you mean 'ce.steps'"),
])
def test_recipe_ranges_and_types_name_the_field(override, words):
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("(", r"\(")):
        load_recipe("synth", [override])


@pytest.fixture
def data(tmp_path):
    (tmp_path / "videos").mkdir()
    train = tmp_path / "train.json"
    train.write_text(json.dumps([{"video": f"v{i}.mp4", "caption": "a dog"} for i in range(10)]))
    return tmp_path, ["synth_dir=null", f"data.train={train}", f"data.videos={tmp_path / 'videos'}",
                      f"output_dir={tmp_path / 'run'}", "ce.micro_batch=2", "scst.micro_batch=2", "vision.steps=0"]


def check(overrides, ds_json=ZERO0):
    return check_run(SimpleNamespace(recipe="synth", deepspeed=ds_json, overrides=overrides), ZERO0)


def test_a_good_run_passes_without_touching_torch_distributed(data):
    import torch.distributed as dist

    _, base = data
    cfg, ds_config = check(base)
    assert cfg.data.train.endswith("train.json") and ds_config["_source"].endswith("zero0.json")
    assert not dist.is_initialized()


def test_model_folder_without_config_json(data):
    tmp, base = data
    (tmp / "model").mkdir()
    with pytest.raises(UserError, match=r"field 'model.path'.*model.*missing config.json"):
        check(base + ["model.tiny=null", f"model.path={tmp / 'model'}"])


def test_malformed_annotation_names_file_record_and_field(data):
    tmp, base = data
    bad = tmp / "val.json"
    bad.write_text(json.dumps([{"video": "a.mp4", "caption": "ok"}, {"video": 3, "caption": "x"}]))
    with pytest.raises(UserError, match=r"val.json: record 1: field 'video'"):
        check(base + [f"data.val={bad}"])


def test_train_set_smaller_than_one_global_batch(data, monkeypatch):
    _, base = data
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match=r"field 'ce.micro_batch': 8 x 2 ranks .* = 16 clips .* has 10"):
        check(base + ["ce.micro_batch=8"])
    # Without a recipe micro-batch the JSON's field is the one to name.
    with pytest.raises(UserError, match=r"zero0.json: field 'train_micro_batch_size_per_gpu'"):
        check(base + ["ce.micro_batch=null", "scst.steps=0"])
    check(base + ["ce.micro_batch=5", "scst.steps=0"])  # exactly one global batch is enough


def test_synthetic_set_not_generated_yet_is_checked_later(tmp_path):
    cfg, _ = check([f"synth_dir={tmp_path / 'synth'}", f"output_dir={tmp_path / 'run'}"])
    assert cfg.data.train == str(tmp_path / "synth" / "annotations" / "cap_train.json")


def test_missing_videos_root(data):
    tmp, base = data
    with pytest.raises(UserError, match=r"field 'data.videos': folder .*nowhere' not found"):
        check(base + [f"data.videos={tmp / 'nowhere'}"])


@pytest.mark.parametrize("field", ["resume", "init_from"])
def test_resume_or_init_from_a_half_written_checkpoint(data, field):
    tmp, base = data
    half = tmp / "run" / "checkpoints" / "ce-0000006"
    half.mkdir(parents=True)
    with pytest.raises(UserError, match=f"field '{field}'.*ce-0000006' is not a complete checkpoint"):
        check(base + [f"{field}={half}"])
    (half / "COMPLETE").write_text("{}")
    check(base + [f"{field}={half}"])
    check(base + ["resume=auto"])


def test_hybrid_engine_is_refused_for_t5_and_on_cpu(tmp_path):
    import json
    from argparse import Namespace

    from ds_videocap.ds_json import adapt_ds_config, read_ds_config
    from ds_videocap.errors import UserError
    from ds_videocap.run_check import check_run

    cfg = json.loads((Path(__file__).parent.parent / "ds_configs" / "zero0.json").read_text())
    cfg["hybrid_engine"] = {"enabled": True}
    path = tmp_path / "hybrid.json"
    path.write_text(json.dumps(cfg))
    args = Namespace(recipe="synth", deepspeed=str(path), overrides=["model.tiny=t5", f"synth_dir={tmp_path / 's'}"])
    with pytest.raises(UserError, match="hybrid_engine.enabled.*OPT and Llama"):
        check_run(args, str(path))
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="hybrid_engine.enabled.*needs CUDA"):
            adapt_ds_config(read_ds_config(path), None, tmp_path)


def test_the_vision_stage_needs_its_stills_before_any_rank_starts(data, tmp_path):
    """The synth recipe's vision stage on a user's own data: no stills file, or one naming an image that
    is not there, is reported naming the field; init_from skips the stage, so it needs none."""
    root, overrides = data
    overrides = [o for o in overrides if o != "vision.steps=0"]
    with pytest.raises(UserError, match=r"field 'vision.train' is empty but vision.steps is 1600"):
        check(overrides)
    stills = tmp_path / "stills.json"
    stills.write_text(json.dumps([{"image": "gone.png", "caption": "a dog"}]))
    with pytest.raises(UserError, match=r"field 'vision.train': .*stills.json: 1 of 1 images not found"):
        check([*overrides, f"vision.train={stills}"])
    (tmp_path / "gone.png").write_bytes(b"")
    cfg, _ = check([*overrides, f"vision.train={stills}"])
    assert cfg.vision.train == str(stills)
