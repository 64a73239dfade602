"""`ds-videocap` command line: one subcommand per pipeline stage; each handler lives with its stage.

Heavy imports (torch, deepspeed, transformers) happen inside handlers so that `--help` is instant.
A user's mistake (ConfigError, AnnotationError, ...) prints one line and exits 2, never a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import sys


def _add_data(sub) -> None:
    data = sub.add_parser("data", help="prepare and check video-caption data").add_subparsers(dest="data_cmd", required=True)
    synth = data.add_parser("synth", help="generate the embedded synthetic video-caption set")
    synth.add_argument("--out", required=True)
    synth.add_argument("--videos", type=int, default=None, help="number of clips (default: the set's standard size)")
    synth.add_argument("--seed", type=int, default=0)
    check = data.add_parser("check", help="read every record and open every video")
    check.add_argument("annotations")
    check.add_argument("--videos", default=None, help="videos root")
    check.add_argument("--format", default="auto", choices=["auto", "lavis", "msrvtt", "msvd", "vatex", "jsonl"])
    check.add_argument("--frames", type=int, default=8)
    check.add_argument("--backend", default="decord", choices=["decord", "pyav"])
    check.add_argument("--json", action="store_true")


def _add_train(sub) -> None:
    train = sub.add_parser("train", help="train a recipe (run under the deepspeed launcher: launch/train.sh)")
    train.add_argument("--recipe", default="synth", help="a shipped recipe name or a YAML file")
    train.add_argument("--deepspeed", default=None, help="DeepSpeed JSON (default ds_configs/zero3_offload.json)")
    train.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)
    train.add_argument("overrides", nargs="*", help="key=value recipe overrides, e.g. ce.steps=100")


def _add_eval(sub) -> None:
    ev = sub.add_parser("eval", help="decode an annotation split and score it")
    ev.add_argument("--checkpoint", required=True, help="a run's checkpoint folder or a Hugging Face folder")
    ev.add_argument("--annotations", required=True)
    ev.add_argument("--videos", default=None)
    ev.add_argument("--results", default=None, help="write [{image_id, caption}] here")
    ev.add_argument("--json", action="store_true")
    ev.add_argument("--format", default="auto")
    ev.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)
    _add_decode_options(ev)
    _add_model_options(ev)
    cap = sub.add_parser("caption", help="caption arbitrary videos")
    cap.add_argument("--checkpoint", required=True)
    cap.add_argument("inputs", nargs="+", help="video files or folders")
    cap.add_argument("--json", action="store_true")
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
    p.add_argument("--num-beams", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--min-new-tokens", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--device", default=None,
                   help="where the model runs, e.g. cpu or cuda:1 (default: this rank's GPU when there is one, "
                        "else the CPU)")


def _add_tools(sub) -> None:
    ex = sub.add_parser("export", help="write a checkpoint as a Hugging Face folder")
    ex.add_argument("--checkpoint", required=True)
    ex.add_argument("--out", required=True)
    ex.add_argument("--keep-adapter", action="store_true", help="keep LoRA as a PEFT adapter instead of merging")
    rep = sub.add_parser("report", help="one self-contained HTML page for a run")
    rep.add_argument("run_dir")
    rep.add_argument("--out", default=None)
    plan = sub.add_parser("plan", help="estimate memory per DeepSpeed JSON and recommend one")
    plan.add_argument("--recipe", required=True)
    plan.add_argument("--gpus", type=int, default=1)
    plan.add_argument("--gpu-mem", type=float, default=80.0)
    plan.add_argument("--cpu-mem", type=float, default=256.0)
    plan.add_argument("--json", action="store_true")
    plan.add_argument("overrides", nargs="*")
    imp = sub.add_parser("import-lavis", help="convert a LAVIS BLIP-2 .pth into a Hugging Face folder")
    imp.add_argument("--checkpoint", required=True)
    imp.add_argument("--base", required=True)
    imp.add_argument("--out", required=True)
    imp.add_argument("--lora-r", type=int, default=None, help="LoRA rank (default: read from the factors' shapes)")
    imp.add_argument("--lora-alpha", type=float, default=None,
                     help="LoRA alpha (default: the checkpoint config's model.lora_alpha, else 16)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ds-videocap", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
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
    # With --json, standard output carries the JSON only: libraries' chatter (DeepSpeed's logger,
    # pycocoevalcap's prints) goes to stderr, so `ds-videocap ... --json | jq` works.
    args.json_out = sys.stdout
    quiet = contextlib.redirect_stdout(sys.stderr) if getattr(args, "json", False) else contextlib.nullcontext()
    try:
        with quiet:
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
