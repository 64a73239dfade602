"""ZeRO-3 on one CPU rank (gloo), in a subprocess so torch.distributed stays out of this process:
build_model partitions as it loads, and loss, log-probs and generation run through the engine,
whose forward is what gathers the parameters modules own directly (query tokens, frame embedding),
with motion tokens (motion.py) on."""
from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import os, sys, torch
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    import deepspeed
    from ds_videocap.generation import generation_context
    from ds_videocap.build import build_model
    from ds_videocap.trainable import count_parameters
    from ds_videocap.config import LoraCfg, ModelCfg
    from ds_videocap.optim import build_optimizer
    deepspeed.init_distributed("gloo")
    ds = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
          "zero_optimization": {"stage": 3}}
    model = build_model(ModelCfg(path=sys.argv[1], frame_embedding=True, motion_tokens=True, llm="lora"), LoraCfg(),
                        ds_config=ds)
    assert any(hasattr(p, "ds_id") for p in model.hf.language_model.parameters()), "partitioned while loading"
    trainable, total = count_parameters(model)
    assert 0 < trainable < total and total > 100_000, (trainable, total)
    # the training command's own optimizer (a JSON "optimizer" would JIT-build DeepSpeed's FusedAdam: ~2 min)
    engine, *_ = deepspeed.initialize(model=model, config=ds,
                                      optimizer=build_optimizer(model, ds, 1e-3, 0.0, (0.9, 0.999)))
    pixels = torch.randn(2, 2, 3, 32, 32)
    loss = engine(pixels, **model.encode_text(["a red circle", "a blue square"]))
    engine.backward(loss)
    engine.step()
    model.eval()
    with generation_context(engine, gather=True) as (gathered, _):
        sequences = gathered.generate(pixels, max_new_tokens=4, do_sample=True, num_return_sequences=2)
    synced = engine(pixels, generate_kwargs=dict(max_new_tokens=4, synced_gpus=True))
    assert sequences.shape[0] == 4 and synced.shape[0] == 2
    logprobs, mask = engine(pixels, sequences=sequences)
    engine.backward(-(logprobs * mask).sum())
    engine.step()
    print("ZERO3-OK")
''')


@pytest.mark.slow
def test_zero3_build_train_generate_on_one_cpu_rank(tiny_folders, tmp_path):
    script = tmp_path / "zero3.py"
    script.write_text(SCRIPT)
    with socket.socket() as probe:  # a free port for the one-rank process group
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run = subprocess.run([sys.executable, str(script), str(tiny_folders["opt"]), str(port)],
                         capture_output=True, text=True, timeout=300)
    assert "ZERO3-OK" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
