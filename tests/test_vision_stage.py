"""The vision stage's parts: image-caption annotations, the caption target, the balanced loss, and the
folder written back (read by transformers' own from_pretrained). The stage end to end, under the
launcher on 2 ranks in fp32 and bf16: test_e2e_vision_stage.py."""
import json

import pytest
import torch

from ds_videocap.annotations import AnnotationError
from ds_videocap.stills import StillDataset, read_image_captions
from ds_videocap.vision_stage import balanced_loss, caption_vectors
from ds_videocap.vision_weights import load_vision_model, write_folder_with_vision


def write_stills(folder, records, images=("a.png", "b.png")):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(images):
        Image.new("RGB", (16, 16), (40 * i, 200, 10)).save(folder / name)
    path = folder / "stills.json"
    path.write_text(json.dumps(records))
    return path


def test_captions_group_by_image_in_either_lavis_form(tmp_path):
    path = write_stills(tmp_path, [{"image": "a.png", "caption": "a red ball"},
                                   {"image": "b.png", "caption": ["x", "y"]},
                                   {"image": "a.png", "caption": "a red disk"}])
    assert read_image_captions(path) == [(str(tmp_path / "a.png"), ["a red ball", "a red disk"]),
                                         (str(tmp_path / "b.png"), ["x", "y"])]


@pytest.mark.parametrize("records, message", [
    ({"image": "a.png"}, "non-empty list"),
    ([{"caption": "a"}], "record 0: missing field 'image'"),
    ([{"image": "a.png", "caption": 3}], "record 0: field 'caption' must be a caption string"),
    ([{"image": "a.png", "caption": "x"}, {"image": "gone.png", "caption": "y"}], "1 of 2 images not found"),
])
def test_bad_annotations_name_the_file_and_field(tmp_path, records, message):
    path = write_stills(tmp_path, records)
    with pytest.raises(AnnotationError, match=message) as err:
        read_image_captions(path, where="recipe 'x': field 'vision.train'")
    assert str(path) in str(err.value) and "vision.train" in str(err.value)


def test_dataset_resizes_and_normalises_as_the_processor_would(tmp_path):
    path = write_stills(tmp_path, [{"image": "b.png", "caption": "x"}], images=("b.png",))
    image = read_image_captions(path)[0][0]
    pixels, index = StillDataset([image], 8, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])[0]
    assert index == 0 and pixels.shape == (3, 8, 8)
    assert torch.allclose(pixels[:, 3, 3], (torch.tensor([0, 200, 10]) / 255 - 0.5) / 0.25, atol=0.02)


