"""Annotation readers: LAVIS caption JSON, MSR-VTT, MSVD, VATEX and JSONL -> one list of Clip records.

Every reader groups captions by video (the LAVIS train form has one record per caption) and resolves
video paths against a videos root, finding the extension when the annotation leaves it out. A clip's id
is the one its format gives (image_id, video_id, videoID, MSVD clip name), else the video path as written,
never the stem. A malformed file raises one AnnotationError naming the file, the record and the field.
"""
from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov")
FORMATS = ("lavis", "msrvtt", "msvd", "vatex", "jsonl")
# MSR-VTT says "validate", VATEX files say "validation": one name for the rest of the pipeline.
_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                "validate": "val", "validation": "val", "test": "test", "public_test": "test"}


class AnnotationError(UserError):
    """An annotation file that cannot be read; the message names file, record, field and expectation."""


@dataclass
class Clip:
    video_id: str
    video: str
    """Resolved path; may not exist (`data check` reports it)."""
    captions: list
    """Raw reference captions (normalised later, by the dataset)."""
    split: str | None = None
    attributes: dict | None = None
    """Per-clip ground truth the synthetic set stores: {"colors": [..], "shapes": [..], "motions": [..]}."""


def normalize_split(name) -> str | None:
    return None if name is None else _SPLIT_NAMES.get(str(name).lower(), str(name).lower())


def resolve_video(name: str, videos_root=None) -> str:
    """Join `name` to the videos root; when it has no video extension, try each one on disk."""
    path = Path(str(name) if "\x00" in str(name) else os.path.expanduser(str(name)))  # ~nobody: kept as is
    if videos_root is not None and not path.is_absolute():
        path = Path(videos_root) / path
    if path.suffix.lower() in VIDEO_EXTENSIONS or path.is_file() or not path.name:  # "/": nothing to extend
        return str(path)
    for ext in VIDEO_EXTENSIONS:
        candidate = path.with_name(path.name + ext)
        if candidate.is_file():
            return str(candidate)
    return str(path)


