"""Bad input through the real launcher: each mistake ends the run before torch.distributed starts,
with one line per rank naming the file and the field, a non-zero exit code and no Python traceback.
Launched alongside them: a learning rate so large that the losses turn non-finite, which must stop the
run after max_nonfinite_steps in a row, again in one line per rank."""
import json
import subprocess

import pytest
from e2e import FAST, ROOT, child_env

pytestmark = pytest.mark.slow


def _cases(tmp):
    """name -> (launcher arguments after the recipe, words the message must contain)."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "videos").mkdir(exist_ok=True)
    good = tmp / "good.json"
    good.write_text(json.dumps([{"video": "a.mp4", "caption": "a dog runs"}] * 40))
    bad_ann = tmp / "bad_ann.json"
    bad_ann.write_text(json.dumps([{"video": "a.mp4", "caption": "fine"}, {"video": "b.mp4", "caption": 7}]))
    bad_json = tmp / "stage4.json"
    bad_json.write_text(json.dumps({"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 4}}))
    model = tmp / "no_config_model"
    model.mkdir(exist_ok=True)
    (model / "model.safetensors").write_bytes(b"")
    zero0 = str(ROOT / "ds_configs" / "zero0.json")
    # No synthetic set: every data path is given, so nothing is generated before the check.
    data = ["synth_dir=null", f"data.train={good}", f"data.videos={tmp / 'videos'}"]
    return {
        "unknown_key": ([zero0, *data, "ce.stepz=3"], ["ce.stepz", "did you mean 'ce.steps'"]),
        "bad_json": ([str(bad_json), *data], ["stage4.json", "zero_optimization.stage"]),
        "model_folder": ([zero0, *data, "model.tiny=null", f"model.path={model}"],
                         ["model.path", "no_config_model", "config.json"]),
        "bad_annotation": ([zero0, "synth_dir=null", f"data.train={bad_ann}", f"data.videos={tmp / 'videos'}"],
                           ["bad_ann.json", "record 1", "'caption'"]),
        "videos_root": ([zero0, "synth_dir=null", f"data.train={good}", f"data.videos={tmp / 'missing'}"],
                        ["data.videos", "missing"]),
    }


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every case launched at once (each fails within seconds of start-up), then collected."""
    from ds_videocap.synth import make_synthetic_set

    tmp = tmp_path_factory.mktemp("bad_input")
    cases = _cases(tmp)
    make_synthetic_set(tmp / "synth", videos=40, seed=42)
    cases["nan_losses"] = ([str(ROOT / "ds_configs" / "zero3.json"), f"synth_dir={tmp / 'synth'}", "synth_videos=40",
                            *FAST, "ce.steps=20", "scst.steps=0", "ce.lr=1e30", "ce.min_lr=1e29",
                            "ce.warmup_steps=0", "max_nonfinite_steps=3"],
                           ["3 non-finite losses in a row", "max_nonfinite_steps=3", "last at step 2", "synth0"])
    procs = {}
    for name, (args, _) in cases.items():
        cmd = ["bash", str(ROOT / "launch" / "train.sh"), "synth", *args, f"output_dir={tmp / 'run' / name}",
               "data.num_workers=0"]
        procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        results[name] = (proc.returncode, out + err, cases[name][1])
    return results


@pytest.mark.parametrize("name", ["unknown_key", "bad_json", "model_folder", "bad_annotation", "videos_root"])
def test_bad_input_is_one_clear_line(outcomes, name):
    code, text, words = outcomes[name]
    assert code != 0, text[-3000:]
    assert "Traceback" not in text, text[-5000:]
    errors = [line for line in text.splitlines() if "ds-videocap train: error:" in line]
    assert 1 <= len(errors) <= 2, text[-3000:]  # one per rank at most
    for word in words:
        assert word in errors[0], (word, errors[0])
    # Refused before any rank initialised torch.distributed or built a model.
    assert "[model]" not in text and "deepspeed_shm_comm_op" not in text, text[-3000:]


def test_nonfinite_losses_stop_the_run_in_one_line(outcomes):
    code, text, words = outcomes["nan_losses"]
    assert code != 0 and "Traceback" not in text, text[-5000:]
    assert text.count("non-finite loss, update skipped") == 3  # each skip logged (by rank 0)
    errors = [line for line in text.splitlines() if "ds-videocap train: error:" in line]
    assert 1 <= len(errors) <= 2 and all(w in errors[0] for w in words), errors
