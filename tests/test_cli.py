"""The command line itself: every bad value is one usage line naming the option (exit 2), every option
has help text with its default, `--version`, and a top-level help written for users."""
import argparse
import json
from types import SimpleNamespace

import pytest

from ds_videocap import __version__
from ds_videocap.cli import build_parser, main
from ds_videocap.errors import UserError
from ds_videocap.recipe_io import load_recipe


@pytest.mark.parametrize("argv,option", [
    (["caption", "--checkpoint", "x", "--num-beams", "0", "v.mp4"], "--num-beams"),
    (["caption", "--checkpoint", "x", "--batch-size", "0", "v.mp4"], "--batch-size"),
    (["caption", "--checkpoint", "x", "--frames", "0", "v.mp4"], "--frames"),
    (["caption", "--checkpoint", "x", "--max-new-tokens", "0", "v.mp4"], "--max-new-tokens"),
    (["caption", "--checkpoint", "x", "--min-new-tokens", "-1", "v.mp4"], "--min-new-tokens"),
    (["eval", "--checkpoint", "x", "--annotations", "a.json", "--num-beams", "zero"], "--num-beams"),
    (["eval", "--checkpoint", "x", "--annotations", "a.json", "--format", "coco"], "--format"),
    (["data", "check", "a.json", "--frames", "0"], "--frames"),
    (["data", "synth", "--out", "d", "--videos", "0"], "--videos"),
    (["plan", "--recipe", "synth", "--gpus", "0"], "--gpus"),
    (["plan", "--recipe", "synth", "--gpu-mem", "-3"], "--gpu-mem"),
])
def test_bad_value_is_one_usage_line_naming_the_option(argv, option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"argument {option}" in errors[0], err
    assert "Traceback" not in err


def test_min_new_tokens_above_max_is_refused_naming_both():
    from ds_videocap.evaluate import _eval_cfg

    cfg = load_recipe("synth")
    args = SimpleNamespace(num_beams=None, max_new_tokens=4, min_new_tokens=5, batch_size=None)
    with pytest.raises(UserError, match=r"--min-new-tokens \(5\) must be <= --max-new-tokens \(4\)"):
        _eval_cfg(cfg, args)
    args.min_new_tokens = 4
    assert _eval_cfg(cfg, args).max_new_tokens == 4


def test_nothing_to_train_is_refused_before_distributed_init(tmp_path, capsys):
    """ce.steps=0 scst.steps=0 used to pass the checks and die in a StopIteration after dist init."""
    (tmp_path / "videos").mkdir()
    train = tmp_path / "train.json"
    train.write_text(json.dumps([{"video": f"v{i}.mp4", "caption": "a dog"} for i in range(4)]))
    code = main(["train", "--recipe", "synth", "--deepspeed", "ds_configs/zero0.json", "synth_dir=null",
                 f"data.train={train}", f"data.videos={tmp_path / 'videos'}", f"output_dir={tmp_path / 'run'}",
                 "ce.steps=0", "scst.steps=0"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'ce.steps' and 'scst.steps' are both 0" in err[0], err
    import torch.distributed as dist
    assert not dist.is_initialized()


def _all_parsers(parser):
    yield parser.prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def test_every_option_has_help_and_shows_its_default():
    parsers = dict(_all_parsers(build_parser()))
    assert {"ds-videocap caption", "ds-videocap eval", "ds-videocap data check", "ds-videocap plan",
            "ds-videocap import-lavis"} <= set(parsers)
    for prog, parser in parsers.items():
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{prog} {action.option_strings or action.dest} has no help text"
        text = parser.format_help()
        for action in parser._actions:
            # a real default is shown; a None default is explained in the help text itself
            shown = action.help != argparse.SUPPRESS and action.default not in (None, False, argparse.SUPPRESS)
            if action.option_strings and shown:
                assert f"default: {action.default}" in " ".join(text.split()), (prog, action.dest)
    caption = " ".join(parsers["ds-videocap caption"].format_help().split())
    assert "beam search width (default: the run's recipe, else 5)" in caption
    assert "(default: 8)" in " ".join(parsers["ds-videocap data check"].format_help().split())


def test_version_and_a_top_level_help_for_users(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"ds-videocap {__version__}"
    text = build_parser().format_help()
    assert "Caption videos" in text and "launch/train.sh" in text
    assert "handler" not in text and "import" not in text.split("commands:")[0]  # no internals
