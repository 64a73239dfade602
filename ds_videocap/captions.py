"""Caption text normalisation shared by data loading, rewards and the synthetic set's scorer.

Matches what pycocoevalcap's PTB tokenizer does to plain English captions (lower-case, punctuation
removed, whitespace-split), so that SCST rewards are computed on the same tokens evaluation sees.
"""
from __future__ import annotations

import re

# pycocoevalcap's PTBTokenizer drops these tokens after tokenizing.
_PUNCTUATION = re.compile(r"[''\"`\-\.\?!,:;\(\)\[\]\{\}\\/@#$%^&*+=<>|~_]")
_SPACES = re.compile(r"\s+")


def normalize_caption(text: str, max_words: int | None = 50) -> str:
    """Lower-case, strip punctuation, collapse whitespace, keep at most `max_words` words."""
    words = _SPACES.split(_PUNCTUATION.sub(" ", str(text).lower()).strip())
    words = [w for w in words if w]
    if max_words is not None:
        words = words[:max_words]
    return " ".join(words)


def training_references(captions: list[str], max_words: int | None) -> list[str]:
    """A clip's references as training uses them: normalised, empty ones left out ([""] when none is left)."""
    refs = [normalize_caption(c, max_words) for c in captions]
    return [r for r in refs if r] or [""]
