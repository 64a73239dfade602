"""benchmarks/probe_frame_targets.py (the eleventh round's vision probe) stays runnable: both sources train a
few steps, print the shape probe, and --save-vit writes a state dict that tune_tiny.py --init-vit loads into
the tiny captioner's ViT."""
import re
import subprocess
import sys

import torch
from e2e import ROOT, child_env

SCRIPT = ROOT / "benchmarks" / "probe_frame_targets.py"


def run_probe(synth, *args):
    proc = subprocess.run([sys.executable, str(SCRIPT), *args, "--synth", str(synth), "--steps", "2", "--batch", "8",
                           "--probe-every", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=child_env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    probes = [float(x) for x in re.findall(r"shape probe ([0-9.]+)", proc.stdout)]
    assert len(probes) == 2 and all(0.0 <= p <= 1.0 for p in probes), proc.stdout
    return proc.stdout


def test_frames_and_stills_run_and_save_a_vit_the_captioner_loads(synth40, tmp_path):
    from transformers import Blip2VisionConfig, Blip2VisionModel

    run_probe(synth40, "frames", "--target", "bank")
    saved = tmp_path / "vit.pt"
    out = run_probe(synth40, "stills", "--target", "lsa", "--rank", "4", "--stills", "40", "--balance", "2",
                    "--save-vit", str(saved))
    assert "co-occurrence spectrum" in out
    # the recipe's ViT sizes (config.TINY_SIZES): the state dict must fit it key for key
    vit = Blip2VisionModel(Blip2VisionConfig(hidden_size=96, intermediate_size=384, num_hidden_layers=2,
                                             num_attention_heads=4, image_size=32, patch_size=8))
    vit.load_state_dict(torch.load(saved))
