"""One cross-entropy update: encode the target captions, forward through the engine, backward, step."""
from __future__ import annotations

import torch


def ce_step(engine, batch: dict, ctx) -> dict:
    """`ctx` carries device and dtype; returns the loss for logging (a NaN loss is the loop's business)."""
    model = engine.module
    inputs = {k: v.to(ctx.device) for k, v in model.encode_text(batch["captions"]).items()}
    pixel_values = batch["pixel_values"].to(ctx.device, ctx.dtype)
    loss = engine(pixel_values=pixel_values, **inputs)
    if batch.get("zero_weight"):  # a stand-in batch (all its videos were skipped): joins, adds nothing
        loss = loss * 0.0
    if not ctx.check_finite(loss.detach()):
        # Every rank skips together (the flag is all-reduced), so no rank waits in a collective.
        engine.zero_grad() if hasattr(engine, "zero_grad") else None
        return {"loss": float("nan"), "skipped_nonfinite": 1}
    engine.backward(loss)
    engine.step()
    return {"loss": loss.item()}
