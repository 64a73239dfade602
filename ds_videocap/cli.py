"""`ds-videocap` command line: one subcommand per pipeline stage; each handler lives with its stage.

Heavy imports (torch, deepspeed, transformers) happen inside handlers so that `--help` is instant.
A user's mistake (ConfigError, AnnotationError, ...) prints one line and exits 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys

from .annotations import FORMATS as ANNOTATION_FORMATS  # light: json, csv, re

DESCRIPTION = """Caption videos with BLIP-2 / InstructBLIP models and train them on DeepSpeed.

Typical use: check your annotations and videos (`data check`), train a recipe with
`bash launch/train.sh RECIPE [DS_JSON] [key=value ...]`, score it on a split (`eval`), caption your own
videos (`caption`), and export a Hugging Face folder (`export`). `--checkpoint` takes a run folder, one
of its checkpoints, or a Hugging Face model folder. Run `ds-videocap COMMAND --help` for a command's options."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows '(default: X)' after an option's help, except when there is nothing worth showing
    (None, False) or the help text already says what the default is."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def _at_least(low: int):
    """An argparse type: an integer >= low; anything else is a usage error naming the option (exit 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _parser(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:] + ".",
                       formatter_class=_HelpFormatter)
    p.add_argument("--verbose", action="store_true",
                   help="show the libraries' own messages (DeepSpeed, pycocoevalcap, bitsandbytes)")
    return p


FORMATS = ["auto", *ANNOTATION_FORMATS]


def _add_data(sub) -> None:
    data = sub.add_parser("data", help="prepare and check video-caption data", formatter_class=_HelpFormatter,
                          description="Prepare and check video-caption data.")
    data = data.add_subparsers(dest="data_cmd", required=True, metavar="{synth,check}")
    synth = _parser(data, "synth", "generate the embedded synthetic video-caption set")
    synth.add_argument("--out", required=True, help="folder to write videos/, annotations/ and tokenizer/ into")
    synth.add_argument("--videos", type=_at_least(1), default=None,
                       help="number of clips (default: the set's standard size)")
    synth.add_argument("--seed", type=int, default=0, help="random seed of the generated set")
    check = _parser(data, "check", "read every record and open every video")
    check.add_argument("annotations", help="the annotation file to check")
    check.add_argument("--videos", default=None, metavar="DIR",
                       help="videos root the annotation's video paths are relative to")
    check.add_argument("--format", default="auto", choices=FORMATS, help="annotation format")
    check.add_argument("--frames", type=_at_least(1), default=8, help="frames decoded per video")
    check.add_argument("--backend", default="decord", choices=["decord", "pyav"], help="video reader")
    check.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def _add_train(sub) -> None:
    train = _parser(sub, "train", "train a recipe (normally through launch/train.sh, which runs the "
                                  "DeepSpeed launcher)")
    train.add_argument("--recipe", default="synth", help="a shipped recipe name or a YAML file")
    train.add_argument("--deepspeed", default=None, help="DeepSpeed JSON (default: ds_configs/zero3_offload.json)")
    train.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)
    train.add_argument("overrides", nargs="*", help="key=value recipe overrides, e.g. ce.steps=100")


def _add_eval(sub) -> None:
    ev = _parser(sub, "eval", "caption an annotation split and score it (BLEU, METEOR, ROUGE-L, CIDEr)")
    ev.add_argument("--checkpoint", required=True, metavar="DIR",
                    help="a run folder, a checkpoint folder or a Hugging Face folder")
    ev.add_argument("--annotations", required=True, metavar="FILE", help="annotation file of the split to score")
    ev.add_argument("--videos", default=None, metavar="DIR",
                    help="videos root the annotation's video paths are relative to")
    ev.add_argument("--results", default=None, metavar="FILE",
                    help="also write the captions here as [{image_id, caption}]")
    ev.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    ev.add_argument("--format", default="auto", choices=FORMATS, help="annotation format")
    ev.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)
    _add_decode_options(ev)
    _add_model_options(ev)
    cap = _parser(sub, "caption", "caption video files or folders of videos")
    cap.add_argument("--checkpoint", required=True, metavar="DIR",
                     help="a run folder, a checkpoint folder or a Hugging Face folder")
    cap.add_argument("inputs", nargs="+", help="video files or folders (searched recursively)")
    cap.add_argument("--json", action="store_true", help="print [{video, caption}] as JSON instead of a table")
    _add_decode_options(cap)
    _add_model_options(cap)


def _add_model_options(p) -> None:
    """How frames reach the model; unset, each comes from the run's config.yaml for a run or checkpoint
    folder, else the folder's videocap.json, else the folder family's default (README: model folders)."""
    group = p.add_argument_group("model (default: the run's config.yaml, else the folder's videocap.json, "
                                 "else the folder family's default)")
    group.add_argument("--fusion", choices=["concat", "per_frame"], default=None,
                       help="concat: one Q-Former pass over all frames (BLIP-2, InstructBLIP); per_frame: one "
                            "pass per frame (InstructBLIP-Video's default)")
    group.add_argument("--qformer-text", action=argparse.BooleanOptionalAction, default=None,
                       help="feed the prompt to an InstructBLIP Q-Former as instruction text "
                            "(InstructBLIP-Video's default: on)")
    group.add_argument("--prompt", default=None,
                       help="text prompt (default: the folder's; T5 and Llama 'a video of', OPT none)")


def _add_decode_options(p) -> None:
    p.add_argument("--num-beams", type=_at_least(1), default=None, metavar="N",
                   help="beam search width (default: the run's recipe, else 5)")
    p.add_argument("--max-new-tokens", type=_at_least(1), default=None, metavar="N",
                   help="longest caption in tokens (default: the run's recipe, else 32)")
    p.add_argument("--min-new-tokens", type=_at_least(0), default=None, metavar="N",
                   help="shortest caption in tokens (default: the run's recipe, else 5)")
    p.add_argument("--batch-size", type=_at_least(1), default=None, metavar="N",
                   help="videos decoded per batch (default: the run's recipe, else 16)")
    p.add_argument("--frames", type=_at_least(1), default=None, metavar="T",
                   help="frames sampled per video (default: the checkpoint's)")
    p.add_argument("--device", default=None,
                   help="where the model runs: cpu, cuda or cuda:N (default: this rank's GPU when there is "
                        "one, else the CPU)")


def _add_tools(sub) -> None:
    ex = _parser(sub, "export", "write a checkpoint as a Hugging Face folder")
    ex.add_argument("--checkpoint", required=True, metavar="DIR", help="a run folder or one of its checkpoint folders")
    ex.add_argument("--out", required=True, help="the Hugging Face folder to write")
    ex.add_argument("--keep-adapter", action="store_true", help="keep LoRA as a PEFT adapter instead of merging")
    rep = _parser(sub, "report", "write one self-contained HTML page for a run")
    rep.add_argument("run_dir", help="the run folder (output_dir of the recipe)")
    rep.add_argument("--out", default=None, help="the HTML file (default: RUN_DIR/report.html)")
    plan = _parser(sub, "plan", "estimate memory per DeepSpeed JSON and recommend one")
    plan.add_argument("--recipe", required=True, help="a shipped recipe name or a YAML file")
    plan.add_argument("--gpus", type=_at_least(1), default=1, help="GPUs the run will use")
    plan.add_argument("--gpu-mem", type=_positive_float, default=80.0, help="memory per GPU, GiB")
    plan.add_argument("--cpu-mem", type=_positive_float, default=256.0, help="CPU memory of a node, GiB")
    plan.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    plan.add_argument("overrides", nargs="*", help="key=value recipe overrides, e.g. ce.micro_batch=16")
    imp = _parser(sub, "import-lavis", "convert a LAVIS BLIP-2 .pth into a Hugging Face folder")
    imp.add_argument("--checkpoint", required=True, metavar="DIR", help="the LAVIS checkpoint (.pth)")
    imp.add_argument("--base", required=True, help="the Hugging Face folder whose architecture it maps onto")
    imp.add_argument("--out", required=True, help="the Hugging Face folder to write")
    imp.add_argument("--lora-r", type=_at_least(1), default=None,
                     help="LoRA rank (default: read from the factors' shapes)")
    imp.add_argument("--lora-alpha", type=_positive_float, default=None,
                     help="LoRA alpha (default: the checkpoint config's model.lora_alpha, else 16)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="ds-videocap", description=DESCRIPTION, formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True, title="commands", metavar="COMMAND")
    _add_data(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_tools(sub)
    return parser


def _dispatch(args) -> int:
    if args.cmd == "data" and args.data_cmd == "synth":
        from .synth import synth_command
        return synth_command(args)
    if args.cmd == "data" and args.data_cmd == "check":
        from .datacheck import check_command
        return check_command(args)
    if args.cmd == "train":
        from .train import train_command
        return train_command(args)
    if args.cmd == "eval":
        from .evaluate import eval_command
        return eval_command(args)
    if args.cmd == "caption":
        from .evaluate import caption_command
        return caption_command(args)
    if args.cmd == "export":
        from .evaluate import export_command
        return export_command(args)
    if args.cmd == "report":
        from .report import report_command
        return report_command(args)
    if args.cmd == "plan":
        from .plan import plan_command
        return plan_command(args)
    if args.cmd == "import-lavis":
        from .lavis import import_command
        return import_command(args)
    raise AssertionError(args.cmd)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import UserError
    from .noise import quiet_libraries
    # With --json, and for eval's and caption's tables, standard output carries the result only:
    # libraries' chatter (DeepSpeed's logger and prints, pycocoevalcap's prints) goes to the noise
    # log (stderr with --verbose), so `ds-videocap ... --json | jq` works.
    args.json_out = sys.stdout
    pure = getattr(args, "json", False) or args.cmd in ("eval", "caption")
    try:
        with quiet_libraries(getattr(args, "verbose", False), capture_stdout=pure):
            code = _dispatch(args) or 0
    except UserError as err:
        print(f"ds-videocap {args.cmd}: error: {err}", file=sys.stderr)
        code = 2
    except RuntimeError as err:
        # When one rank stops (a UserError, a kill), the others fail in their next collective: say so in
        # one line instead of a traceback that hides the first rank's message.
        if not _lost_a_peer(err):
            raise
        print(f"ds-videocap {args.cmd}: error: stopped because another rank stopped first (see its message)",
              file=sys.stderr)
        code = 1
    if _distributed():
        from .engine import exit_distributed
        exit_distributed(code, wait_for_peers=code == 0)  # does not return: see why there
    return code


def _distributed() -> bool:
    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_available() and dist.is_initialized()


def _lost_a_peer(err: RuntimeError) -> bool:
    if not _distributed():
        return False
    text = str(err)
    return type(err).__name__ == "DistBackendError" or any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe"))


if __name__ == "__main__":
    sys.exit(main())
