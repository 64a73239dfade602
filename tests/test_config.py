import pytest

from ds_videocap.config import ConfigError
from ds_videocap.recipe_io import list_recipes, load_recipe, load_saved_config, save_config


def test_every_shipped_recipe_loads_with_a_model_path():
    for name in list_recipes():
        cfg = load_recipe(name, ["model.path=/models/x"])
        assert cfg.name == name
        assert cfg.output_dir == f"runs/{name}"


def test_overrides_apply_and_coerce():
    cfg = load_recipe("synth", ["ce.lr=2e-4", "ce.steps=7", "scst.baseline=greedy", "model.tiny=t5", "seed=3"])
    assert cfg.ce.lr == pytest.approx(2e-4) and cfg.ce.steps == 7
    assert cfg.scst.baseline == "greedy" and cfg.model.tiny == "t5" and cfg.seed == 3


@pytest.mark.parametrize("override, words", [
    ("ce.step=5", ["ce.step", "did you mean", "ce.steps"]),
    ("ce.steps=abc", ["ce.steps", "expects int"]),
    ("model.fusion=sideways", ["model.fusion", "concat", "per_frame"]),
    ("ce.steps=-1", ["ce.steps", ">= 0"]),
    ("scst.top_p=0", ["scst.top_p"]),
    ("model.quant=8bit", ["model.quant", "lora"]),  # synth trains the LLM fully
    ("noequals", ["key=value"]),
    ("model.tiny_sizes.patch=4", ["model.tiny_sizes.patch", "patch_size"]),
    ("model.tiny_sizes.patch_size=0", ["model.tiny_sizes.patch_size", "positive integer"]),
    ("vision.steps=-1", ["vision.steps", ">= 0"]),
    ("vision.warmup_fraction=1", ["vision.warmup_fraction", "(0, 1)"]),
    ("vision.lr=0", ["vision.lr", "> 0"]),
    ("vision.num_workers=-1", ["vision.num_workers", ">= 0"]),
    ("vision.balance=-2", ["vision.balance", ">= 0"]),
    ("model.vit_lr_scale=0", ["model.vit_lr_scale", "> 0"]),
    ("model.motion_patch=0", ["model.motion_patch", ">= 1"]),
    ("model.motion_patch=four", ["model.motion_patch", "int"]),
    ("model.tiny_sizes.llm_layers=true", ["model.tiny_sizes.llm_layers", "positive integer"]),
    ("model.tiny_sizes=4", ["model.tiny_sizes", "positive integer"]),
    ("model.tiny_dropout=1", ["model.tiny_dropout", "[0, 1)"]),
    ("model.tiny_dropout=-0.1", ["model.tiny_dropout", "[0, 1)"]),
    ("model.tiny_dropout=0.1", []),
    ("data.cache_mb=-1", ["data.cache_mb", ">= 0"]),
    ("scst.reward_bleu4=-1", ["scst.reward_bleu4", ">= 0"]),
    ("scst.ce_weight=-0.5", ["scst.ce_weight", ">= 0"]),
    ("scst.reward_bleu4=1", []),
])
def test_bad_overrides_name_the_field(override, words):
    if not words:
        load_recipe("synth", [override])
        return
    with pytest.raises(ConfigError) as err:
        load_recipe("synth", [override])
    for word in words:
        assert word in str(err.value)


def test_tiny_sizes_merge_key_by_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {tiny: opt, tiny_sizes: {patch_size: 4, vision_hidden: 64}}\n")
    cfg = load_recipe(str(recipe), ["model.tiny_sizes.llm_layers=3", "model.path=/models/x"])
    assert cfg.model.tiny_sizes == {"patch_size": 4, "vision_hidden": 64, "llm_layers": 3}
    assert isinstance(load_recipe("synth").model.tiny_sizes, dict)


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="model.quant"):
        load_recipe("synth", ["model.quant=4bit", "model.llm=full"])
    with pytest.raises(ConfigError, match="model.path"):
        load_recipe("msrvtt_flant5xl_ft")
    for baseline in ("mean_others", "beam_mean"):
        with pytest.raises(ConfigError, match="scst.samples"):
            load_recipe("synth", ["scst.samples=1", f"scst.baseline={baseline}"])
    load_recipe("synth", ["scst.samples=1", "scst.baseline=greedy"])


def test_recipe_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ce: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_recipe(str(bad))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model: {tiny: opt}\ntrainer: {}\n")
    with pytest.raises(ConfigError, match="unknown field 'trainer'"):
        load_recipe(str(unknown))
    with pytest.raises(ConfigError, match="not found"):
        load_recipe("no_such_recipe")


def test_saved_config_round_trip(tmp_path):
    cfg = load_recipe("synth", ["ce.steps=11"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_saved_config(tmp_path / "config.yaml")
    assert again == cfg
