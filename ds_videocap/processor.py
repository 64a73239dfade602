"""A model folder's processor files: read its image settings, write a processor stock transformers uses.

transformers 5 saves a processor's image settings inside `processor_config.json`; folders saved by
transformers 4 (most hub checkpoints) have `preprocessor_config.json`. Both are read through
transformers' own AutoImageProcessor (AutoVideoProcessor for a folder that only has a video
processor), never parsed by hand, so that whatever the library accepts is accepted here.

The processor written on export (and for tiny folders) is transformers' own Blip2Processor /
InstructBlipProcessor with `num_query_tokens`, plus a generation config whose stop token and decoding
settings are ours: `processor(images=frame, text=prompt)` then `generate(**inputs)` captions a still
video exactly as `ds-videocap caption` does.
"""
from __future__ import annotations

from pathlib import Path

from .errors import UserError

PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json")


def has_processor_files(folder: Path) -> bool:
    return any((Path(folder) / name).is_file() for name in PROCESSOR_FILES)


def _load_processor(folder: Path):
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as image_err:
        try:  # an InstructBLIP-Video folder may hold a video processor only
            from transformers import AutoVideoProcessor

            return AutoVideoProcessor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError, ImportError) as video_err:
            raise UserError(f"model folder {folder}: no image processor settings could be read from "
                            f"{' or '.join(PROCESSOR_FILES[:2])} ({str(image_err).splitlines()[0][:120]}; "
                            f"{str(video_err).splitlines()[0][:120]})") from None


def read_image_settings(folder: str | Path) -> tuple[int, tuple, tuple]:
    """(frame size, mean, std) the folder's image processor resizes and normalises to."""
    folder = Path(folder)
    if not has_processor_files(folder):
        raise UserError(f"model folder {folder}: missing processor_config.json or preprocessor_config.json "
                        "(image size, mean, std)")
    proc = _load_processor(folder)
    crop = getattr(proc, "crop_size", None) if getattr(proc, "do_center_crop", False) else None
    side = _side(crop) or _side(getattr(proc, "size", None))
    if not side:
        raise UserError(f"model folder {folder}: its image processor gives no frame size (size.height)")
    if getattr(proc, "do_normalize", True) is False:  # pixels only rescaled to [0, 1]
        return int(side), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    mean, std = getattr(proc, "image_mean", None), getattr(proc, "image_std", None)
    if mean is None or std is None:
        raise UserError(f"model folder {folder}: its image processor gives no image_mean / image_std")
    return int(side), tuple(float(m) for m in mean), tuple(float(s) for s in std)


def save_processor(out: str | Path, tokenizer, qformer_tokenizer, image_size: int, mean, std,
                   num_query_tokens: int) -> None:
    """Write transformers' own processor (processor_config.json, tokenizers) for the folder.

    Decoder-only captions start after bos (model.py's layout [V; bos; prompt]): the saved tokenizer adds
    bos, as OPT's and Vicuna's hub tokenizers do, so that `processor(images, text=prompt)` builds the
    same input ids. Our own code never relies on that (it places bos itself).
    """
    import copy

    from transformers import Blip2Processor, BlipImageProcessor, InstructBlipProcessor

    tokenizer = copy.deepcopy(tokenizer)  # the live model's tokenizer stays as it was
    if tokenizer.bos_token_id is not None and hasattr(tokenizer, "add_bos_token") and \
            tokenizer("").input_ids[:1] != [tokenizer.bos_token_id]:
        tokenizer.add_bos_token = True
    images = BlipImageProcessor(size={"height": image_size, "width": image_size}, image_mean=list(mean),
                                image_std=list(std), do_resize=True, resample=3, do_rescale=True,
                                do_normalize=True, do_convert_rgb=True)
    if qformer_tokenizer is not None:
        processor = InstructBlipProcessor(images, tokenizer, qformer_tokenizer, num_query_tokens=num_query_tokens)
    else:
        processor = Blip2Processor(images, tokenizer, num_query_tokens=num_query_tokens)
    processor.save_pretrained(str(out))
    stale = Path(out) / "preprocessor_config.json"  # a copied old-layout file would shadow nothing but confuse
    if stale.is_file():
        stale.unlink()


def set_image_size(folder: str | Path, size: int) -> None:
    """Rewrite the folder's processor with frames of `size` px, through transformers, in either layout."""
    from transformers import AutoImageProcessor, AutoProcessor

    folder = Path(folder)
    try:
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        images = processor.image_processor
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        processor = images = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    images.size = {"height": size, "width": size}
    processor.save_pretrained(str(folder))
    if processor is not images and (folder / "preprocessor_config.json").is_file():
        (folder / "preprocessor_config.json").unlink()  # now in processor_config.json


def _side(size) -> int | None:
    """height (or shortest_edge) of a size dict or transformers' SizeDict."""
    if not size:
        return None
    get = size.get if isinstance(size, dict) else (lambda key: getattr(size, key, None))
    return get("height") or get("shortest_edge")


def save_generation_config(out: str | Path, model, eval_cfg) -> None:
    """The caption's stop token as the LLM's end token, and generation_config.json with our decoding.

    Blip2ForConditionalGeneration.generate runs the inner LLM's generate, whose defaults come from
    config.json's text_config (so its eos_token_id is set to the stop token there, as the hub's
    blip2-opt folders have "\n"), not from generation_config.json: that file holds the evaluation's
    decoding (beam 5, 5-32 new tokens) for `generate(**inputs, generation_config=...)`.
    """
    from transformers import AutoConfig, GenerationConfig

    stop = model.stop_ids if len(model.stop_ids) > 1 else model.stop_ids[0]
    folder_config = AutoConfig.from_pretrained(str(out), local_files_only=True)
    folder_config.text_config.eos_token_id = stop
    folder_config.save_pretrained(str(out))
    lm_config = model.hf.config.text_config
    config = GenerationConfig(
        eos_token_id=stop,
        pad_token_id=model.pad_id, bos_token_id=getattr(lm_config, "bos_token_id", None),
        decoder_start_token_id=getattr(lm_config, "decoder_start_token_id", None) if model.is_encoder_decoder else None,
        num_beams=eval_cfg.num_beams, max_new_tokens=eval_cfg.max_new_tokens,
        min_new_tokens=eval_cfg.min_new_tokens, length_penalty=eval_cfg.length_penalty,
        repetition_penalty=eval_cfg.repetition_penalty, do_sample=False)
    config.save_pretrained(str(out))
