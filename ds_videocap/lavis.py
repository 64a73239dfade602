"""`ds-videocap import-lavis`: a LAVIS BLIP-2 / InstructBLIP checkpoint -> a Hugging Face folder.

The study trained with LAVIS, whose runner saves {"model": state dict, "config": ...} holding only
the parameters that trained (Q-Former, query tokens, projection, ln_vision; the ViT when it was
unfrozen; LoRA factors when LoRA was on) plus buffers. The --base folder, a Hugging Face folder of
the same architecture (e.g. Salesforce/blip2-flan-t5-xl), gives the config, tokenizers,
preprocessor and the frozen weights the checkpoint omits. LoRA is merged into the LLM weights
(W += B @ A * alpha / r), so the output loads in plain transformers and in build_model.

Nothing is dropped silently: a key with no Hugging Face name, a weight expected but neither in the
checkpoint nor allowed from --base, or a shape that differs from the base refuses the import and
lists every such name; nothing is written then.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from .build import check_folder, read_family
from .errors import UserError
from .lavis_names import checkpoint_family, may_come_from_base, qkv_bias_name, rename
from .processor import read_image_settings, set_image_size

DEFAULT_LORA_R, DEFAULT_LORA_ALPHA = 8, 16
_SHARD = re.compile(r"^(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?$")
_NOT_COPIED = ("videocap.json", "videocap_extra.safetensors", "llm_adapter")  # our side files: rewritten
_LISTED = 40  # names shown per problem kind; the count is always given
POSITION = "vision_model.embeddings.position_embedding"


def import_command(args) -> int:
    report = import_lavis(args.checkpoint, args.base, args.out, lora_r=getattr(args, "lora_r", None),
                          lora_alpha=getattr(args, "lora_alpha", None))
    print(f"[import-lavis] {report['out']}: {report['family']} model, {report['from_checkpoint']} tensors from "
          f"the checkpoint, {sum(report['from_base'].values())} from --base {report['from_base']}")
    if report["lora_merged"]:
        print(f"[import-lavis] LoRA merged into {report['lora_merged']} LLM weights "
              f"(r={report['lora_r']}, alpha={report['lora_alpha']})")
    print(f"[import-lavis] frames: {report['image_size']} px")
    return 0


def import_lavis(checkpoint, base, out, lora_r: int | None = None, lora_alpha: float | None = None) -> dict:
    import torch
    from transformers import AutoConfig

    checkpoint, out = Path(checkpoint), Path(out)
    state, run_config = read_checkpoint(checkpoint)
    base = check_folder(base)
    config = AutoConfig.from_pretrained(base, local_files_only=True)
    if config.model_type not in ("blip-2", "instructblip"):
        raise UserError(f"--base {base}: model_type must be blip-2 or instructblip, got {config.model_type!r}")
    family, instruct = read_family(config), config.model_type == "instructblip"
    found = checkpoint_family(state)
    if found is not None and found != family:
        raise UserError(f"{checkpoint} holds a {found} LLM (its t5_/opt_/llm_ names) but --base {base} is a "
                        f"{family} model: give a base folder of the same architecture")
    base_weights = read_weights(base)
    aliases = _tied_aliases(config, base_weights)

    mapped, lora, qkv, tied, unknown, missing = {}, {}, {}, [], [], []
    for key, tensor in state.items():
        rule = rename(key, instruct)
        if rule is None:
            unknown.append(key)
        elif rule[0] == "qkv_bias":
            qkv.setdefault(rule[1], {})[rule[2]] = tensor
        elif rule[0] in ("weight", "lora"):
            name = aliases.get(rule[1], rule[1])
            if name not in base_weights:
                unknown.append(f"{key} (-> {rule[1]}, which the base model does not have)")
            elif rule[0] == "lora":
                lora.setdefault(name, {})[rule[2]] = tensor
            elif rule[1] != name:  # a name --base ties to another: placed once every canonical one is read
                tied.append((key, rule[1], name, tensor))
            else:
                mapped[name] = tensor
    for layer, parts in sorted(qkv.items()):
        if set(parts) != {"q", "v"}:
            missing.append(f"visual_encoder.blocks.{layer}.attn.{'v' if 'q' in parts else 'q'}_bias")
            continue
        q, v = parts["q"], parts["v"]
        mapped[qkv_bias_name(layer)] = torch.cat([q, torch.zeros_like(v), v])
    vit_size = _vit_trained_size(mapped, base_weights, config.vision_config)
    untied, refused = _place_tied(tied, mapped, family)
    mismatched = [f"{key}: differs from {name}, to which --base ties it, and only T5's output head can be untied"
                  for key, name in refused] + [
                  f"{name}: checkpoint {tuple(t.shape)}, base {tuple(base_weights[name].shape)}"
                  for name, t in mapped.items() if name in base_weights and t.shape != base_weights[name].shape
                  and not (name == POSITION and vit_size)]
    from_base = [n for n in base_weights if n not in mapped]
    missing += [n for n in from_base if not may_come_from_base(n, instruct)]
    scale, r, alpha = _lora_scale(lora, lora_r, lora_alpha, run_config, base_weights, missing, mismatched)
    _refuse_if_incomplete(checkpoint, unknown, missing, mismatched)

    weights = {name: mapped[name].detach().clone().contiguous() if name in mapped else base_weights[name]
               for name in base_weights}
    # transformers unties T5's head at load when the file holds both it and `shared` with other values
    weights.update({name: t.detach().clone().contiguous() for name, t in untied.items()})
    for name, pair in lora.items():
        w = weights[name]
        weights[name] = (w.float() + (pair["B"].float() @ pair["A"].float()) * scale).to(w.dtype).contiguous()
    image_size = _write_folder(base, out, weights, family, run_config, vit_size)
    counts = {}
    for name in from_base:
        counts[name.split(".")[0]] = counts.get(name.split(".")[0], 0) + 1
    return {"out": str(out), "family": family, "from_checkpoint": len(mapped) + len(untied), "from_base": counts,
            "lora_merged": len(lora), "lora_r": r, "lora_alpha": alpha, "image_size": image_size}


def _place_tied(tied: list, mapped: dict, family: str) -> tuple[dict, list]:
    """Checkpoint tensors whose names --base ties to another weight (LAVIS lists every alias).

    A tensor equal to its canonical one is the same weight under another name. One that differs is not
    dropped: T5's output head (FLAN-T5's is separate from `shared`; transformers 5 ties it in the config
    and unties it at load only when the file holds both) is returned to be written under its own name;
    any other is refused, as (key, canonical name). Heads go last, so that a group
    whose canonical name is absent from the checkpoint takes an embedding, never the head.
    """
    import torch

    untied, refused = {}, []
    for key, alias, name, tensor in sorted(tied, key=lambda item: item[1].endswith("lm_head.weight")):
        if name not in mapped:
            mapped[name] = tensor
        elif torch.equal(tensor, mapped[name]):
            continue
        elif family == "t5" and alias == "language_model.lm_head.weight":
            untied[alias] = tensor
        else:
            refused.append((key, name))
    return untied, refused


def read_checkpoint(path: Path) -> tuple[dict, dict]:
    """(state dict, LAVIS run config or {}) from a .pth, loaded without unpickling arbitrary objects."""
    import pickle

    import torch

    if not path.is_file():
        raise UserError(f"--checkpoint {path}: file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise UserError(f"{path}: cannot be loaded with torch.load(weights_only=True): "
                        f"{str(err).strip().splitlines()[0]}") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        config = obj.get("config")
        return obj["model"], config if isinstance(config, dict) else {}
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, {}  # a bare state dict
    raise UserError(f"{path}: expected a LAVIS checkpoint ({{'model': state_dict, ...}}) or a state dict")


def read_weights(folder: Path) -> dict:
    """Every tensor of a Hugging Face folder's weights (safetensors or .bin, one file or shards)."""
    import torch
    from safetensors.torch import load_file

    for index_name, loader in (("model.safetensors.index.json", lambda p: load_file(str(p))),
                               ("pytorch_model.bin.index.json",
                                lambda p: torch.load(p, map_location="cpu", weights_only=True))):
        index = folder / index_name
        if index.is_file():
            weights = {}
            for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
                weights.update(loader(folder / shard))
            return weights
    if (folder / "model.safetensors").is_file():
        return load_file(str(folder / "model.safetensors"))
    return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)


