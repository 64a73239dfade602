"""Model folders as transformers writes them: both processor layouts, the folder's normalisation reaching
the frames, InstructBLIP-Video folders against transformers' own generate, the export used the stock way,
and the LAVIS-style bos target for OPT."""
from __future__ import annotations

import shutil
from argparse import Namespace

import pytest
import torch
from tiny_models import CAPTIONS, frames, instructblip_video_folder, load

from ds_videocap.build import image_settings

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def old_layout(folder, out, mean=MEAN, std=STD):
    """A copy of `folder` as transformers 4 saved it: preprocessor_config.json (the image processor's own
    dict, with the processor class), no processor_config.json."""
    import json

    from transformers import BlipImageProcessor

    shutil.copytree(folder, out)
    (out / "processor_config.json").unlink()
    settings = BlipImageProcessor(size={"height": 32, "width": 32}, image_mean=list(mean), image_std=list(std))
    older = {**settings.to_dict(), "processor_class": "Blip2Processor"}
    (out / "preprocessor_config.json").write_text(json.dumps(older))
    return out


def test_both_processor_layouts_are_read(tiny_folders, tmp_path):
    new = tiny_folders["opt"]  # saved by transformers 5's own processor.save_pretrained
    assert (new / "processor_config.json").is_file() and not (new / "preprocessor_config.json").exists()
    assert image_settings(new) == (32, pytest.approx((0.48145466, 0.4578275, 0.40821073)),
                                   pytest.approx((0.26862954, 0.26130258, 0.27577711)))
    old = old_layout(new, tmp_path / "old")
    assert image_settings(old) == (32, pytest.approx(MEAN), pytest.approx(STD))
    model = load(old)
    assert model.image_mean == pytest.approx(MEAN) and model.image_std == pytest.approx(STD)
    assert model.generate(frames(batch=1, t=2), max_new_tokens=3).shape[0] == 1


def test_frames_are_normalised_as_the_folders_processor_does(tiny_folders, tmp_path, make_video):
    """Decoded frames, through the dataset eval and caption use, equal the folder's own image processor."""
    from transformers import AutoImageProcessor

    from ds_videocap.annotations import Clip
    from ds_videocap.config import RecipeCfg
    from ds_videocap.data import VideoCaptionDataset
    from ds_videocap.evaluate import _eval_data_cfg
    from ds_videocap.video import read_frames

    folder = old_layout(tiny_folders["t5"], tmp_path / "t5")
    video = make_video("clip.mp4", frames=12, width=32, height=32)
    model = load(folder)
    data_cfg = _eval_data_cfg(model, RecipeCfg(), Namespace(frames=4, videos=None))
    ours = VideoCaptionDataset([Clip("0", str(video), ["a clip"])], data_cfg, train=False)[0]["pixel_values"]
    raw = read_frames(video, "uniform", 4, 32)
    theirs = AutoImageProcessor.from_pretrained(folder)(images=list(raw), return_tensors="pt").pixel_values
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def video_folder(tiny_folders, tmp_path_factory):
    return instructblip_video_folder(tiny_folders["llama"], tmp_path_factory.mktemp("video") / "instructblipvideo")


def test_instructblip_video_equals_transformers_generate(video_folder):
    """Our captions equal InstructBlipVideoForConditionalGeneration.generate on the same frames, with the
    LLM input built as InstructBlipVideoProcessor builds it (video tokens x Q x 4, then the tokenized
    prompt with bos; the Q-Former gets the prompt through its own tokenizer)."""
    from transformers import AutoTokenizer, InstructBlipVideoForConditionalGeneration

    model = load(video_folder).eval()
    assert model.fusion == "per_frame" and model.qformer_text and model.prompt == "a video of"
    pixels = frames(batch=2, t=4, seed=3)
    options = dict(num_beams=3, max_new_tokens=8, min_new_tokens=2)
    ours = model.decode(model.generate(pixels, **options))

    hf = InstructBlipVideoForConditionalGeneration.from_pretrained(video_folder).eval()
    tok = AutoTokenizer.from_pretrained(video_folder)
    qtok = AutoTokenizer.from_pretrained(video_folder / "qformer_tokenizer")
    prompts = [model.prompt] * 2
    qformer = qtok(prompts, return_tensors="pt")
    text = tok(prompts, return_tensors="pt").input_ids
    assert text[0, 0].item() == tok.bos_token_id
    video_tokens = torch.full((2, model.num_query_tokens * 4), hf.config.video_token_index)
    input_ids = torch.cat([video_tokens, text], 1)
    out = hf.generate(pixel_values=pixels, qformer_input_ids=qformer.input_ids,
                      qformer_attention_mask=qformer.attention_mask, input_ids=input_ids,
                      attention_mask=torch.ones_like(input_ids), eos_token_id=model.stop_ids,
                      pad_token_id=model.pad_id, do_sample=False, **options)
    theirs = model.decode(out[:, input_ids.shape[1]:])
    assert ours == theirs and any(ours)
    # the switch: concat fusion or no Q-Former text is another model, and its captions differ
    other = load(video_folder, fusion="concat", qformer_text=False).eval()
    assert other.fusion == "concat" and not other.qformer_text
    assert not torch.allclose(other.encode_visual(pixels)[:, :model.num_query_tokens],
                              model.encode_visual(pixels)[:, :model.num_query_tokens])