def _load_json(path: Path):
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AnnotationError(f"{path}: annotation file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise AnnotationError(f"{path}: cannot read annotation file ({err})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # several JSON values: a JSONL file with a .json name
            return _JSONLines(text)
        raise AnnotationError(f"{path}: line {err.lineno} column {err.colno}: not valid JSON ({err.msg})") from None


class _JSONLines(str):
    """Marks file text that parsed as several JSON values (read line by line as JSONL)."""


def _detect(path: Path, data) -> str:
    if isinstance(data, _JSONLines):
        return "jsonl"
    if isinstance(data, dict) and "videos" in data and "sentences" in data:
        return "msrvtt"
    if isinstance(data, dict) and "annotations" in data:
        return "lavis"  # COCO-style ground truth: references only
    if isinstance(data, list) and data and isinstance(data[0], dict):
        if "videoID" in data[0]:
            return "vatex"
        if "video" in data[0] or "image_id" in data[0]:
            return "lavis"
    raise AnnotationError(
        f"{path}: unknown annotation format: expected a LAVIS list of {{video, caption}}, COCO "
        f"{{annotations: [...]}}, MSR-VTT {{videos, sentences}}, VATEX [{{videoID, enCap}}], "
        f"MSVD AllVideoDescriptions.txt or JSONL; pass the format explicitly if it is one of {list(FORMATS)}")


def detect_format(path) -> str:
    """'lavis' | 'msrvtt' | 'msvd' | 'vatex' | 'jsonl', from the file suffix and then its structure."""
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        return "jsonl"
    if path.suffix.lower() in (".txt", ".csv"):
        return "msvd"
    return _detect(path, _load_json(path))


def read_annotations(path, videos_root=None, fmt: str = "auto", split: str | None = None) -> list:
    """Read one annotation file into Clip records (one per video, captions grouped, file order kept).

    `split` keeps the clips of that split (MSR-VTT "validate" and VATEX "validation" are "val");
    clips whose split the file does not say are kept.
    """
    path = Path(path)
    if fmt not in ("auto",) + FORMATS:
        raise AnnotationError(f"{path}: unknown format '{fmt}': expected auto or one of {list(FORMATS)}")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "msvd" and path.suffix.lower() in (".txt", ".csv"):
        clips = _read_msvd(path, videos_root)
    elif fmt == "jsonl":
        clips = _read_jsonl(path, videos_root)
    else:
        data = _load_json(path)
        if isinstance(data, _JSONLines):
            clips = _read_jsonl(path, videos_root)
        elif fmt == "msrvtt" and isinstance(data, dict) and "sentences" in data:
            clips = _read_msrvtt(path, data, videos_root)
        elif fmt == "vatex":
            clips = _read_vatex(path, data, videos_root)
        else:  # LAVIS form, also how LAVIS ships MSR-VTT and MSVD
            clips = _read_lavis(path, data, videos_root)
    wanted = normalize_split(split)
    return [c for c in clips if wanted is None or c.split is None or c.split == wanted]


def _field(path: Path, where: str, record, name: str, kind, expected: str):
    if not isinstance(record, dict):
        raise AnnotationError(f"{path}: {where}: expected an object, got {type(record).__name__}")
    if name not in record:
        raise AnnotationError(f"{path}: {where}: missing field '{name}' ({expected})")
    value = record[name]
    if kind is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:
        ok = isinstance(value, kind) and not isinstance(value, bool)
    if not ok:
        raise AnnotationError(f"{path}: {where}: field '{name}' must be {expected}, got {value!r:.60}")
    return value


def _captions(path: Path, where: str, record, name: str) -> list:
    value = _field(path, where, record, name, (str, list), "a caption string or a list of strings")
    if isinstance(value, list) and not all(isinstance(v, str) for v in value):
        raise AnnotationError(f"{path}: {where}: field '{name}' must be a list of strings")
    return [value] if isinstance(value, str) else list(value)


def _attributes(path: Path, where: str, record) -> dict | None:
    value = record.get("attributes")
    if value is not None and not isinstance(value, dict):
        raise AnnotationError(f"{path}: {where}: field 'attributes' must be an object, got {value!r:.60}")
    return value


def _split_from_name(path: Path) -> str | None:
    """cap_train.json, vatex_validation_v1.0.json, test_gt.json: the split is in the file name."""
    for token in re.split(r"[^a-z]+", path.stem.lower()):
        if token in _SPLIT_NAMES:
            return _SPLIT_NAMES[token]
    return None


class _Grouper:
    """Collects captions per video id in first-seen order; an id given to two videos is an error."""

    def __init__(self, path: Path):
        self.path, self.clips = path, {}

    def add(self, video_id: str, video: str, captions: list, split=None, attributes=None, where: str = "") -> None:
        if not Path(video).name:  # "/" or "~/": a folder, never a video (and no name to add extensions to)
            raise AnnotationError(f"{self.path}: {where or f'id {video_id!r}'}: the video '{video}' names no file")
        clip = self.clips.setdefault(video_id, Clip(video_id, video, [], split, attributes))
        if clip.video != video:  # merging would give one video both caption sets and drop the other
            raise AnnotationError(f"{self.path}: {where}: id {video_id!r} already names video '{clip.video}', "
                                  f"this record's video is '{video}': give each video its own id")
        clip.captions.extend(captions)
        clip.attributes = clip.attributes or attributes


def _read_lavis(path: Path, data, root) -> list:
    split = _split_from_name(path)
    group = _Grouper(path)
    if isinstance(data, dict):  # COCO ground truth {"annotations": [{"image_id", "caption"}]}
        records = data.get("annotations")
        if not isinstance(records, list):
            raise AnnotationError(f"{path}: field 'annotations' must be a list of {{image_id, caption}}")
        for i, rec in enumerate(records):
            where = f"annotations[{i}]"
            vid = str(_field(path, where, rec, "image_id", (str, int), "the video id"))
            group.add(vid, resolve_video(vid, root), _captions(path, where, rec, "caption"), split, where=where)
        return list(group.clips.values())
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: expected a list of {{video, caption, image_id}} records")
    for i, rec in enumerate(data):
        where = f"record {i}"
        if isinstance(rec, dict) and "video" not in rec and "image_id" in rec:
            video = str(_field(path, where, rec, "image_id", (str, int), "the video id"))
        else:
            video = _field(path, where, rec, "video", str, "the video file, relative to the videos root")
        # the path as written, not the stem: a/x.mp4 and b/x.mp4, clip.avi and clip.webm are other videos
        vid = str(rec["image_id"]) if "image_id" in rec else Path(video).as_posix()
        refs = _captions(path, where, rec, "caption") if "caption" in rec else []
        rec_split = normalize_split(rec["split"]) if "split" in rec else split
        group.add(vid, resolve_video(video, root), refs, rec_split, _attributes(path, where, rec), where)
    return list(group.clips.values())


def _read_msrvtt(path: Path, data: dict, root) -> list:
    videos, sentences = data.get("videos"), data.get("sentences")
    if not isinstance(videos, list) or not isinstance(sentences, list):
        raise AnnotationError(f"{path}: fields 'videos' and 'sentences' must be lists")
    group = _Grouper(path)
    for i, rec in enumerate(videos):
        vid = _field(path, f"videos[{i}]", rec, "video_id", str, "a video id like 'video0'")
        split = normalize_split(_field(path, f"videos[{i}]", rec, "split", str, "train|validate|test"))
        group.add(vid, resolve_video(vid, root), [], split)
    for i, rec in enumerate(sentences):
        where = f"sentences[{i}]"
        vid = _field(path, where, rec, "video_id", str, "a video id listed under 'videos'")
        caption = _field(path, where, rec, "caption", str, "a caption string")
        if vid not in group.clips:
            raise AnnotationError(f"{path}: {where}: field 'video_id' {vid!r} is not listed under 'videos'")
        group.clips[vid].captions.append(caption)
    return list(group.clips.values())


def _read_vatex(path: Path, data, root) -> list:
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: expected a list of {{videoID, enCap}} records")
    split = _split_from_name(path)
    group = _Grouper(path)
    for i, rec in enumerate(data):
        where = f"record {i}"
        vid = _field(path, where, rec, "videoID", str, "the video id, also the video file name")
        refs = _field(path, where, rec, "enCap", list, "a list of English captions")
        group.add(vid, resolve_video(vid, root), refs, split)
    return list(group.clips.values())


def _read_msvd(path: Path, root) -> list:
    """AllVideoDescriptions.txt ('clip caption...' lines, '#' comments) or the corpus CSV (English rows)."""
    group = _Grouper(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise AnnotationError(f"{path}: cannot read annotation file ({err})") from None
    if path.suffix.lower() == ".csv":
        for line, row in enumerate(csv.DictReader(text.splitlines()), start=2):
            missing = [k for k in ("VideoID", "Start", "End", "Language", "Description") if not row.get(k)]
            if missing:
                raise AnnotationError(f"{path}: line {line}: missing field '{missing[0]}'")
            if row["Language"].strip().lower() == "english":
                vid = f"{row['VideoID']}_{row['Start']}_{row['End']}"
                group.add(vid, resolve_video(vid, root), [row["Description"]])
        return list(group.clips.values())
    for line, raw in enumerate(text.splitlines(), start=1):
        raw = raw.strip()
        if not raw or raw.startswith("#"):
            continue
        parts = raw.split(None, 1)
        if len(parts) < 2:
            raise AnnotationError(f"{path}: line {line}: expected 'clipname caption', got {raw!r:.60}")
        group.add(parts[0], resolve_video(parts[0], root), [parts[1]])
    return list(group.clips.values())


def _read_jsonl(path: Path, root) -> list:
    group = _Grouper(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise AnnotationError(f"{path}: annotation file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise AnnotationError(f"{path}: cannot read annotation file ({err})") from None
    for line, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        where = f"line {line}"
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as err:
            raise AnnotationError(f"{path}: {where} column {err.colno}: not valid JSON ({err.msg})") from None
        video = _field(path, where, rec, "video", str, "the video file, relative to the videos root")
        if "captions" in rec:
            refs = _field(path, where, rec, "captions", list, "a list of caption strings")
        else:
            refs = _captions(path, where, rec, "caption") if "caption" in rec else []
        vid = str(rec["video_id"]) if "video_id" in rec else Path(video).as_posix()  # not the stem
        split = normalize_split(rec.get("split"))
        group.add(vid, resolve_video(video, root), refs, split, _attributes(path, where, rec), where)
    return list(group.clips.values())