def _tied_aliases(config, base_weights: dict) -> dict:
    """{alias: saved name} for tied weights (T5's shared / embed_tokens / lm_head, OPT's lm_head).

    LAVIS's state dicts list every alias; save_pretrained keeps one name per tied group. The groups
    come from the model built on the meta device (no memory, no initialisation).
    """
    import torch
    from transformers import Blip2ForConditionalGeneration, InstructBlipForConditionalGeneration

    cls = InstructBlipForConditionalGeneration if config.model_type == "instructblip" else Blip2ForConditionalGeneration
    with torch.device("meta"):
        model = cls(config)
    groups = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    aliases = {}
    for names in groups.values():
        saved = next((n for n in names if n in base_weights), None)
        aliases.update({n: saved for n in names if saved is not None and n != saved and n not in base_weights})
    return aliases


def _lora_scale(lora: dict, lora_r, lora_alpha, run_config: dict, base_weights: dict, missing: list,
                mismatched: list):
    """alpha / r for the LoRA pairs; r is read from the factors' shapes, alpha from the option, the
    checkpoint's config (model.lora_alpha, as the study's LAVIS configs name it) or the default."""
    if not lora:
        return 0.0, None, None
    model_cfg = run_config.get("model", {}) if isinstance(run_config.get("model"), dict) else {}
    alpha = lora_alpha if lora_alpha is not None else model_cfg.get("lora_alpha", DEFAULT_LORA_ALPHA)
    ranks = set()
    for name, pair in lora.items():
        if set(pair) != {"A", "B"}:
            missing.append(f"{name}: LoRA factor lora_{'B' if 'A' in pair else 'A'}")
            continue
        a, b, w = pair["A"], pair["B"], base_weights[name]
        if a.shape[0] != b.shape[1] or (b.shape[0], a.shape[1]) != tuple(w.shape):
            mismatched.append(f"{name}: LoRA A {tuple(a.shape)} and B {tuple(b.shape)} do not fit the weight "
                              f"{tuple(w.shape)}")
        ranks.add(a.shape[0])
    if not ranks:
        return 0.0, None, alpha
    if len(ranks) > 1:
        raise UserError(f"LoRA factors have different ranks {sorted(ranks)}: one r per checkpoint is supported")
    r = ranks.pop()
    if lora_r is not None and lora_r != r:
        raise UserError(f"--lora-r {lora_r} but the checkpoint's LoRA factors have rank {r}")
    return float(alpha) / r, r, alpha


