"""One cross-entropy micro-batch: encode the target captions, forward through the engine, the loss.

fit() does the rest (stand-ins, the non-finite rule, backward, step) for both phases alike.
"""
from __future__ import annotations


def ce_step(engine, batch: dict, ctx):
    """-> (loss, metrics); `ctx` carries the device and dtype."""
    model = engine.module
    inputs = {k: v.to(ctx.device) for k, v in model.encode_text(batch["captions"]).items()}
    pixel_values = batch["pixel_values"].to(ctx.device, ctx.dtype)
    # The contrastive term runs inside the engine's forward: under ZeRO-3 parameters exist only there.
    itc = dict(itc_weight=ctx.ce.itc_weight, itc_temperature=ctx.ce.itc_temperature) if ctx.ce is not None else {}
    return engine(pixel_values=pixel_values, **inputs, **itc), {}
