"""Fuzz the inputs users hand us: annotation files (valid and malformed JSON, JSONL, MSVD text) must give
Clip lists or one AnnotationError, never another exception; caption normalisation never raises and
is idempotent, lower-case, punctuation-free and bounded in words."""
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ds_videocap.annotations import AnnotationError, Clip, read_annotations
from ds_videocap.captions import normalize_caption

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Field names the readers look for, so that random records often get past the first check.
KEYS = ["video", "caption", "captions", "image_id", "video_id", "split", "annotations", "videos", "sentences",
        "videoID", "enCap", "attributes"]
PTB_PUNCTUATION = set("'\"`-.?!,:;()[]{}\\/@#$%^&*+=<>|~_")

scalars = st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True) | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6),
                                                                inner, max_size=5),
    max_leaves=20)
records = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=5)
good_record = st.fixed_dictionaries({"video": st.text(min_size=1, max_size=12),
                                     "caption": st.text(max_size=30) | st.lists(st.text(max_size=30), max_size=3)})
documents = (json_values | st.lists(records | good_record, max_size=6)
             | st.fixed_dictionaries({"videos": json_values, "sentences": json_values})
             | st.fixed_dictionaries({"annotations": st.lists(records, max_size=4)}))


def read(name: str, content: bytes, fmt: str):
    """read_annotations on a file holding `content`: a Clip list, or None for an AnnotationError."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(content)
        try:
            clips = read_annotations(path, Path(folder) / "videos", fmt=fmt)
        except AnnotationError as err:
            assert name in str(err)  # every message names the file
            return None
    assert isinstance(clips, list) and all(isinstance(c, Clip) for c in clips)
    for clip in clips:
        assert isinstance(clip.video_id, str) and isinstance(clip.video, str)
        assert all(isinstance(c, str) for c in clip.captions)
    return clips


formats = st.sampled_from(["auto", "lavis", "msrvtt", "msvd", "vatex", "jsonl"])


@SETTINGS
@given(documents, formats)
def test_json_annotations_give_clips_or_annotation_error(document, fmt):
    read("ann.json", json.dumps(document).encode(), fmt)


@SETTINGS
@given(st.lists(records | good_record | json_values, max_size=6), st.lists(st.text(max_size=20), max_size=2))
def test_jsonl_annotations_give_clips_or_annotation_error(lines, junk):
    text = "\n".join([json.dumps(r) for r in lines] + junk)
    read("ann.jsonl", text.encode("utf-8", "surrogatepass"), "auto")


@SETTINGS
@given(st.lists(st.text(max_size=40) | st.from_regex(r"[A-Za-z0-9_\-]{1,11}_\d+_\d+ [a-z ]{0,30}", fullmatch=True),
                max_size=8))
def test_msvd_text_gives_clips_or_annotation_error(lines):
    read("AllVideoDescriptions.txt", "\n".join(lines).encode("utf-8", "surrogatepass"), "auto")


@SETTINGS
@given(st.binary(max_size=200), st.sampled_from(["a.json", "a.jsonl", "a.txt", "a.csv"]), formats)
def test_arbitrary_bytes_give_clips_or_annotation_error(content, name, fmt):
    read(name, content, fmt)


@SETTINGS
@given(st.text(max_size=300), st.integers(1, 60) | st.none())
def test_normalize_caption_properties(text, max_words):
    out = normalize_caption(text, max_words)
    assert isinstance(out, str)
    assert normalize_caption(out, max_words) == out  # idempotent
    assert out == out.lower()
    assert not PTB_PUNCTUATION & set(out)
    assert out == out.strip() and "  " not in out
    if max_words is not None:
        assert len(out.split()) <= max_words