@pytest.mark.parametrize("family", ["opt", "t5"])
def test_export_captions_a_still_video_the_stock_way(tiny_folders, tmp_path, family):
    """Blip2Processor + Blip2ForConditionalGeneration.generate on one frame equal our captions of a video
    whose frames are all that frame (concat fusion): with transformers' default decoding (greedy, 20 new
    tokens) and with the export's generation_config.json (the evaluation's beam 5, 5-32 tokens)."""
    from transformers import Blip2ForConditionalGeneration, Blip2Processor, GenerationConfig

    from ds_videocap.export import save_hf_folder
    from ds_videocap.video import frames_to_tensor

    model = load(tiny_folders[family]).eval()
    gen = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (2, 32, 32, 3), generator=gen, dtype=torch.uint8).numpy()
    still = torch.stack([frames_to_tensor(images[i:i + 1].repeat(4, 0)) for i in range(2)])
    greedy = dict(num_beams=1, max_new_tokens=20 if family == "opt" else 19)  # 20 = transformers' max_length
    with torch.no_grad():  # make the stop token win at the third step, so that where captions end matters
        third = model.generate(still, **greedy)[0, 2].item()
        head = model.language_model.get_output_embeddings().weight
        head[model.stop_ids[0]] = head[third] * 1.05
    ours_greedy = model.decode(model.generate(still, **greedy))
    ours_beam = model.decode(model.generate(still, num_beams=5, max_new_tokens=32, min_new_tokens=5))
    assert any(len(c.split()) < 5 for c in ours_greedy)  # a caption ended at the stop token
    out = save_hf_folder(model, tmp_path / "export")

    processor = Blip2Processor.from_pretrained(out)
    hf = Blip2ForConditionalGeneration.from_pretrained(out).eval()
    inputs = processor(images=list(images), text=[model.prompt] * 2, return_tensors="pt")

    def stock(**options):
        return [t.strip() for t in processor.batch_decode(hf.generate(**inputs, **options), skip_special_tokens=True)]

    assert stock() == ours_greedy
    assert stock(generation_config=GenerationConfig.from_pretrained(out)) == ours_beam


def test_opt_train_bos_equals_the_lavis_loss(tiny_folders):
    """model.opt_train_bos: the CE loss LAVIS's Blip2OPT computes with an empty prompt (targets from the
    tokenizer with bos, only the query positions and padding ignored, the LLM's own shifted loss)."""
    from ds_videocap.errors import UserError

    lavis_like = load(tiny_folders["opt"], opt_train_bos=True).eval()
    ours = load(tiny_folders["opt"]).eval()
    pixels, batch = frames(batch=3, t=2), lavis_like.encode_text(CAPTIONS[:3])
    with torch.no_grad():
        visual = lavis_like.encode_visual(pixels)
        bos = torch.full_like(batch["input_ids"][:, :1], lavis_like.tokenizer.bos_token_id)
        ids = torch.cat([bos, batch["input_ids"]], 1)
        mask = torch.cat([torch.ones_like(bos), batch["attention_mask"]], 1)
        targets = torch.cat([torch.full(visual.shape[:2], -100), ids.masked_fill(mask == 0, -100)], 1)
        lm = lavis_like.language_model
        embeds = torch.cat([visual, lm.get_input_embeddings()(ids)], 1)
        expected = lm(inputs_embeds=embeds, attention_mask=torch.cat([torch.ones(visual.shape[:2]), mask], 1),
                      labels=targets).loss
        with_bos, without = lavis_like(pixels, **batch), ours(pixels, **batch)
    torch.testing.assert_close(with_bos, expected, atol=1e-5, rtol=1e-5)
    assert abs(without.item() - expected.item()) > 1e-3  # the default leaves the bos target out
    with pytest.raises(UserError, match="opt_train_bos"):
        load(tiny_folders["t5"], opt_train_bos=True)


def test_eval_and_caption_take_the_model_options():
    from ds_videocap.cli import build_parser
    from ds_videocap.evaluate import model_overrides

    parser = build_parser()
    args = parser.parse_args(["eval", "--checkpoint", "run", "--annotations", "a.json", "--fusion", "per_frame",
                              "--no-qformer-text", "--prompt", "a clip of"])
    assert model_overrides(args) == {"fusion": "per_frame", "qformer_text": False, "prompt": "a clip of"}
    args = parser.parse_args(["caption", "--checkpoint", "run", "v.mp4"])
    assert model_overrides(args) == {}  # unset: the run's config.yaml or the folder decides