def test_caption_vectors_put_synonyms_together_and_shapes_apart():
    """Images whose captions use different words for the same thing get the same target; other shapes
    and colours differ: the target carries content, not wording."""
    shapes = {"round": ["ball", "disk", "circle"], "box": ["box", "block", "square"], "wedge": ["wedge", "triangle"]}
    captions, kinds = [], []
    for i in range(300):
        kind = list(shapes)[i % 3]
        colour = ("red", "blue", "green")[(i // 3) % 3]
        words = shapes[kind]
        captions.append([f"a {colour} {words[(i + k) % len(words)]}" for k in range(5)])
        kinds.append((kind, colour))
    vectors, spectrum = caption_vectors(captions, 4, 50)
    assert vectors.shape == (300, 4) and len(spectrum) >= 4
    same = [(a, b) for a in range(60) for b in range(a + 1, 60) if kinds[a] == kinds[b] and captions[a] != captions[b]]
    other = [(a, b) for a in range(60) for b in range(a + 1, 60) if kinds[a][0] != kinds[b][0]]
    distance = lambda pairs: torch.stack([(vectors[a] - vectors[b]).norm() for a, b in pairs]).mean()  # noqa: E731
    assert distance(same) < 0.2 * distance(other)


def test_balanced_loss_weighs_the_axis_that_learns_slowest():
    state = {}
    first = balanced_loss(torch.tensor([1.0, 1.0]), state, 2.0)
    assert first.item() == pytest.approx(1.0)
    for _ in range(200):  # axis 0 falls to a tenth, axis 1 stays
        balanced_loss(torch.tensor([0.1, 1.0]), state, 2.0)
    per_axis = torch.tensor([0.1, 1.0], requires_grad=True)
    balanced_loss(per_axis, state, 2.0).backward()
    assert per_axis.grad[1] > 50 * per_axis.grad[0]  # (1 / 0.1)^2 = 100 once the rates have settled
    plain = torch.tensor([0.1, 1.0], requires_grad=True)
    balanced_loss(plain, {}, 0.0).backward()
    assert torch.equal(plain.grad, torch.tensor([0.5, 0.5]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_written_folder_loads_with_new_vision_and_everything_else_unchanged(tiny_folders, tmp_path, dtype):
    """A user's folder (here saved in bf16 too, and sharded) is copied, never changed: the copy holds the
    new ViT in the folder's dtype, and transformers' from_pretrained reads every other weight unchanged."""
    from transformers import Blip2ForConditionalGeneration

    source = tmp_path / "user_folder"
    original = Blip2ForConditionalGeneration.from_pretrained(tiny_folders["opt"], dtype=dtype)
    original.save_pretrained(source, max_shard_size="200KB")
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "videocap.json"):
        (source / name).write_bytes((tiny_folders["opt"] / name).read_bytes())
    assert (source / "model.safetensors.index.json").is_file()
    before = {p.name: p.read_bytes() for p in source.iterdir() if p.is_file()}
    vit = load_vision_model(source)
    assert all(p.dtype == torch.float32 for p in vit.parameters())
    state = {k: v + 1.0 for k, v in vit.state_dict().items()}
    target = tmp_path / "run" / "init_model"
    write_folder_with_vision(source, target, state)
    assert {p.name: p.read_bytes() for p in source.iterdir() if p.is_file()} == before
    loaded = Blip2ForConditionalGeneration.from_pretrained(target)
    for key, value in loaded.state_dict().items():
        old = original.state_dict()[key]
        assert value.dtype == dtype, key
        if key.startswith("vision_model."):
            assert torch.equal(value, state[key[len("vision_model."):]].to(dtype)), key
        else:
            assert torch.equal(value, old), key
    write_folder_with_vision(target, target, {k: v * 0 for k, v in state.items()})  # in place: the run's own
    assert load_vision_model(target).embeddings.patch_embedding.weight.abs().sum() == 0


def test_instructblip_vision_model_loads(tiny_folders):
    vit = load_vision_model(tiny_folders["llama"])
    assert type(vit).__name__ == "InstructBlipVisionModel"
    assert torch.isfinite(vit(pixel_values=torch.randn(1, 3, 32, 32)).last_hidden_state).all()


def test_stage_leaves_each_ranks_random_stream_its_own(tiny_folders, tmp_path):
    """train.py seeds each rank with seed + rank (dropout masks, SCST samples differ across ranks); the
    stage seeds its head alike on every rank, and must not reset the ranks' streams to one shared state."""
    from dataclasses import replace

    from ds_videocap.recipe_io import load_recipe
    from ds_videocap.vision_stage import _train

    path = write_stills(tmp_path, [{"image": "a.png", "caption": "a red ball"},
                                   {"image": "b.png", "caption": "a blue box"}])
    cfg = load_recipe("synth")
    cfg = replace(cfg, model=replace(cfg.model, path=str(tiny_folders["opt"])),
                  data=replace(cfg.data, image_size=16, image_mean=[0.5] * 3, image_std=[0.25] * 3),
                  vision=replace(cfg.vision, steps=2, micro_batch=2, train=str(path), images=str(tmp_path)))
    after = []
    for rank in (0, 1):
        torch.manual_seed(cfg.seed + rank)
        _train(cfg, {}, rank, lambda _: None)
        after.append(torch.rand(4))
    assert not torch.equal(after[0], after[1])
