"""A model folder's ViT in and out: read its vision weights alone, and write a folder with new ones.

The vision stage trains the ViT before the model is built, so the result goes back into a Hugging Face
folder and the video stages load it as they load any checkpoint (under ZeRO-3 the weights are then
partitioned as they are read, as usual). Only safetensors shards that hold vision tensors are
rewritten; the other files of a user's folder are hard-linked (or copied) into the run folder, never
changed in place.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from .errors import UserError

VISION_PREFIX = "vision_model."
INDEX_FILE = "model.safetensors.index.json"


def weight_shards(folder: Path) -> list[Path]:
    """The folder's safetensors files (one, or the shards its index names)."""
    if (folder / INDEX_FILE).is_file():
        weight_map = json.loads((folder / INDEX_FILE).read_text()).get("weight_map", {})
        return [folder / name for name in sorted(set(weight_map.values()))]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    raise UserError(f"model folder {folder}: the vision stage reads and writes safetensors weights; this folder has "
                    "none (re-save it with save_pretrained(..., safe_serialization=True))")


def vision_model_class(model_type: str):
    from transformers import Blip2VisionModel, InstructBlipVideoVisionModel, InstructBlipVisionModel

    classes = {"blip-2": Blip2VisionModel, "instructblip": InstructBlipVisionModel,
               "instructblipvideo": InstructBlipVideoVisionModel}
    if model_type not in classes:
        raise UserError(f"model_type must be one of {list(classes)}, got {model_type!r}")
    return classes[model_type]


def load_vision_model(folder) -> torch.nn.Module:
    """The folder's ViT alone, in float32, with its trained weights (the LLM is never read)."""
    from safetensors import safe_open
    from transformers import AutoConfig

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    state = {}
    for shard in weight_shards(folder):
        with safe_open(str(shard), framework="pt") as handle:
            for key in handle.keys():
                if key.startswith(VISION_PREFIX):
                    state[key[len(VISION_PREFIX):]] = handle.get_tensor(key).float()
    vit = vision_model_class(config.model_type)(config.vision_config)
    missing, unexpected = vit.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"model folder {folder}: its vision weights do not fit its vision_config "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return vit.float()


def write_folder_with_vision(source, target, vision_state: dict) -> None:
    """`target` = `source` with the vision weights replaced (each cast to the dtype the folder stores);
    target may be source (the run's own tiny folder: rewritten in place, shard by shard, atomically)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    source, target = Path(source), Path(target)
    shards = weight_shards(source)
    if source.resolve() != target.resolve():
        target.mkdir(parents=True, exist_ok=True)
        for item in source.iterdir():
            if item in shards:
                continue
            if item.is_dir():
                shutil.copytree(item, target / item.name, dirs_exist_ok=True)
            else:
                _link_or_copy(item, target / item.name)
    for shard in shards:
        with safe_open(str(shard), framework="pt") as handle:
            keys, metadata = list(handle.keys()), handle.metadata() or {"format": "pt"}
            if not any(k.startswith(VISION_PREFIX) for k in keys):
                if source.resolve() != target.resolve():
                    _link_or_copy(shard, target / shard.name)
                continue
            tensors = {}
            for key in keys:
                tensor = handle.get_tensor(key)
                if key.startswith(VISION_PREFIX):
                    tensor = vision_state[key[len(VISION_PREFIX):]].detach().to("cpu", tensor.dtype).contiguous()
                tensors[key] = tensor
        partial = target / f"{shard.name}.partial"
        save_file(tensors, str(partial), metadata=metadata)
        partial.replace(target / shard.name)  # a new file: a hard link to the user's shard is never written


def _link_or_copy(source: Path, target: Path) -> None:
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)
