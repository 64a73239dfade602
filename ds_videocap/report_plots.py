"""Images for the run report: training curves and frame strips, each returned as a PNG data URI.

Figures are drawn on matplotlib's Agg canvas directly (Figure + FigureCanvasAgg) rather than through
pyplot, so a report never switches the process-wide backend or leaks figures in a long-lived process.
"""
from __future__ import annotations

import base64
import io
import math

import numpy as np

# Tiny synthetic frames (32 px) are unreadable at their own size; big ones would bloat the page.
FRAME_DISPLAY_PX = 128
FRAME_GAP_PX = 2


def encode_png(image: np.ndarray) -> str:
    """uint8 (H, W, 3) -> "data:image/png;base64,..."."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def scale_frames(frames: np.ndarray, target: int = FRAME_DISPLAY_PX) -> np.ndarray:
    """(T, H, W, 3) -> frames about `target` px high: whole-number nearest-neighbour upscaling keeps
    the pixels of tiny frames crisp; large frames are shrunk (antialiased) to keep the page light."""
    t, h, w = frames.shape[:3]
    if h < target:
        k = max(1, target // h)
        return frames.repeat(k, axis=1).repeat(k, axis=2)
    if h > target * 1.5:
        from PIL import Image

        size = (max(1, round(w * target / h)), target)
        return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.LANCZOS)) for f in frames])
    return frames


def make_strip(frames: np.ndarray, target: int = FRAME_DISPLAY_PX) -> str:
    """The sampled frames of one clip side by side (white gaps), as a PNG data URI."""
    frames = scale_frames(np.asarray(frames, dtype=np.uint8), target)
    t, h, w = frames.shape[:3]
    strip = np.full((h, t * w + (t - 1) * FRAME_GAP_PX, 3), 255, np.uint8)
    for i, frame in enumerate(frames):
        x = i * (w + FRAME_GAP_PX)
        strip[:, x:x + w] = frame
    return encode_png(strip)


def _series(lines: list, key: str) -> tuple:
    """(steps, values) of the lines that carry a finite number under `key`, sorted by step; a
    repeated step (a val line logged twice, a resumed run) keeps its last value."""
    points = {}
    for line in lines:
        value, step = line.get(key), line.get("step")
        if isinstance(value, (int, float)) and isinstance(step, (int, float)) and math.isfinite(value):
            points[step] = float(value)
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def _panels(train: list, val: list) -> list:
    """[(title, [(label, steps, values, style)])] for the curves this phase has data for."""
    panels = []
    loss = _series(train, "loss")
    if loss[0]:
        panels.append(("training loss", [("loss", *loss, "-")]))
    reward = _series(train, "reward")
    if reward[0]:
        curves = [("reward", *reward, "-")]
        baseline = _series(train, "baseline")
        if baseline[0]:
            curves.append(("baseline", *baseline, "--"))
        panels.append(("SCST reward (CIDEr-D)", curves))
    cider = _series(val, "CIDEr")
    if cider[0]:
        panels.append(("validation CIDEr", [("CIDEr", *cider, "-")]))
    return panels


def plot_phase(phase: str, train: list, val: list) -> str | None:
    """One row of panels (loss, reward, validation CIDEr against step) for a phase, as a PNG data
    URI; None when the phase logged none of them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = _panels(train, val)
    if not panels:
        return None
    fig = Figure(figsize=(3.8 * len(panels), 2.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    for i, (title, curves) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for label, steps, values, style in curves:
            # Markers keep a curve of one or two points (a short run, sparse validation) visible.
            ax.plot(steps, values, style, marker="o", markersize=3, label=label)
        ax.set_title(f"{phase}: {title}", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if len(curves) > 1:
            ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
