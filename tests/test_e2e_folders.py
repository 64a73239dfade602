"""`ds-videocap caption` / `export` on Hugging Face folders through the real CLI: the export used the stock
transformers way captions a still video as `caption` does; `--fusion`, `--qformer-text`, `--prompt` reach
the model."""
import json
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
from e2e import cli
from tiny_models import load

pytestmark = pytest.mark.slow


def write_still_video(path: Path, frames: int = 8, size: int = 32) -> Path:
    """Every frame the same picture (four flat quadrants), written with PyAV."""
    import av

    picture = np.zeros((size, size, 3), np.uint8)
    half = size // 2
    picture[:half, :half], picture[:half, half:] = (200, 40, 40), (40, 200, 40)
    picture[half:, :half], picture[half:, half:] = (40, 40, 200), (220, 220, 60)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("family", ["opt", "t5"])
def test_export_used_the_stock_way_equals_caption(tiny_folders, tmp_path, family):
    from transformers import Blip2ForConditionalGeneration, Blip2Processor, GenerationConfig

    from ds_videocap.video import read_frames

    video = write_still_video(tmp_path / "still.mp4")
    folder = str(tiny_folders[family])
    ours = json.loads(cli("caption", "--checkpoint", folder, str(video), "--json").stdout)[0]["caption"]
    export = tmp_path / "export"
    cli("export", "--checkpoint", folder, "--out", str(export))

    frame = read_frames(video, "uniform", 1, 32)[0]  # the frame as the CLI decodes it
    processor = Blip2Processor.from_pretrained(export)
    model = Blip2ForConditionalGeneration.from_pretrained(export)
    prompt = load(export).prompt  # "" for OPT (the study's), "a video of" for T5
    inputs = processor(images=frame, text=prompt, return_tensors="pt")
    out = model.generate(**inputs, generation_config=GenerationConfig.from_pretrained(export))
    assert processor.batch_decode(out, skip_special_tokens=True)[0].strip() == ours


def test_caption_options_reach_the_model(tiny_folders, tmp_path):
    from ds_videocap.annotations import Clip
    from ds_videocap.config import EvalCfg, RecipeCfg
    from ds_videocap.evaluate import _eval_data_cfg, decode_clips, decode_kwargs, plain_context

    video = write_still_video(tmp_path / "still.mp4")
    options = ["--fusion", "per_frame", "--qformer-text", "--prompt", "a short clip of", "--frames", "3"]
    proc = cli("caption", "--checkpoint", str(tiny_folders["llama"]), str(video), "--json", *options)
    cli_caption = json.loads(proc.stdout)[0]["caption"]

    model = load(tiny_folders["llama"], fusion="per_frame", qformer_text=True, prompt="a short clip of")
    data_cfg = _eval_data_cfg(model, RecipeCfg(), Namespace(frames=3, videos=None))
    captions, _ = decode_clips(plain_context(model), [Clip("0", str(video), [])], data_cfg,
                               decode_kwargs(EvalCfg()), 1)
    assert cli_caption == captions["0"]
    plain = load(tiny_folders["llama"])  # concat, no Q-Former text, "a video of": another caption
    default, _ = decode_clips(plain_context(plain), [Clip("0", str(video), [])], data_cfg, decode_kwargs(EvalCfg()), 1)
    assert default["0"] != cli_caption
    bad = cli("caption", "--checkpoint", str(tiny_folders["llama"]), str(video), "--fusion", "sideways", check=False)
    assert bad.returncode == 2 and "--fusion" in bad.stderr


def test_train_and_caption_an_instructblip_video_folder(tmp_path):
    """`train` under the launcher on an InstructBLIP-Video folder: per_frame fusion and Q-Former text by
    default, recorded in the run's config.yaml, which `caption` on the run folder then follows."""
    import yaml
    from e2e import run_train
    from tiny_models import instructblip_video_folder

    from ds_videocap.build import build_tiny_folder
    from ds_videocap.synth import make_synthetic_set

    synth = make_synthetic_set(tmp_path / "synth", videos=40, seed=42)
    image = build_tiny_folder("llama", synth / "tokenizer", tmp_path / "llama")
    folder = instructblip_video_folder(image, tmp_path / "video")
    run = tmp_path / "run"
    run_train(run, synth, "zero2.json", f"model.path={folder}", "model.tiny=null", "ce.steps=2", "scst.steps=0")
    model_cfg = yaml.safe_load((run / "config.yaml").read_text())["model"]
    assert model_cfg["fusion"] == "per_frame" and model_cfg["qformer_text"] is True
    video = sorted((synth / "videos").glob("*.mp4"))[0]
    rows = json.loads(cli("caption", "--checkpoint", str(run), str(video), "--json").stdout)
    assert [r["video"] for r in rows] == [str(video)] and isinstance(rows[0]["caption"], str)
