"""`ds-videocap report RUN_DIR`: one self-contained HTML page (inline CSS, images as PNG data URIs).

The page shows the test metrics of each phase from summary.json, the skipped videos, the training
curves from metrics.jsonl, and a deterministic sample of test clips (their sampled frames next to each
phase's generated caption and the references). A run folder needs config.yaml and metrics.jsonl; every
other piece that is missing or unreadable becomes a note on the page, because a report is most wanted
exactly when a run ended early.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import yaml

from .annotations import read_annotations
from .errors import UserError
from .video import VideoDecodeError, read_frames

REQUIRED = ("config.yaml", "metrics.jsonl")
SAMPLES = 8
METRIC_ORDER = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE",
                "color_acc", "shape_acc", "motion_acc", "all_acc", "clips", "decoded")
MAX_LISTED_SKIPS = 200  # a broken dataset can skip thousands; the count says the rest

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;
max-width:1200px;padding:0 16px;color:#222;line-height:1.4}
h1{font-size:1.5em;margin-bottom:4px}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #ddd;padding:4px 10px;text-align:left;
vertical-align:top}th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:6px 10px;margin:8px 0}
.muted{color:#777}.sample{border:1px solid #ddd;border-radius:6px;padding:10px;margin:12px 0}
img{max-width:100%;height:auto}.sample img{image-rendering:pixelated;display:block}
.pair{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start;margin-top:6px}.pair table{margin:0}
.gen{font-weight:600}ul.refs{margin:4px 0;padding-left:20px}code{background:#f4f4f4;padding:0 3px}
"""


@dataclass
class RunRecord:
    """What a run folder holds, read leniently; `notes` says what was missing or unreadable."""
    root: Path
    config: dict
    metrics: list
    summary: dict
    results: dict = field(default_factory=dict)  # phase -> {image_id: caption}
    notes: list = field(default_factory=list)

    @property
    def phases(self) -> list:
        """Phases in training order: as first logged, then any only in summary.json or results/."""
        seen = [m.get("phase") for m in self.metrics] + [k for k, v in self.summary.items()
                                                          if isinstance(v, dict)] + list(self.results)
        return [p for i, p in enumerate(seen) if isinstance(p, str) and p not in seen[:i]]