def _refuse_if_incomplete(checkpoint: Path, unknown: list, missing: list, mismatched: list) -> None:
    problems = []
    for title, names in (("keys with no Hugging Face name", unknown),
                         ("weights expected but not found (and not supplied by --base)", missing),
                         ("shapes that differ from --base", mismatched)):
        if names:
            shown = "\n    ".join(names[:_LISTED])
            more = f"\n    ... and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
            problems.append(f"  {title} ({len(names)}):\n    {shown}{more}")
    if problems:
        raise UserError(f"{checkpoint}: not imported, nothing written:\n" + "\n".join(problems))


def _vit_trained_size(mapped: dict, base_weights: dict, vision_config) -> int | None:
    """The frame size a ViT trained inside the checkpoint had, when it differs from the base's.

    LAVIS interpolates the ViT's position embedding when it builds a model for another image size
    (the study's 364 px on the 224 px EVA ViT), so a run that trained the ViT saves a longer pos_embed:
    1 + (size / patch)^2 positions. Such a ViT is imported at its own size (the folder's config then
    says so) instead of being refused as a shape mismatch; any other shape difference is refused.
    """
    import math

    pos = mapped.get(POSITION)
    if pos is None or POSITION not in base_weights or pos.shape == base_weights[POSITION].shape:
        return None
    base_shape = base_weights[POSITION].shape
    side = math.isqrt(pos.shape[-2] - 1)
    if pos.dim() != 3 or pos.shape[0] != 1 or pos.shape[-1] != base_shape[-1] or side * side != pos.shape[-2] - 1:
        return None
    return side * vision_config.patch_size


def _write_folder(base: Path, out: Path, weights: dict, family: str, run_config: dict,
                  vit_size: int | None = None) -> int:
    """Base's config, tokenizers and preprocessor, the imported weights, and our videocap.json."""
    from huggingface_hub import save_torch_state_dict

    if out.resolve() == base.resolve():
        raise UserError(f"--out {out} is the --base folder: write the import to a new folder")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} is not empty: give a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    for item in base.iterdir():
        if _SHARD.match(item.name) or item.name in _NOT_COPIED:
            continue
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, out / item.name)
    save_torch_state_dict(weights, out)
    model_cfg = run_config.get("model", {}) if isinstance(run_config.get("model"), dict) else {}
    # The study's LAVIS runs concatenate all frames' ViT tokens before one Q-Former pass.
    meta = {"family": family, "fusion": "concat", "source": "lavis"}
    if isinstance(model_cfg.get("prompt"), str):
        meta["prompt"] = model_cfg["prompt"]
    (out / "videocap.json").write_text(json.dumps(meta, indent=2))
    size = read_image_settings(out)[0]  # processor_config.json or preprocessor_config.json, via transformers
    trained = model_cfg.get("image_size")
    if vit_size:  # the ViT itself was trained at another size: the folder's native size becomes that
        config = json.loads((out / "config.json").read_text())
        config["vision_config"]["image_size"] = vit_size
        (out / "config.json").write_text(json.dumps(config, indent=2))
        trained = vit_size if not isinstance(trained, int) else trained
    if isinstance(trained, int) and trained != size:
        # LAVIS fed the (interpolated) ViT frames of this size; build_model interpolates the same way.
        set_image_size(out, trained)
        size = trained
    return size
