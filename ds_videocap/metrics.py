"""Caption metrics as reported in papers: pycocoevalcap after its PTB tokenizer, plus results files.

Bleu_1..Bleu_4, METEOR, ROUGE_L and CIDEr always; SPICE only when its Stanford CoreNLP jars are
installed (pycocoevalcap would otherwise try to download them mid-evaluation). The PTB tokenizer,
METEOR and SPICE run Java, so a missing Java runtime is reported up front as a UserError.
"""
from __future__ import annotations

import atexit
import json
import shutil
import threading
import warnings
from pathlib import Path

from .errors import UserError
from .noise import library_output

CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
_meteor = None  # one METEOR JVM per process: it spends ~4-7 s loading its tables before the first score
_meteor_lock = threading.Lock()


def spice_available() -> bool:
    """True when SPICE's CoreNLP jars sit in pycocoevalcap/spice/lib (where SPICE looks for them)."""
    import pycocoevalcap.spice.spice as spice_module

    lib = Path(spice_module.__file__).parent / "lib"
    return all((lib / jar).is_file() for jar in CORENLP_JARS)


def _require_java() -> None:
    if shutil.which("java") is None:
        raise UserError("caption metrics need a Java runtime for pycocoevalcap (PTB tokenizer, METEOR): "
                        "install one, e.g. `apt-get install default-jre-headless`")


def _check_inputs(results: dict, references: dict) -> None:
    if not results:
        raise UserError("score_captions: no results to score")
    missing = [k for k in results if k not in references]
    if missing:
        raise UserError(f"score_captions: no references for ids {missing[:5]} "
                        f"({len(missing)} of {len(results)} results)")
    for key in results:
        refs = references[key]
        if isinstance(refs, str) or not refs:
            raise UserError(f"score_captions: references[{key!r}] must be a non-empty list of captions")


def score_captions(results: dict, references: dict, spice: bool | None = None) -> dict[str, float]:
    """Corpus-level metrics of `results` {id: caption} against `references` {id: [captions]}.

    Ids are used as given (ints or strs). Only ids present in `results` are scored. `spice`:
    None runs SPICE when available (and warns once when it is not), False skips it, True
    requires it. Keys are spelled as pycocoevalcap spells them.
    """
    _check_inputs(results, references)
    _require_java()
    run_spice = spice_available() if spice is None else spice
    if spice and not spice_available():
        raise UserError(f"SPICE requested but pycocoevalcap/spice/lib lacks {' and '.join(CORENLP_JARS)} "
                        "(run pycocoevalcap.spice.get_stanford_models once with internet access)")
    # pycocoevalcap prints progress (BLEU's counts) on stdout: to the noise log (stderr with --verbose)
    with library_output():
        scores = _run_scorers(results, references, run_spice)
    if spice is None and not run_spice:
        # a warning (stderr) rather than a print, so callers can filter it; one per evaluation
        warnings.warn("SPICE skipped: Stanford CoreNLP jars not installed in pycocoevalcap/spice/lib", stacklevel=2)
    return scores


def _run_scorers(results: dict, references: dict, run_spice: bool) -> dict[str, float]:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": str(c)} for c in references[k]] for k in results})
    res = tokenizer.tokenize({k: [{"caption": str(results[k])}] for k in results})
    scores: dict[str, float] = {}
    bleu, _ = Bleu(4).compute_score(gts, res)
    scores.update({f"Bleu_{i + 1}": float(b) for i, b in enumerate(bleu)})
    scores["METEOR"] = float(start_meteor().compute_score(gts, res)[0])
    scores["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    if run_spice:
        from pycocoevalcap.spice.spice import Spice

        scores["SPICE"] = float(Spice().compute_score(gts, res)[0])
    return scores


def start_meteor():
    """The process's METEOR scorer, its JVM started on the first call and kept for later evaluations.

    Called early (before decoding the captions it will score), the JVM loads its paraphrase tables
    while the model generates, instead of after. Stopped at interpreter exit.
    """
    global _meteor
    with _meteor_lock:
        if _meteor is None or _meteor.meteor_p.poll() is not None:  # none yet, or its JVM has died
            from pycocoevalcap.meteor.meteor import Meteor

            _require_java()
            _meteor = Meteor()
            atexit.register(_stop_meteor)
        return _meteor


def _stop_meteor() -> None:
    global _meteor
    if _meteor is not None:
        _meteor.meteor_p.kill()  # __del__ would take the scorer's lock, which a dying thread may hold
        _meteor.meteor_p.wait()
        _meteor = None


def write_results(results: dict, path: str | Path) -> Path:
    """Write [{"image_id", "caption"}] (the COCO results form), ids kept as given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([{"image_id": k, "caption": c} for k, c in results.items()], indent=1))
    return path


def read_results(path: str | Path) -> dict:
    """Read a results file written by write_results (or any COCO-style results list)."""
    path = Path(path)
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read results JSON ({exc})") from exc
    if not isinstance(records, list):
        raise UserError(f"{path}: expected a list of {{\"image_id\", \"caption\"}} records")
    results = {}
    for i, record in enumerate(records):
        if not isinstance(record, dict) or "image_id" not in record or not isinstance(record.get("caption"), str):
            raise UserError(f"{path}: record {i} needs \"image_id\" and a string \"caption\"")
        results[record["image_id"]] = record["caption"]
    return results
