"""Evaluation, captioning and export on a model trained through the launcher (ZeRO-3 shards)."""
import json
import subprocess

import pytest
from e2e import ROOT, child_env, cli, run_train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from ds_videocap.synth import make_synthetic_set

    root = tmp_path_factory.mktemp("eval")
    synth = make_synthetic_set(root / "synth", videos=40, seed=42)
    out = root / "run"
    run_train(out, synth, "zero3.json", "ce.steps=4", "scst.steps=0", "ce.lr=3e-3")
    return synth, out


def _direct_cider(results_file, annotations):
    """CIDEr straight from pycocoevalcap on the results file, after its PTB tokenizer."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    refs = {r["image_id"]: r["caption"] for r in json.loads(annotations.read_text())}
    res = {r["image_id"]: [{"caption": r["caption"]}] for r in json.loads(results_file.read_text())}
    gts = {k: [{"caption": c} for c in refs[k]] for k in res}
    tok = PTBTokenizer()
    return Cider().compute_score(tok.tokenize(gts), tok.tokenize(res))[0]


def test_eval_counts_results_and_cider_match_pycocoevalcap(trained, tmp_path):
    synth, run = trained
    annotations = synth / "annotations" / "cap_test.json"
    results = tmp_path / "results.json"
    proc = cli("eval", "--checkpoint", str(run), "--annotations", str(annotations), "--videos",
               str(synth / "videos"), "--results", str(results), "--json", "--num-beams", "2")
    scores = json.loads(proc.stdout)
    clips = json.loads(annotations.read_text())
    assert scores["clips"] == scores["decoded"] == len(clips)
    rows = json.loads(results.read_text())
    assert sorted(r["image_id"] for r in rows) == sorted(c["image_id"] for c in clips)
    assert {"Bleu_1", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "color_acc", "motion_acc", "all_acc"} <= set(scores)
    assert scores["CIDEr"] == pytest.approx(_direct_cider(results, annotations), abs=1e-9)


def test_distributed_eval_shards_without_duplicates_or_drops(trained, tmp_path):
    """2 ranks, a clip count that does not divide by 2: every clip decoded exactly once."""
    synth, run = trained
    annotations = synth / "annotations" / "cap_test.json"
    clips = {c["image_id"] for c in json.loads(annotations.read_text())}
    assert len(clips) % 2 == 1
    results = tmp_path / "results.json"
    proc = subprocess.run(["deepspeed", "--num_gpus", "2", "--no_local_rank", "--module", "ds_videocap.cli", "eval",
                           "--checkpoint", str(run), "--annotations", str(annotations), "--videos",
                           str(synth / "videos"), "--results", str(results), "--json", "--num-beams", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=400, env=child_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads(results.read_text())
    assert len(rows) == len(clips) and {r["image_id"] for r in rows} == clips


def test_export_reload_and_caption_mp4_avi_webm(trained, tmp_path):
    import av

    synth, run = trained
    source = sorted((synth / "videos").glob("*.mp4"))[0]
    with av.open(str(source)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    videos = [source]
    for name, codec in (("clip.avi", "mpeg4"), ("clip.webm", "libvpx-vp9")):
        path = tmp_path / "videos" / name
        path.parent.mkdir(exist_ok=True)
        with av.open(str(path), "w") as out:
            stream = out.add_stream(codec, rate=8)
            stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
            for f in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        videos.append(path)

    def captions(checkpoint, *inputs):
        # explicit decode options: a run folder carries its recipe's, an exported folder the defaults
        proc = cli("caption", "--checkpoint", str(checkpoint), *map(str, inputs), "--json", "--num-beams", "2",
                   "--max-new-tokens", "12", "--min-new-tokens", "2", "--frames", "4")
        return json.loads(proc.stdout)  # --json: the JSON alone on stdout

    from_run = captions(run, *videos)
    assert [r["video"] for r in from_run] == [str(v) for v in videos]
    assert all(r["caption"] for r in from_run)

    hf = tmp_path / "hf"
    cli("export", "--checkpoint", str(run), "--out", str(hf))
    from transformers import Blip2ForConditionalGeneration

    Blip2ForConditionalGeneration.from_pretrained(hf)  # transformers' own class loads it
    assert captions(hf, *videos) == from_run
    assert captions(hf, tmp_path / "videos") == [r for r in from_run if r["video"] != str(source)]


def test_caption_device_option(trained, tmp_path):
    """--device picks where the model runs (default: this rank's GPU, else the CPU); a device this
    machine lacks is one line and exit 2, not a CUDA traceback."""
    synth, run = trained
    video = sorted((synth / "videos").glob("*.mp4"))[0]
    options = ["--json", "--num-beams", "1", "--max-new-tokens", "8", "--frames", "4"]
    default = json.loads(cli("caption", "--checkpoint", str(run), str(video), *options).stdout)
    on_cpu = json.loads(cli("caption", "--checkpoint", str(run), str(video), *options, "--device", "cpu").stdout)
    assert on_cpu == default and on_cpu[0]["caption"]
    for bad in ("cuda:7", "tpu"):
        proc = cli("caption", "--checkpoint", str(run), str(video), "--device", bad, check=False)
        assert proc.returncode == 2 and f"--device {bad}" in proc.stderr.replace("'", "")
        assert "Traceback" not in proc.stderr
