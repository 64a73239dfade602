"""The memory planner: exact counts on the meta device, ZeRO sharding and offload, the CLI's JSON."""
from __future__ import annotations

import json

import pytest

from ds_videocap.config import LoraCfg, ModelCfg

CAPTIONS = [f"a {c} {s} moves {m}" for c in ("red", "green", "blue") for s in ("circle", "square")
            for m in ("left", "right", "up", "down")]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from ds_videocap.build import build_tiny_folder
    from ds_videocap.tokenizer import train_caption_tokenizer
    root = tmp_path_factory.mktemp("plan")
    tok = train_caption_tokenizer(CAPTIONS, root / "tok")
    return {f: build_tiny_folder(f, tok, root / f) for f in ("opt", "t5", "llama")}


@pytest.fixture(scope="module")
def opt67_spec():
    from ds_videocap.plan import build_spec, load_plan_recipe, read_hf_config
    cfg = load_plan_recipe("msrvtt_opt6.7b_ft")
    return cfg, build_spec(read_hf_config(cfg), cfg.model, cfg.lora)


def _spec(folder, **fields):
    from transformers import AutoConfig

    from ds_videocap.plan import build_spec
    model_cfg = ModelCfg(path=str(folder), **fields)
    return build_spec(AutoConfig.from_pretrained(folder), model_cfg, LoraCfg())


@pytest.mark.parametrize("family,fields", [("opt", {}), ("t5", {"llm": "lora"}), ("llama", {"vit": "full"}),
                                           ("opt", {"llm": "full", "frame_embedding": True}),
                                           ("t5", {"motion_tokens": True}),
                                           ("opt", {"motion_tokens": True, "motion_patch": 4}),
                                           ("opt", {"motion_tokens": True, "conv_tokens": True}),
                                           ("llama", {"llm": "lora"})])
def test_meta_counts_match_the_built_model(folders, family, fields):
    from ds_videocap.build import build_model
    from ds_videocap.trainable import count_parameters
    model = build_model(ModelCfg(path=str(folders[family]), **fields), LoraCfg())
    trainable, total = count_parameters(model)
    spec = _spec(folders[family], **fields)
    assert (spec.trainable, spec.total) == (trainable, total)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert spec.lora == lora  # PEFT's own count of its adapters
    assert (lora > 0) == (fields.get("llm") == "lora")


def test_the_planner_refuses_motion_tokens_the_build_refuses(folders):
    from ds_videocap.errors import UserError

    # one rule for both (motion.motion_layout): a planner that floored would count a module that never builds
    with pytest.raises(UserError, match="motion_patch 5 does not divide the ViT's frame size 32"):
        _spec(folders["opt"], motion_tokens=True, motion_patch=5)


def test_study_model_counts_match_the_published_sizes(opt67_spec):
    _, spec = opt67_spec
    assert round(spec.total / 1e9, 2) == 7.75  # Salesforce/blip2-opt-6.7b: 7.75 B parameters
    assert spec.params["vision"] == 985_952_256  # EVA ViT-g without its last layer: 39 blocks
    assert spec.trainable == spec.params["qformer"]  # frozen LLM and ViT: Q-Former, queries, projection


def test_zero3_shards_model_states_over_gpus(opt67_spec):
    from ds_videocap.ds_json import read_ds_config
    from ds_videocap.plan import build_shape
    from ds_videocap.plan_memory import estimate_states
    cfg, spec = opt67_spec
    shape = build_shape(cfg, spec, 8)
    states = lambda name, n: sum(  # noqa: E731
        v for k, v in estimate_states(spec, shape, read_ds_config(f"ds_configs/{name}"), n)["gpu"].items()
        if k != "buffers")
    for n in (2, 8):
        ratio = states("zero3.json", n) / states("zero0.json", 1)
        assert 1 / n <= ratio < 1.05 / n  # persistent small parameters stay whole on every rank
    assert states("zero0.json", 8) == states("zero0.json", 1)  # ZeRO-0 replicates everything


