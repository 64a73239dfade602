"""`ds-videocap report`: the HTML content of a fake run folder, and that headless Chromium renders it."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import yaml

from ds_videocap.errors import UserError
from ds_videocap.report import build_report, pick_samples, report_command, write_report
from ds_videocap.report_plots import scale_frames

EVIL_CAPTION = '<b>a red "square" & a </td> tag</b>'
EVIL_REFERENCE = "<script>alert(1)</script> moves left"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]
# Appended to a copy of the page: after the load event, it writes how many <img> decoded into the DOM
# that --dump-dom prints.
IMAGE_PROBE = """<script>window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  var p = document.createElement("pre"); p.id = "image-probe";
  p.textContent = "loaded=" + ok + " total=" + imgs.length; document.body.appendChild(p);
});</script>"""


@pytest.fixture
def run_dir(tmp_path, make_video):
    """A small but valid run folder: two phases, 3 decodable videos, 1 broken one, results files."""
    for name in ("a", "b", "c"):
        make_video(f"videos/{name}.mp4", frames=12, width=48, height=48)
    (tmp_path / "videos" / "broken.mp4").write_bytes(b"not a video at all" * 10)
    annotations = [{"video": f"{n}.mp4", "image_id": n, "caption": [f"a grey clip {n}", f"clip {n} fades"]}
                   for n in ("a", "b", "c", "broken")]
    annotations[1]["caption"].append(EVIL_REFERENCE)
    (tmp_path / "cap_test.json").write_text(json.dumps(annotations))
    run = tmp_path / "run"
    (run / "results").mkdir(parents=True)
    config = {"name": "fake", "output_dir": str(run),
              "data": {"videos": str(tmp_path / "videos"), "test": str(tmp_path / "cap_test.json"),
                       "frames": 4, "image_size": 32, "eval_sampling": "uniform", "backend": "decord"},
              "model": {"tiny": "opt", "fusion": "concat"}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    lines = [{"phase": "ce", "step": s, "epoch": 0, "loss": 5.0 / s, "lr": 1e-3, "samples_per_s": 100.0}
             for s in range(5, 45, 5)]
    lines += [{"phase": "ce", "step": s, "epoch": 0, "split": "val", "CIDEr": s / 40, "Bleu_4": 0.1}
              for s in (20, 40)]
    lines += [{"phase": "scst", "step": s, "epoch": 0, "loss": 0.1, "reward": 0.5 + s / 100, "baseline": 0.5,
               "advantage_std": 0.1, "sample_len": 8.0, "entropy": 2.0, "lr": 1e-5, "samples_per_s": 50.0}
              for s in (2, 4, 6)]
    lines.append({"phase": "scst", "step": 6, "epoch": 0, "split": "val", "CIDEr": 1.2})
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    test = {"Bleu_4": 0.25, "METEOR": 0.2, "ROUGE_L": 0.5, "CIDEr": 1.23456, "color_acc": 0.9, "clips": 4}
    summary = {"ce": {"test": test}, "scst": {"test": {**test, "CIDEr": 1.5}},
               "skipped_videos": [str(tmp_path / "videos" / "broken.mp4")], "best_checkpoint": "ckpt/scst-6"}
    (run / "summary.json").write_text(json.dumps(summary))
    for phase in ("ce", "scst"):
        results = [{"image_id": n, "caption": f"{phase} says clip {n}"} for n in ("a", "c", "broken")]
        results.append({"image_id": "b", "caption": EVIL_CAPTION})
        (run / "results" / f"{phase}_test.json").write_text(json.dumps(results))
    return run


def _images(page: str) -> list:
    return re.findall(r'<img [^>]*src="([^"]*)"', page)


def test_report_shows_metrics_curves_and_samples(run_dir):
    page = build_report(run_dir)
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert '<table class="metrics">' in page
    assert "ce / test" in page and "scst / test" in page and "1.2346" in page and "1.5000" in page
    assert "Skipped videos: 1" in page and "broken.mp4" in page
    images = _images(page)
    # 2 phases of curves + 3 decodable clips; the broken one is a note instead of a crash
    assert len(images) == 5 and all(src.startswith("data:image/png;base64,") for src in images)
    assert "frames not shown" in page and "cannot decode" in page
    assert "ce says clip a" in page and "scst says clip c" in page and "a grey clip c" in page


def test_report_escapes_every_caption(run_dir):
    page = build_report(run_dir)
    assert EVIL_CAPTION not in page and "<script>" not in page and "</td> tag" not in page
    assert "&lt;b&gt;a red &quot;square&quot; &amp; a &lt;/td&gt; tag&lt;/b&gt;" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; moves left" in page


def test_report_is_self_contained(run_dir):
    page = build_report(run_dir)
    assert not re.search(r"<link|<script|https?://|src=\"(?!data:)", page)


def test_missing_pieces_become_notes(run_dir):
    (run_dir / "summary.json").unlink()
    (run_dir / "results" / "scst_test.json").unlink()
    (run_dir / "results" / "ce_test.json").write_text("[{broken json")
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"phase": "scst", "step": 8, "lo')  # a crash mid-line
    page = build_report(run_dir)
    assert "no summary.json" in page and "no test metrics in summary.json" in page
    assert "no results/scst_test.json" in page and "results/ce_test.json: unreadable" in page
    assert "1 unreadable line(s) ignored" in page
    assert len(_images(page)) == 5  # curves and frames still shown


def test_missing_test_annotations_and_scst_phase(run_dir):
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["data"]["test"] = str(run_dir / "nowhere.json")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    lines = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"scst"' not in line]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    summary = json.loads((run_dir / "summary.json").read_text())
    del summary["scst"]
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "results" / "scst_test.json").unlink()
    page = build_report(run_dir)
    assert "nowhere.json not found" in page and "scst / test" not in page
    assert len(_images(page)) == 1


@pytest.mark.parametrize("missing", ["config.yaml", "metrics.jsonl"])
def test_not_a_run_folder_names_what_is_missing(run_dir, missing):
    (run_dir / missing).unlink()
    with pytest.raises(UserError, match=f"not a run folder.*{re.escape(missing)}"):
        build_report(run_dir)
    with pytest.raises(UserError, match="no such folder"):
        build_report(run_dir / "nope")


def test_report_command_writes_default_path(run_dir, capsys):
    assert report_command(Namespace(run_dir=str(run_dir), out=None)) == 0
    assert (run_dir / "report.html").is_file() and "report.html" in capsys.readouterr().out


def test_pick_samples_is_deterministic_and_spread():
    clips = list(range(100))
    assert pick_samples(clips, 8) == pick_samples(clips, 8)
    chosen = pick_samples(clips, 8)
    assert chosen[0] == 0 and chosen[-1] == 99 and len(set(chosen)) == 8
    assert pick_samples(clips[:3], 8) == [0, 1, 2] and pick_samples(clips, 1) == [0]


def test_tiny_frames_upscale_nearest():
    frames = np.arange(2 * 32 * 32 * 3, dtype=np.uint8).reshape(2, 32, 32, 3)
    big = scale_frames(frames)
    assert big.shape == (2, 128, 128, 3)
    assert (big[:, ::4, ::4] == frames).all() and (big[:, 3::4, 3::4] == frames).all()


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt when missing; an install failure fails the test (no skip)."""
    exe = shutil.which("chromium")
    if exe:
        return exe
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
        except (OSError, subprocess.TimeoutExpired) as err:
            pytest.fail(f"cannot install chromium: {' '.join(cmd)}: {err}")
        if proc.returncode:
            pytest.fail(f"cannot install chromium: {' '.join(cmd)} exited {proc.returncode}: "
                        f"{(proc.stderr or proc.stdout)[-2000:]}")
    return shutil.which("chromium") or pytest.fail("apt-get installed chromium but it is not on PATH")


def _run_chromium(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}"
    return proc


@pytest.mark.slow
def test_chromium_renders_report_with_all_images(run_dir, tmp_path, chromium):
    from PIL import Image

    page = write_report(run_dir, tmp_path / "out" / "report.html")
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("</body>", IMAGE_PROBE + "</body>"))
    dom = _run_chromium(chromium, tmp_path / "profile1", "--virtual-time-budget=10000", "--dump-dom",
                        probe.as_uri()).stdout
    found = re.search(r'id="image-probe">loaded=(\d+) total=(\d+)<', dom)
    assert found, f"the probe did not run: {dom[-1000:]}"
    loaded, total = map(int, found.groups())
    assert loaded == total == 5

    shot = tmp_path / "shot.png"
    _run_chromium(chromium, tmp_path / "profile2", "--window-size=1280,2000", f"--screenshot={shot}",
                  page.as_uri())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1280) and pixels.std() > 10  # not a blank page
