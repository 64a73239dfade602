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


def test_frames_and_stills_run_and_save_a_vit_the_captioner_loads(synth40, tiny_folders, tmp_path):
    from transformers import Blip2ForConditionalGeneration

    run_probe(synth40, "frames", "--target", "bank")
    saved = tmp_path / "vit.pt"
    out = run_probe(synth40, "stills", "--target", "lsa", "--rank", "4", "--stills", "40", "--balance", "2",
                    "--save-vit", str(saved))
    assert "co-occurrence spectrum" in out
    # as tune_tiny.py --init-vit does: into the ViT of a tiny folder built with the recipe's sizes, key for key
    captioner = Blip2ForConditionalGeneration.from_pretrained(tiny_folders["opt"])
    captioner.vision_model.load_state_dict(torch.load(saved))
