"""Captioned still images for the vision stage: LAVIS image-caption annotations and a dataset of frames.

The annotations are LAVIS's image-caption form (COCO Karpathy train, and `data synth`'s
stills_train.json): a list of records {"image": path, "caption": text or [texts]}, one record per
caption or per image; captions are grouped by image path, first-seen order kept. Image paths resolve
against the images root. A malformed record, or an image that is not there, raises one
AnnotationError naming the file, the record and the field.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .annotations import AnnotationError, _captions, _field, _load_json
from .video import frames_to_tensor


def read_image_captions(path, images_root=None, where: str = "") -> list[tuple[str, list[str]]]:
    """-> [(image path, its captions)], one entry per image; `where` prefixes errors (the recipe field)."""
    try:
        return _read(Path(path), images_root)
    except AnnotationError as err:
        raise AnnotationError(f"{where}: {err}" if where else str(err)) from None


def _read(path: Path, images_root) -> list[tuple[str, list[str]]]:
    data = _load_json(path)
    if not isinstance(data, list) or not data:
        raise AnnotationError(f"{path}: expected a non-empty list of {{image, caption}} records")
    grouped: dict[str, list[str]] = {}
    for i, record in enumerate(data):
        image = _field(path, f"record {i}", record, "image", str, "the image's path")
        grouped.setdefault(image, []).extend(_captions(path, f"record {i}", record, "caption"))
    root = Path(images_root) if images_root else path.parent
    images = [(str(root / image), captions) for image, captions in grouped.items()]
    missing = [image for image, _ in images if not Path(image).is_file()]
    if missing:
        raise AnnotationError(f"{path}: {len(missing)} of {len(images)} images not found under {root}, "
                              f"e.g. '{missing[0]}' (set the images root: vision.images)")
    return images


class StillDataset(torch.utils.data.Dataset):
    """(pixels (3, size, size) normalised as the model folder's image processor does, index) per image."""

    def __init__(self, images: list[str], size: int, mean, std):
        self.images, self.size, self.mean, self.std = images, size, mean, std

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.images[index]) as image:
                image = image.convert("RGB")
                if image.size != (self.size, self.size):
                    image = image.resize((self.size, self.size), Image.BICUBIC)
                pixels = np.array(image, dtype=np.uint8)  # a writable copy: torch.from_numpy warns on a read-only one
        except (OSError, UnidentifiedImageError) as err:
            raise AnnotationError(f"{self.images[index]}: cannot read the image ({err})") from None
        # the video frames' own normalisation, so that a still and a frame of the same pixels are the same input
        return frames_to_tensor(pixels[None], mean=self.mean, std=self.std)[0], index
