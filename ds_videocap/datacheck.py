"""`ds-videocap data check`: read every record, open every video, report what training would trip on.

Missing videos, undecodable videos and empty captions make a record unusable (exit 1); duplicates, and
a video beside an unused one of the same name and another extension, are reported but usable. An
unreadable annotation file is an AnnotationError (the CLI exits 2).
"""
from __future__ import annotations

import os
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from .annotations import VIDEO_EXTENSIONS, detect_format, read_annotations
from .captions import normalize_caption
from .errors import UserError
from .output import print_json
from .video import VideoDecodeError, read_frames

CHECK_SIZE = 224
CHECK_TIMEOUT_S = 60.0


def probe_video(path: str, frames: int, backend: str) -> str | None:
    """None when T frames decode, else the reason. Runs in a worker process (its main thread)."""
    try:
        read_frames(path, "uniform", frames, CHECK_SIZE, backend=backend, timeout_s=CHECK_TIMEOUT_S, threads=1)
    except VideoDecodeError as err:
        return str(err).replace(f"{path}: ", "", 1)
    return None


def probe_videos(paths: list, frames: int, backend: str) -> dict:
    """path -> reason (None: decodes). Decodes in processes, so a crashing decoder cannot take the
    check down with it: whatever was in flight when a worker died is reported as bad."""
    if not paths:
        return {}
    workers = max(1, min(len(paths), os.cpu_count() or 1, 8))
    results = {}
    with ProcessPoolExecutor(workers) as pool:
        futures = {p: pool.submit(probe_video, p, frames, backend) for p in paths}
        for path, future in futures.items():
            try:
                results[path] = future.result()
            except BrokenProcessPool:
                results[path] = "the decoder crashed on this video (or on one decoded beside it)"
    return results


def check_annotations(annotations, videos_root=None, fmt: str = "auto", frames: int = 8,
                      backend: str = "decord") -> dict:
    """The whole report as one dict (the `--json` object)."""
    fmt = detect_format(annotations) if fmt == "auto" else fmt
    clips = read_annotations(annotations, videos_root, fmt)
    ann = str(annotations)
    problems = []
    per_split: Counter = Counter()
    empty = duplicates = 0
    for clip in clips:
        per_split[clip.split or "unknown"] += len(clip.captions)
        if not clip.captions:
            empty += 1
            problems.append({"file": ann, "reason": f"video {clip.video_id}: no captions"})
        normalised = [normalize_caption(c) for c in clip.captions]
        for k, text in enumerate(normalised):
            if not text:
                empty += 1
                problems.append({"file": ann, "reason": f"video {clip.video_id}: caption {k} is empty"})
        for text, count in Counter(t for t in normalised if t).items():
            if count > 1:
                duplicates += count - 1
                problems.append({"file": ann, "reason": f"duplicate: video {clip.video_id}: caption "
                                                        f"{text!r:.60} appears {count} times"})
    for video, count in Counter(c.video for c in clips).items():
        if count > 1:
            duplicates += count - 1
            problems.append({"file": video, "reason": f"duplicate: {count} clip records use this video"})

    videos = list(dict.fromkeys(c.video for c in clips))
    problems += _unused_namesakes(videos)
    missing = [v for v in videos if not os.path.isfile(v)]
    problems += [{"file": v, "reason": "missing"} for v in missing]
    reasons = probe_videos([v for v in videos if os.path.isfile(v)], frames, backend)
    bad = {v: r for v, r in reasons.items() if r is not None}
    problems += [{"file": v, "reason": f"bad video: {r}"} for v, r in bad.items()]
    # Counts are per clip record, so a video shared by two records counts twice.
    missing_set = set(missing)
    return {
        "annotations": ann,
        "format": fmt,
        "clips": len(clips),
        "captions": sum(len(c.captions) for c in clips),
        "captions_per_split": dict(per_split),
        "missing_videos": sum(c.video in missing_set for c in clips),
        "bad_videos": sum(c.video in bad for c in clips),
        "empty_captions": empty,
        "duplicates": duplicates,
        "problems": problems,
    }


def _unused_namesakes(videos: list) -> list:
    """A video beside another of the same name and another extension that no record uses: when the
    annotation named it without extension (MSR-VTT, VATEX, MSVD ids), the reader took the first
    extension in VIDEO_EXTENSIONS order, and the other may be the clip that was meant. Usable; said."""
    used, problems = set(videos), []
    for video in videos:
        path = Path(video)
        others = [str(path.with_suffix(ext)) for ext in VIDEO_EXTENSIONS if ext != path.suffix.lower()]
        unused = [o for o in others if o not in used and os.path.isfile(o)]
        if unused and path.suffix.lower() in VIDEO_EXTENSIONS:
            problems.append({"file": video, "reason": f"same name, other extension: {', '.join(unused)} (used "
                                                      "by no record): name the file with its extension"})
    return problems


def is_usable(report: dict) -> bool:
    return not (report["missing_videos"] or report["bad_videos"] or report["empty_captions"])


def format_report(report: dict, max_problems: int = 20) -> str:
    rows = [("annotations", f"{report['annotations']} ({report['format']})"),
            ("clips", report["clips"]), ("captions", report["captions"])]
    rows += [(f"  {split}", n) for split, n in sorted(report["captions_per_split"].items())]
    rows += [("missing videos", report["missing_videos"]), ("bad videos", report["bad_videos"]),
             ("empty captions", report["empty_captions"]), ("duplicates", report["duplicates"])]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    problems = report["problems"]
    if problems:
        shown = f", first {max_problems}" if len(problems) > max_problems else ""
        lines.append(f"problems ({len(problems)}{shown}):")
        lines += [f"  {p['file']}: {p['reason']}" for p in problems[:max_problems]]
    lines.append("OK: every record is usable" if is_usable(report) else
                 "NOT OK: fix or remove the records above (duplicates alone are allowed)")
    return "\n".join(lines)


def check_command(args) -> int:
    if getattr(args, "frames", 8) < 1:
        raise UserError(f"data check: --frames must be >= 1, got {args.frames}")
    report = check_annotations(Path(args.annotations), getattr(args, "videos", None),
                               getattr(args, "format", "auto"), getattr(args, "frames", 8),
                               getattr(args, "backend", "decord"))
    if getattr(args, "json", False):
        print_json(args, report)
    else:
        print(format_report(report))
    sys.stdout.flush()
    return 0 if is_usable(report) else 1