def load_run(run_dir) -> RunRecord:
    root = Path(run_dir)
    if not root.is_dir():
        raise UserError(f"{root}: not a run folder (no such folder)")
    missing = [name for name in REQUIRED if not (root / name).is_file()]
    if missing:
        raise UserError(f"{root}: not a run folder (missing {', '.join(missing)})")
    try:
        config = yaml.safe_load((root / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{root / 'config.yaml'}: unreadable ({err})") from err
    if not isinstance(config, dict):
        raise UserError(f"{root / 'config.yaml'}: expected a mapping (the resolved recipe)")
    notes: list = []
    run = RunRecord(root, config, _read_metrics(root / "metrics.jsonl", notes), _read_summary(root, notes),
              notes=notes)
    found = [p.name[:-len("_test.json")] for p in sorted((root / "results").glob("*_test.json"))]
    for phase in dict.fromkeys(run.phases + found):
        captions = _read_results(root / "results" / f"{phase}_test.json", notes)
        if captions is not None:
            run.results[phase] = captions
    return run


def _read_metrics(path: Path, notes: list) -> list:
    lines, bad = [], 0
    for text in path.read_text().splitlines():
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except ValueError:
            bad += 1  # a crash can leave a half-written last line
            continue
        if isinstance(line, dict):
            lines.append(line)
    if bad:
        notes.append(f"metrics.jsonl: {bad} unreadable line(s) ignored")
    return lines


def _read_summary(root: Path, notes: list) -> dict:
    path = root / "summary.json"
    if not path.is_file():
        notes.append("no summary.json: the run has not finished (no test metrics yet)")
        return {}
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        notes.append(f"summary.json: unreadable ({err})")
        return {}
    return summary if isinstance(summary, dict) else {}


def _read_results(path: Path, notes: list) -> dict | None:
    if not path.is_file():
        notes.append(f"no results/{path.name}: no generated test captions for phase '{path.name[:-10]}'")
        return None
    try:
        records = json.loads(path.read_text())
        return {str(r["image_id"]): str(r["caption"]) for r in records}
    except (OSError, ValueError, TypeError, KeyError) as err:
        notes.append(f"results/{path.name}: unreadable ({type(err).__name__}: {err})")
        return None


def _fmt(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return escape(str(value))
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def render_metrics(run: RunRecord) -> str:
    """One column per phase (and split) so CE and SCST read side by side, one row per metric."""
    columns = [(phase, split, values) for phase in run.phases
               for split, values in (run.summary.get(phase) or {}).items() if isinstance(values, dict)]
    if not columns:
        return _note("no test metrics in summary.json")
    keys = {k for _, _, values in columns for k in values}
    rows = [k for k in METRIC_ORDER if k in keys] + sorted(keys - set(METRIC_ORDER))
    head = "".join(f"<th>{escape(p)} / {escape(str(s))}</th>" for p, s, _ in columns)
    body = "".join(f"<tr><th>{escape(k)}</th>" + "".join(
        f'<td class="num">{_fmt(v[k]) if k in v else "&mdash;"}</td>' for _, _, v in columns) + "</tr>"
        for k in rows)
    return f'<table class="metrics"><tr><th>metric</th>{head}</tr>{body}</table>'


def render_skipped(run: RunRecord) -> str:
    skipped = run.summary.get("skipped_videos")
    if skipped is None:
        return '<p class="muted">summary.json does not list skipped videos.</p>'
    if not skipped:
        return "<p>Skipped videos: 0.</p>"
    items = "".join(f"<li><code>{escape(s if isinstance(s, str) else json.dumps(s))}</code></li>"
                    for s in skipped[:MAX_LISTED_SKIPS])
    more = f"<li>&hellip; and {len(skipped) - MAX_LISTED_SKIPS} more</li>" if len(skipped) > MAX_LISTED_SKIPS else ""
    return (f'<details><summary>Skipped videos: {len(skipped)}</summary><ul class="skipped">{items}{more}'
            "</ul></details>")


def render_curves(run: RunRecord) -> str:
    from .report_plots import plot_phase

    parts = []
    for phase in run.phases:
        lines = [m for m in run.metrics if m.get("phase") == phase]
        train = [m for m in lines if "split" not in m]
        val = [m for m in lines if m.get("split") == "val"]
        image = plot_phase(phase, train, val) if lines else None
        parts.append(f"<h3>{escape(phase)}</h3>")
        if image is None:
            parts.append(_note(f"no training or validation lines for phase '{phase}' in metrics.jsonl"))
            continue
        parts.append(f'<img alt="{escape(phase)} training curves" src="{image}">')
        speeds = [m["samples_per_s"] for m in train if isinstance(m.get("samples_per_s"), (int, float))]
        last = train[-1] if train else lines[-1]
        facts = f"training lines: {len(train)}, validation lines: {len(val)}, last step {_fmt(last.get('step'))}"
        if speeds:
            facts += f", mean {sum(speeds) / len(speeds):.1f} samples/s"
        parts.append(f'<p class="muted">{facts}</p>')
    return "".join(parts) or _note("metrics.jsonl has no lines with a phase")


def pick_samples(clips: list, count: int = SAMPLES) -> list:
    """`count` clips spread evenly over the file (deterministic, covers the whole test set)."""
    if len(clips) <= count:
        return list(clips)
    return [clips[round(i * (len(clips) - 1) / (count - 1))] if count > 1 else clips[0] for i in range(count)]


def _test_clips(run: RunRecord) -> tuple:
    """(clips, None) or ([], why the test annotations could not be read)."""

    data = run.config.get("data") or {}
    test = data.get("test")
    if not test:
        return [], "the run config names no test annotations (data.test)"
    path = Path(test)
    if not path.is_absolute() and not path.exists() and (run.root / path).exists():
        path = run.root / path
    if not path.is_file():
        return [], f"test annotations {path} not found"
    try:
        return read_annotations(path, data.get("videos"), data.get("format") or "auto"), None
    except (UserError, OSError) as err:
        return [], f"test annotations unreadable: {err}"


def _frames_html(run: RunRecord, clip) -> str:
    from .report_plots import make_strip

    data = run.config.get("data") or {}
    try:
        frames = read_frames(clip.video, data.get("eval_sampling") or "uniform", int(data.get("frames") or 4),
                             data.get("image_size"), backend=data.get("backend") or "decord",
                             timeout_s=data.get("decode_timeout_s"))
    except (VideoDecodeError, ValueError) as err:
        return _note(f"frames not shown: {err}")
    return f'<img alt="frames of {escape(clip.video_id)}" src="{make_strip(frames)}">'


def render_samples(run: RunRecord, count: int = SAMPLES) -> str:
    clips, why = _test_clips(run)
    if why:
        return _note(why)
    if not clips:
        return _note("the test annotations hold no clips")
    parts = [f'<p class="muted">{min(count, len(clips))} of {len(clips)} test clips, spread evenly over '
             "the annotation file; frames sampled as in evaluation.</p>"]
    for clip in pick_samples(clips, count):
        absent = '<span class="muted">not in results</span>'
        rows = "".join(f'<tr><th>{escape(phase)}</th><td class="gen">'
                       f"{escape(captions[clip.video_id]) if clip.video_id in captions else absent}</td></tr>"
                       for phase, captions in run.results.items())
        refs = "".join(f"<li>{escape(c)}</li>" for c in clip.captions)
        parts.append(f'<div class="sample"><b>{escape(clip.video_id)}</b> <span class="muted">'
                     f"{escape(str(clip.video))}</span>"
                     f'<div class="pair">{_frames_html(run, clip)}<table class="captions">{rows}'
                     f'<tr><th>references</th><td><ul class="refs">{refs}</ul></td></tr></table></div></div>')
    return "".join(parts)


def render_header(run: RunRecord) -> str:
    cfg, data, model = run.config, run.config.get("data") or {}, run.config.get("model") or {}
    facts = [("run folder", str(run.root.resolve())), ("recipe", cfg.get("name")),
             ("model", model.get("tiny") or model.get("path")), ("fusion", model.get("fusion")),
             ("frames", data.get("frames")), ("image size", data.get("image_size")),
             ("best checkpoint", run.summary.get("best_checkpoint"))]
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in facts if v is not None)
    return f'<h1>ds-videocap run report: {escape(str(cfg.get("name") or run.root.name))}</h1><table>{rows}</table>'


def build_report(run_dir, samples: int = SAMPLES) -> str:
    """The whole page as one HTML string."""
    run = load_run(run_dir)
    body = [render_header(run), "<h2>Test metrics</h2>", render_metrics(run), render_skipped(run),
            "<h2>Training curves</h2>", render_curves(run), "<h2>Sample test clips</h2>",
            render_samples(run, samples)]
    notes = "".join(_note(n) for n in run.notes)  # after rendering: loaders add to run.notes
    if notes:
        body.insert(1, "<h2>Notes</h2>" + notes)
    title = escape(f"ds-videocap report: {run.config.get('name') or run.root.name}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")


def write_report(run_dir, out=None, samples: int = SAMPLES) -> Path:
    """Render the report of `run_dir` into `out` (default RUN_DIR/report.html); returns the path."""
    page = build_report(run_dir, samples)
    out = Path(out) if out else Path(run_dir) / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def report_command(args) -> int:
    out = write_report(args.run_dir, args.out)
    print(f"report: {out}")
    return 0
