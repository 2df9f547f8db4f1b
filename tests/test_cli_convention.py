"""One convention for both command lines (`aubench`, `datasets_tools`): a walk over every parser
and subparser (help text, one spelling per idea, --out, --quiet), and the exit-code table of
docs/reliability.md checked for every subcommand."""
from __future__ import annotations

import argparse
import io
import os
import re
import sys
from pathlib import Path

import pytest

import aubench.cli
import datasets_tools.cli
from datasets_tools import command_line

REPO = Path(__file__).resolve().parents[1]
CLIS = {"aubench": aubench.cli, "datasets_tools": datasets_tools.cli}

# The commands that write a file or folder the user names: they take it as --out.
WRITERS = {("aubench", name) for name in ("train", "evaluate", "predictions", "predict", "ensemble", "bench",
                                          "leaderboard", "plot", "demo")} | \
          {("datasets_tools", "convert"), ("datasets_tools", "synth")}
# The commands that show progress (bars, or a line per epoch or input) while they work: --quiet
# turns it off. The others print their result only (demo's lines are its report).
SHOW_PROGRESS = {("aubench", "train"), ("aubench", "evaluate"), ("aubench", "predict"),
                 ("datasets_tools", "convert"), ("datasets_tools", "verify"), ("datasets_tools", "synth")}
# Earlier spellings, kept working for one release but never shown in the help.
EARLIER_SPELLINGS = {"--no-progress", "--csv", "--output", "--json"}
# Options whose meaning is their own although another command has an option of the same name
# (stats --json prints JSON instead of text; it writes no file).
OWN_MEANING = {("datasets_tools", "stats", "--json")}


def subcommands():
    """(tool, name, subparser, help) for every subcommand of both command lines."""
    found = []
    for tool, module in CLIS.items():
        (sub,) = [a for a in module.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
        helps = {choice.dest: choice.help for choice in sub._choices_actions}
        found += [(tool, name, parser, helps.get(name)) for name, parser in sub.choices.items()]
    return found


def visible_actions(parser):
    return [a for a in parser._actions if a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)]


def spelling(action) -> str:
    """How an option is written (its long form), or a positional argument's name."""
    return next((s for s in action.option_strings if s.startswith("--")), action.dest) if action.option_strings \
        else action.dest


SUBCOMMANDS = subcommands()
IDS = [f"{tool} {name}" for tool, name, _, _ in SUBCOMMANDS]


def test_both_command_lines_have_their_subcommands():
    names = {(tool, name) for tool, name, _, _ in SUBCOMMANDS}
    assert WRITERS <= names and SHOW_PROGRESS <= names
    assert {("aubench", "plot"), ("datasets_tools", "convert")} <= names


@pytest.mark.parametrize("tool, name, parser, help", SUBCOMMANDS, ids=IDS)
def test_every_subcommand_and_option_has_help(tool, name, parser, help):
    assert help and help.strip(), f"{tool} {name} has no help text"
    missing = [spelling(a) for a in visible_actions(parser) if not (a.help and a.help.strip())]
    assert not missing, f"{tool} {name}: options without help text: {missing}"


def test_one_spelling_per_setting_across_subcommands_and_tools():
    spellings: dict[str, set[str]] = {}
    for tool, name, parser, _ in SUBCOMMANDS:
        for action in visible_actions(parser):
            if action.option_strings and (tool, name, spelling(action)) not in OWN_MEANING:
                spellings.setdefault(action.dest, set()).add(spelling(action))
    differ = {dest: sorted(names) for dest, names in spellings.items() if len(names) > 1}
    assert not differ, f"one setting, several spellings: {differ}"


@pytest.mark.parametrize("tool, name, parser, help", SUBCOMMANDS, ids=IDS)
def test_earlier_spellings_are_hidden_and_outputs_are_out(tool, name, parser, help):
    shown = {s for a in visible_actions(parser) for s in a.option_strings}
    assert not shown & EARLIER_SPELLINGS - {s for t, n, s in OWN_MEANING if (t, n) == (tool, name)}, shown
    # whatever the command writes is --out, never a positional argument or another name
    outputs = [spelling(a) for a in visible_actions(parser)
               if a.dest in {"out", "output", "out_root", "out_dir", "csv"} or a.dest.startswith("out_")]
    assert all(s == "--out" for s in outputs), outputs
    assert ("--out" in shown) == ((tool, name) in WRITERS), f"{tool} {name}: --out {'missing' if (tool, name) in WRITERS else 'unexpected'}"


