"""A training run's output folder: metrics.jsonl (and the JSON's monitors), summary.json, results/,
checkpoints/. Rank 0 writes the files; checkpoints are written by every rank (a collective).
"""
from __future__ import annotations

import json
from pathlib import Path

from .checkpoints import COMPLETE, save_checkpoint, tag_for
from .metrics import write_results


class RunFolder:
    def __init__(self, output_dir: str | Path, rank: int, engine=None):
        self.path, self.rank, self.engine = Path(output_dir), rank, engine
        summary = self.path / "summary.json"
        self.summary = json.loads(summary.read_text()) if rank == 0 and summary.is_file() else {}

    def log(self, record: dict) -> None:
        """One metrics record: a line of metrics.jsonl, and the events of the JSON's monitors."""
        if self.rank != 0:
            return
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        monitor = getattr(self.engine, "monitor", None)
        if monitor is not None and monitor.enabled:
            events = [(f"{record['phase']}/{k}", float(v), record["step"]) for k, v in record.items()
                      if isinstance(v, (int, float)) and k not in ("step", "epoch")]
            monitor.write_events(events)

    def save_checkpoint(self, phase: str, state, keep_last: int, per_source: dict | None = None,
                        best: bool = False) -> Path:
        """Every rank calls it. A checkpoint already complete at this step is not written twice
        (the end of a phase saves, and validation may just have saved it as the best)."""
        tag = tag_for(phase, state.step)
        folder = self.path / "checkpoints" / tag
        if best:
            state.best_checkpoint = str(folder)
        if (folder / COMPLETE).is_file() and not best:
            return folder
        protect = (Path(state.best_checkpoint).name,) if state.best_checkpoint else ()
        saved = state.to_dict()
        if per_source is not None:
            saved["per_source"] = per_source
        return save_checkpoint(self.engine, self.path / "checkpoints", tag,
                               dict(saved, config=str(self.path / "config.yaml")), keep_last, protect)

    def write_test(self, phase: str, captions: dict, scores: dict) -> None:
        if self.rank == 0:
            (self.path / "results").mkdir(exist_ok=True)
            write_results(captions, self.path / "results" / f"{phase}_test.json")
            self.summary.setdefault(phase, {})["test"] = scores

    def write_summary(self, skipped: list) -> None:
        if self.rank == 0:
            self.summary["skipped_videos"] = list({s["video"]: s for s in skipped}.values())
            (self.path / "summary.json").write_text(json.dumps(self.summary, indent=1))
