"""Relative paths and standard output through the real CLI.

A run is launched with launch/train.sh from the user's own folder, with a DeepSpeed JSON and data paths
relative to that folder (train.sh itself changes to the repository root); `eval`, `caption`, `export`
and `report` then run from yet another folder. Standard output of a result command carries the result
alone (JSON parsed whole, the caption table line by line), also with a ZeRO-3 run folder and under the
launcher; the libraries' chatter shows only with --verbose. `ds-videocap train` started without a
launcher runs as one process."""
import json
import os
import shutil
import subprocess
import sys

import pytest
from e2e import FAST, ROOT, child_env

pytestmark = pytest.mark.slow
NOISE = ("PTBTokenizer", "SPICE skipped", "Processing zero checkpoint", "gemm_4bit", "[INFO]", "'testlen'")


@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("paths")
    user = root / "user"
    user.mkdir()
    shutil.copy(ROOT / "ds_configs" / "zero3.json", user / "my_zero3.json")  # exists only in the user's folder
    proc = subprocess.run(["bash", str(ROOT / "launch" / "train.sh"), "synth", "my_zero3.json", "synth_dir=synth",
                           "synth_videos=40", "output_dir=run", *FAST, "ce.steps=2", "scst.steps=0"],
                          cwd=user, capture_output=True, text=True, timeout=600, env=child_env())
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    return user, elsewhere


def cli_in(cwd, *args, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "ds_videocap.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=child_env())
    assert proc.returncode == 0, f"ds-videocap {args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_run_folder_stores_absolute_paths(user_run):
    import yaml

    user, _ = user_run
    cfg = yaml.safe_load((user / "run" / "config.yaml").read_text())
    assert cfg["output_dir"] == str(user / "run") and cfg["synth_dir"] == str(user / "synth")
    assert cfg["data"]["test"] == str(user / "synth" / "annotations" / "cap_test.json")
    assert cfg["data"]["videos"] == str(user / "synth" / "videos")
    assert cfg["model"]["path"] == str(user / "run" / "init_model")
    assert os.path.isabs(json.loads((user / "run" / "summary.json").read_text())["best_checkpoint"] or "/")


def test_eval_export_report_from_another_folder(user_run):
    user, elsewhere = user_run
    rel = os.path.relpath(user, elsewhere)
    proc = cli_in(elsewhere, "eval", "--checkpoint", f"{rel}/run", "--annotations",
                  f"{rel}/synth/annotations/cap_test.json", "--videos", f"{rel}/synth/videos", "--json",
                  "--num-beams", "1", "--max-new-tokens", "6")
    scores = json.loads(proc.stdout)  # the whole of stdout is the JSON
    assert scores["clips"] == scores["decoded"] > 0
    assert not any(word in proc.stderr for word in NOISE), proc.stderr[-3000:]
    assert "captioning" in proc.stderr and "100%" in proc.stderr  # tqdm progress, on stderr
    cli_in(elsewhere, "export", "--checkpoint", f"{rel}/run", "--out", "hf")
    assert (elsewhere / "hf" / "config.json").is_file()
    cli_in(elsewhere, "report", f"{rel}/run", "--out", "report.html")
    html = (elsewhere / "report.html").read_text()
    assert '<img alt="frames of' in html, "the report lost its frame strips"
    assert "not found" not in html and "frames not shown" not in html


def test_caption_stdout_is_the_table_or_the_json_alone(user_run):
    user, elsewhere = user_run
    videos = sorted((user / "synth" / "videos").glob("*.mp4"))[:3]
    args = ["caption", "--checkpoint", user / "run", *videos, "--num-beams", "1", "--max-new-tokens", "5"]
    table = cli_in(elsewhere, *args)
    rows = [line.split("\t") for line in table.stdout.splitlines()]
    assert [r[0] for r in rows] == [str(v) for v in videos] and all(len(r) == 2 and r[1] for r in rows), table.stdout
    assert not any(word in table.stderr for word in NOISE), table.stderr[-3000:]
    as_json = json.loads(cli_in(elsewhere, *args, "--json").stdout)
    assert [(r["video"], r["caption"]) for r in as_json] == [tuple(r) for r in rows]
    verbose = cli_in(elsewhere, *args, "--verbose")
    assert verbose.stdout == table.stdout
    assert "Processing zero checkpoint" in verbose.stderr  # DeepSpeed's consolidation prints, now visible


def test_eval_under_the_launcher_prints_only_the_json(user_run):
    user, elsewhere = user_run
    # --quiet keeps the launcher's own log lines off stdout; on a machine without GPUs DS_ACCELERATOR=cpu
    # spares its "Setting accelerator to CPU" warning, printed before it reads --quiet.
    env = dict(child_env(), DS_ACCELERATOR="cpu")
    proc = subprocess.run(["deepspeed", "--quiet", "--num_gpus", "2", "--no_local_rank", "--module", "ds_videocap.cli",
                           "eval", "--checkpoint", str(user / "run"), "--annotations",
                           str(user / "synth" / "annotations" / "cap_test.json"), "--videos",
                           str(user / "synth" / "videos"), "--json", "--num-beams", "1", "--max-new-tokens", "6"],
                          cwd=elsewhere, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    scores = json.loads(proc.stdout)
    assert scores["clips"] == scores["decoded"] > 0


def test_train_without_the_launcher_runs_as_one_process(user_run):
    """`python -m ds_videocap.cli train` outside the launcher used to die on a missing mpi4py."""
    user, elsewhere = user_run
    env = {k: v for k, v in child_env().items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    proc = subprocess.run([sys.executable, "-m", "ds_videocap.cli", "train", "--recipe", "synth", "--deepspeed",
                           str(ROOT / "ds_configs" / "zero0.json"), f"synth_dir={user / 'synth'}", "synth_videos=40",
                           "output_dir=lone", *FAST, "ce.steps=1", "scst.steps=0"],
                          cwd=elsewhere, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "no launcher: running as one process" in proc.stderr
    summary = json.loads((elsewhere / "lone" / "summary.json").read_text())
    assert summary["ce"]["test"]["clips"] > 0