def test_offload_moves_optimizer_states_to_the_cpu(opt67_spec):
    from ds_videocap.ds_json import read_ds_config
    from ds_videocap.plan import build_shape
    from ds_videocap.plan_memory import estimate_states
    cfg, spec = opt67_spec
    shape = build_shape(cfg, spec, 8)
    on_gpu = estimate_states(spec, shape, read_ds_config("ds_configs/zero2.json"), 1)
    offload = estimate_states(spec, shape, read_ds_config("ds_configs/zero2_offload.json"), 1)
    assert on_gpu["gpu"]["optimizer"] == pytest.approx(spec.trainable * 16) and on_gpu["cpu"]["optimizer"] == 0
    assert offload["gpu"]["optimizer"] == 0 and offload["cpu"]["optimizer"] >= spec.trainable * 16
    assert offload["gpu"]["params"] == on_gpu["gpu"]["params"]  # offload_optimizer keeps the weights on the GPU
    param_off = estimate_states(spec, shape, read_ds_config("ds_configs/zero3_offload.json"), 1)
    assert param_off["gpu"]["params"] < 0.001 * on_gpu["gpu"]["params"] and param_off["cpu"]["params"] > 0


def test_plan_json_has_the_documented_keys(capsys):
    from ds_videocap.cli import main
    from ds_videocap.plan import list_ds_configs
    assert main(["plan", "--recipe", "msrvtt_opt6.7b_ft", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert {"params_total", "params_trainable", "configs", "recommended"} <= set(plan)
    assert len(plan["configs"]) == len(list_ds_configs())
    for row in plan["configs"]:
        assert {"config", "gpu_gib", "cpu_gib", "fits"} <= set(row)
    assert plan["recommended"] in [r["config"] for r in plan["configs"] if r["fits"]]


def test_7b_recipes_on_one_24gb_gpu():
    """At the study's micro-batch 64, activations alone (25-39 GiB) exceed 24 GiB under every JSON;
    at 16, ZeRO-3 with offload is what fits Vicuna-7B + LoRA (OPT-6.7B, frozen, fits ZeRO-2 offload)."""
    from ds_videocap.plan import load_plan_recipe, plan_recipe
    for recipe in ("msrvtt_opt6.7b_ft", "msrvtt_vicuna7b_ft"):
        assert plan_recipe(load_plan_recipe(recipe), gpu_mem=24)["recommended"] is None
    plan = plan_recipe(load_plan_recipe("msrvtt_vicuna7b_ft", ["ce.micro_batch=16"]), gpu_mem=24)
    assert plan["recommended"] == "ds_configs/zero3_offload.json"


def test_recipe_without_a_known_model_is_a_user_error(tmp_path):
    from ds_videocap.errors import UserError
    from ds_videocap.plan import load_plan_recipe, plan_recipe
    cfg = load_plan_recipe("msrvtt_opt6.7b_ft")
    cfg.name = "my_recipe"
    with pytest.raises(UserError, match="model.path"):
        plan_recipe(cfg)
    cfg.model.path = str(tmp_path)
    with pytest.raises(UserError, match="config.json"):
        plan_recipe(cfg)


def test_scst_phase_is_planned_and_can_be_the_peak():
    """SCST's policy-gradient pass runs the LLM on micro_batch x K sampled captions and its rollout holds
    a key/value cache for all of them: a recipe that runs SCST is planned for the larger phase."""
    from ds_videocap.plan import load_plan_recipe, plan_recipe
    zero0 = ["ds_configs/zero0.json"]

    def row(*overrides):
        return plan_recipe(load_plan_recipe("msrvtt_opt2.7b_scst", list(overrides)), configs=zero0)["configs"][0]

    ce_only = row("ce.steps=100", "scst.steps=0", "ce.micro_batch=2")
    both = row("ce.steps=100", "ce.micro_batch=2", "scst.micro_batch=8", "scst.samples=8")
    assert ce_only["peak_phase"] == "ce" and both["peak_phase"] == "scst"
    assert both["activations_gib"]["total"] > ce_only["activations_gib"]["total"]
    assert both["activations_gib"]["ce_total"] == ce_only["activations_gib"]["total"]
    # more samples, or longer ones, never need less: the pass and the rollout both grow
    more = row("ce.steps=0", "scst.micro_batch=8", "scst.samples=16")
    longer = row("ce.steps=0", "scst.micro_batch=8", "scst.samples=8", "scst.max_new_tokens=64")
    base = row("ce.steps=0", "scst.micro_batch=8", "scst.samples=8")
    for bigger in (more, longer):
        assert bigger["activations_gib"]["llm"] > base["activations_gib"]["llm"]
        assert bigger["activations_gib"]["rollout"] > base["activations_gib"]["rollout"]
    assert base["scst_micro_batch"] == 8 and "ce_total" not in base["activations_gib"]