@pytest.mark.parametrize("tool, name, parser, help", SUBCOMMANDS, ids=IDS)
def test_quiet_where_a_command_shows_progress(tool, name, parser, help):
    quiet = [a for a in parser._actions if a.dest == "quiet"]
    if (tool, name) not in SHOW_PROGRESS:
        assert not quiet, f"{tool} {name} shows no progress; --quiet would do nothing"
        return
    assert [spelling(a) for a in quiet if a.help != argparse.SUPPRESS] == ["--quiet"]
    hidden = {s for a in quiet if a.help == argparse.SUPPRESS for s in a.option_strings}
    assert hidden == {"--no-progress"}  # the earlier spelling, one release more
    command = [name, *REQUIRED.get((tool, name), [])]
    assert parser.prog.endswith(name)
    for flag, expected in (([], False), (["--quiet"], True), (["--no-progress"], True)):
        args = CLIS[tool].build_parser().parse_args(command + flag)
        assert args.quiet is expected


# just enough arguments to parse each command line (not to run it)
REQUIRED = {("aubench", "train"): ["--method", "resnet", "--data", "d.h5"],
            ("aubench", "evaluate"): ["--methods", "resnet", "--data", "d.h5", "--out", "o"],
            ("aubench", "predictions"): ["r.json", "--out", "p.csv"],
            ("aubench", "predict"): ["v.mp4", "--run", "r", "--out", "o"],
            ("aubench", "smooth"): ["runs", "--smooth", "gaussian:5:1.0"],
            ("aubench", "ensemble"): ["a", "b", "--name", "e", "--out", "o"],
            ("aubench", "leaderboard"): ["runs"],
            ("aubench", "plot"): ["run"],
            ("datasets_tools", "convert"): ["bp4d", "raw", "--out", "o.h5"],
            ("datasets_tools", "synth"): ["--layout", "bp4d", "--out", "raw"],
            ("datasets_tools", "verify"): ["f.h5"],
            ("datasets_tools", "stats"): ["f.h5"],
            ("datasets_tools", "info"): ["f.h5"]}


def test_required_arguments_are_known_for_every_subcommand():
    for tool, name, _, _ in SUBCOMMANDS:
        args = CLIS[tool].build_parser().parse_args([name, *REQUIRED.get((tool, name), [])])
        assert args.command == name


def test_quiet_turns_off_bars_and_epoch_lines():
    args = aubench.cli.build_parser().parse_args(["train", "--method", "resnet", "--data", "d.h5", "--quiet"])
    assert aubench.cli._run_config(args, "resnet", 1, 1.0, "o").progress is False  # the trainer's bars and lines
    args = aubench.cli.build_parser().parse_args(["train", "--method", "resnet", "--data", "d.h5"])
    assert aubench.cli._run_config(args, "resnet", 1, 1.0, "o").progress is True


@pytest.mark.parametrize("argv, out", [
    (["datasets_tools", "convert", "bp4d", "raw", "o.h5"], "o.h5"),            # the earlier positional OUT
    (["datasets_tools", "convert", "bp4d", "raw", "--out", "o.h5"], "o.h5"),
    (["datasets_tools", "synth", "--layout", "bp4d", "raw"], "raw"),
    (["aubench", "predictions", "r.json", "--csv", "p.csv"], "p.csv"),
    (["aubench", "leaderboard", "runs", "--output", "t.md"], "t.md"),
    (["aubench", "bench", "--json", "b.json"], "b.json"),
    (["aubench", "plot", "run"], None),
])
def test_earlier_spellings_of_out_still_work(argv, out):
    args = CLIS[argv[0]].build_parser().parse_args(argv[1:])
    assert args.out == (None if out is None else type(args.out)(out))
    assert not hasattr(args, "out_positional") and not hasattr(args, "out_root")


def run_main(tool, argv, capsys) -> tuple[int, list[str]]:
    """Exit code and stderr lines of one in-process run (a usage error exits through SystemExit
    in datasets_tools)."""
    try:
        code = CLIS[tool].main(argv)
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, [line for line in err.splitlines() if line.strip()]


def one_error_line(tool, name, lines):
    # argparse reports arguments no subcommand knows as the whole tool's: "datasets_tools: error: ..."
    prefixes = ("aubench: error: ",) if tool == "aubench" else (f"datasets_tools {name}: error: ",
                                                               "datasets_tools: error: ")
    assert len(lines) == 1 and lines[0].startswith(prefixes), lines
    return lines[0]


@pytest.mark.parametrize("tool, name, parser, help", SUBCOMMANDS, ids=IDS)
def test_a_bad_argument_is_a_usage_error_of_one_line(tool, name, parser, help, capsys):
    code, lines = run_main(tool, [name, *REQUIRED.get((tool, name), []), "--no-such-option"], capsys)
    assert code == command_line.EXIT_USER_ERROR
    assert "--no-such-option" in one_error_line(tool, name, lines)


