"""ZeRO-3 with 2 ranks: the model is partitioned as it is built, and CE, SCST log-probs and both
generation paths work when every parameter (none persistent) must be fetched."""
import subprocess

import pytest
from e2e import ROOT, child_env

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("ds_json", ["zero3.json", "zero3_offload.json"])
def test_zero3_partitions_the_model_across_two_ranks(tmp_path, ds_json):
    from ds_videocap.tokenizer import train_caption_tokenizer

    tokenizer = train_caption_tokenizer([f"a {c} {s} moves {m}" for c in ("red", "blue") for s in ("circle", "square")
                                         for m in ("left", "right", "up", "down")] * 5, tmp_path / "tok")
    proc = subprocess.run(["deepspeed", "--num_gpus", "2", "--no_local_rank",
                           str(ROOT / "tests" / "ds_scripts" / "zero3_partition.py"),
                           str(tokenizer), str(tmp_path / "out"), str(ROOT / "ds_configs" / ds_json)],
                          cwd=ROOT, capture_output=True, text=True, timeout=400, env=child_env())
    assert proc.returncode == 0 and "PARTITIONED-OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]
