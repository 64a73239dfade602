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
    ce = ctx.ce
    itc = dict(itc_weight=ce.itc_weight, itc_temperature=ce.itc_temperature, itc_across_ranks=ce.itc_across_ranks,
               itc_text_pool=ce.itc_text_pool, itc_swap_negatives=ce.itc_swap_negatives,
               itc_text_side=ce.itc_text_side) if ce is not None else {}
    if ce is not None and ((ce.itc_weight and ce.itc_all_references) or ce.words_weight):
        refs = model.encode_references(batch["references"])  # one tokenisation for both terms
        if ce.itc_weight and ce.itc_all_references:
            itc["itc_references"] = refs
        if ce.words_weight:
            itc.update(words_weight=ce.words_weight, word_references=refs)
    loss = engine(pixel_values=pixel_values, **inputs, **itc)
    # logged next to `loss` (their weighted sum), so that a rising contrastive term cannot hide a
    # falling caption loss or the reverse
    return loss, {k: v.item() for k, v in getattr(model, "last_loss_parts", {}).items()}