def bad_input_cases(tmp: Path) -> dict[tuple[str, str], tuple[list[str], str]]:
    """Per subcommand: a command line with a bad input (missing, or refused) and a fragment of the
    error line it gives."""
    missing = tmp / "missing.h5"
    return {
        ("aubench", "train"): (["--method", "resnet", "--data", str(missing), "--out", str(tmp / "r")], "no such file"),
        ("aubench", "evaluate"): (["--methods", "resnet", "--data", str(missing), "--out", str(tmp / "r")],
                                  "no such file"),
        ("aubench", "predictions"): ([str(tmp / "nope.json"), "--out", str(tmp / "p.csv")], "nope.json"),
        ("aubench", "predict"): ([str(tmp / "nope.mp4"), "--run", str(tmp / "r"), "--out", str(tmp / "p")], ""),
        ("aubench", "smooth"): ([str(tmp / "nowhere"), "--smooth", "gaussian:5:1.0"], "nowhere"),
        ("aubench", "ensemble"): ([str(tmp / "a"), str(tmp / "b"), "--name", "e", "--out", str(tmp / "e")], str(tmp)),
        ("aubench", "bench"): (["--methods", "resnet", "--preset", "nope"], "no preset 'nope'"),
        ("aubench", "leaderboard"): ([str(tmp / "nowhere")], "no such run directory"),
        ("aubench", "methods"): (["extra"], "unrecognized arguments: extra"),
        ("aubench", "plot"): ([str(tmp / "nowhere")], "nowhere"),
        ("aubench", "demo"): (["--seed", "-1"], "--seed"),
        ("datasets_tools", "convert"): (["bp4d", str(tmp / "nowhere"), "--out", str(tmp / "o.h5")], "nowhere"),
        ("datasets_tools", "synth"): (["--layout", "bp4d", "--out", str(tmp / "raw"), "--frame-size", "3x3"], "3x3"),
        ("datasets_tools", "verify"): ([str(missing)], "no such file"),
        ("datasets_tools", "stats"): ([str(missing)], "missing.h5"),
        ("datasets_tools", "info"): ([str(missing)], "missing.h5"),
    }


def test_bad_input_cases_cover_every_subcommand(tmp_path):
    assert set(bad_input_cases(tmp_path)) == {(tool, name) for tool, name, _, _ in SUBCOMMANDS}


@pytest.mark.parametrize("tool, name", [(tool, name) for tool, name, _, _ in SUBCOMMANDS], ids=IDS)
def test_bad_input_is_a_user_error_of_one_line(tool, name, capsys, tmp_path):
    argv, fragment = bad_input_cases(tmp_path)[(tool, name)]
    code, lines = run_main(tool, [name, *argv], capsys)
    assert code == command_line.EXIT_USER_ERROR
    assert fragment in one_error_line(tool, name, lines)


@pytest.mark.parametrize("raised, code, said", [
    (KeyboardInterrupt, command_line.EXIT_INTERRUPTED, ["interrupted"]),
    (BrokenPipeError, command_line.EXIT_BROKEN_PIPE, []),
])
@pytest.mark.parametrize("tool", CLIS)
def test_interrupted_and_closed_output(tool, raised, code, said, monkeypatch, capsys):
    def stop(args):
        raise raised()

    if tool == "aubench":
        monkeypatch.setitem(aubench.cli.COMMANDS, "methods", stop)
        argv = ["methods"]
    else:
        monkeypatch.setattr(datasets_tools.cli, "_run_info", stop)
        argv = ["info", "f.h5"]
    # the closed-pipe path points the process's stdout at /dev/null: keep pytest's
    monkeypatch.setattr(os, "dup2", lambda *a: None)
    monkeypatch.setattr(sys, "stdout", type("Out", (io.StringIO,), {"fileno": lambda self: 1})())
    got, lines = run_main(tool, argv, capsys)
    assert got == code
    assert [line.split(": ")[-1] for line in lines] == said


def test_training_stopped_has_its_code(monkeypatch, capsys):
    from aubench.errors import TrainingStopped

    def stop(args):
        raise TrainingStopped("the loss is not finite at step 3")

    monkeypatch.setitem(aubench.cli.COMMANDS, "methods", stop)
    code, lines = run_main("aubench", ["methods"], capsys)
    assert code == command_line.EXIT_STOPPED == TrainingStopped.exit_code
    assert lines == ["aubench: error: the loss is not finite at step 3"]


def test_the_documented_table_is_the_one_the_command_lines_use():
    from aubench.errors import UserError

    text = (REPO / "docs" / "reliability.md").read_text()
    section = text[text.index("## Exit codes"):]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", section, re.M)}
    used = {value for key, value in vars(command_line).items() if key.startswith("EXIT_")}
    assert documented == used
    assert UserError.exit_code == command_line.EXIT_USER_ERROR
