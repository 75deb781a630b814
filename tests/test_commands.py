"""The one command-line dialect, read from every command's parser and checked by running each command: a usage
error exits 2 with argparse's `usage:` and `error:` lines; a missing input exits 1 with one `error:` line and no
traceback; long options are snake_case; an option that several commands share has one form everywhere."""

import importlib
import re

import pytest
from project import CORPUS

AUDIO = next((CORPUS / "test_opus" / "crowd" / "files").glob("*.opus"))

# command -> the arguments of a run whose input (the model folder, or the data folder for train) is missing.
MISSING_INPUT = {
    "train": ["--data_dir", "{missing}", "--output_dir", "{tmp}/out", "--max_steps", "1"],
    "evaluate": ["{missing}"],
    "transcribe": ["{missing}", str(AUDIO), "--output", "{tmp}/out.jsonl"],
    "serve": ["{missing}", "--port", "1"],
    "export_onnx": ["{missing}", "--output_dir", "{tmp}/out"],
    "convert": ["{missing}", "--output_dir", "{tmp}/out"],
    "average": ["{missing}", "--last", "1"],
    "build_lm": ["{missing}"],
    "tune_lm": ["{missing}"],
    "push": ["{missing}", "--hub_model_id", "user/model"],
}
COMMANDS = sorted(MISSING_INPUT)


def command(name):
    return importlib.import_module(f"ebranchformer_ru.commands.{name}")


def long_options(name) -> dict:
    """--option -> its argparse action, over the command's parser."""
    parser = command(name).build_parser()
    return {s: action for action in parser._actions for s in action.option_strings if s.startswith("--")}


def test_every_command_is_a_console_script():
    from importlib.metadata import entry_points

    scripts = {e.name: e.value for e in entry_points(group="console_scripts") if e.name.startswith("ebranchformer-")}
    assert scripts == {
        f"ebranchformer-{name.replace('_', '-')}": f"ebranchformer_ru.commands.{name}:main" for name in COMMANDS
    }


@pytest.mark.parametrize("name", COMMANDS)
def test_a_usage_error_exits_2_with_usage(name, capsys):
    with pytest.raises(SystemExit) as exit:
        command(name).main(["--no_such_option"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ") and re.search(r"^\S+: error: ", err, flags=re.MULTILINE), err


@pytest.mark.parametrize("name", COMMANDS)
def test_a_missing_input_exits_1_with_one_error_line(name, tmp_path, capsys):
    missing = tmp_path / "no-such-folder"
    argv = [arg.format(missing=missing, tmp=tmp_path) for arg in MISSING_INPUT[name]]
    assert command(name).main(argv) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(missing) in errors[0], err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("name", COMMANDS)
def test_long_options_are_snake_case(name):
    bad = [option for option in long_options(name) if not re.fullmatch(r"--[a-z][a-z0-9]*(_[a-z0-9]+)*", option)]
    assert bad == []


@pytest.mark.parametrize("name", COMMANDS)
def test_the_input_folder_is_the_first_positional_named_model(name):
    positionals = [a for a in command(name).build_parser()._actions if not a.option_strings]
    if name == "train":
        assert positionals == []  # Trainer's way: --data_dir, --output_dir
    elif name == "convert":
        assert positionals[0].dest == "checkpoint"  # a file, not a folder
    else:
        assert positionals[0].dest == "model"


SHARED = [
    "overwrite",
    "trust_remote_code",
    "device",
    "threads",
    "decoder",
    "sets",
    "push_to_hub",
    "hub_model_id",
    "hub_private_repo",
    "hub_revision",
    "debug",
]


def form(action) -> tuple:
    kind = getattr(action.type, "__name__", action.type)
    return type(action).__name__, action.nargs, action.const, tuple(action.choices or ()), kind, action.metavar


@pytest.mark.parametrize("option", SHARED)
def test_a_shared_option_has_one_form(option):
    forms = {}
    for name in COMMANDS:
        action = long_options(name).get(f"--{option}")
        if action is not None and not (name == "train" and option == "debug"):  # TrainingArguments' own --debug
            forms.setdefault(form(action), []).append(name)
    assert len(forms) == 1, forms


def test_the_shared_options_are_where_they_belong():
    has = {name: set(long_options(name)) for name in COMMANDS}
    for name in ("evaluate", "transcribe", "serve", "tune_lm"):
        assert {"--device", "--threads", "--trust_remote_code"} <= has[name], name
    for name in ("evaluate", "transcribe", "serve"):
        assert "--decoder" in has[name], name
    for name in ("export_onnx", "build_lm"):
        assert "--trust_remote_code" in has[name], name
    for name in ("train", "convert", "average", "build_lm", "push"):
        assert {"--hub_model_id", "--hub_private_repo", "--hub_revision"} <= has[name], name
    for name in ("train", "convert", "average", "build_lm", "export_onnx", "transcribe"):
        assert "--overwrite" in has[name], name
    assert "--overwrite_output_dir" not in has["train"] and "--no_lm" not in has["evaluate"]
