"""The code of the README and of docs/*.md, as written: every Python block runs (in a process without FFmpeg),
and every command line of the bash blocks names a file that exists and options that its script accepts."""

import importlib
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from project import CORPUS, ROOT

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README = "\n".join(path.read_text(encoding="utf-8") for path in DOCUMENTS)
# The one substitution: the README's examples point at the real corpus, the tests at the embedded one.
SUBSTITUTIONS = {"/data/golos": str(CORPUS)}


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.S | re.M)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with what the README's Python blocks use: models at outputs/mini and outputs/streaming, and some audio
    files."""
    from modeling_ebranchformer import EBranchformerConfig, EBranchformerForCTC, EBranchformerProcessor

    folder = tmp_path_factory.mktemp("readme")
    model = EBranchformerForCTC(
        EBranchformerConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            cgmlp_intermediate_size=48,
            ffn_intermediate_size=64,
        )
    )
    model.save_pretrained(folder / "outputs" / "mini")
    EBranchformerProcessor().save_pretrained(folder / "outputs" / "mini")
    model.config.update(dict(chunk_convolutions=True, streaming_chunk_size=16, streaming_left_chunks=8))
    model.save_pretrained(folder / "outputs" / "streaming")  # docs/streaming.md's streaming model
    EBranchformerProcessor().save_pretrained(folder / "outputs" / "streaming")
    speech, rate = sf.read(next((CORPUS / "test_opus" / "crowd").rglob("*.opus")), dtype="float32")
    sf.write(folder / "speech.opus", speech, rate, format="OGG", subtype="OPUS")
    sf.write(folder / "speech.wav", speech, rate)
    sf.write(folder / "long.wav", np.tile(speech, 45 // max(1, len(speech) // rate)), rate)  # ~45 s
    return folder


def without_ffmpeg_env(tmp_path):
    """PATH without any folder that holds an ffmpeg executable (the README's default path must not need it)."""
    folders = [p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "ffmpeg").exists()]
    return dict(
        os.environ,
        PATH=os.pathsep.join(folders),
        HF_HUB_OFFLINE="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )


SERVER = "http://127.0.0.1:8000"  # a block that talks to it runs against `serve.py outputs/mini` on a free port


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_block_runs_as_written(index, workdir, tmp_path):
    code = blocks("python")[index]
    for old, new in SUBSTITUTIONS.items():
        code = code.replace(old, new)
    env = without_ffmpeg_env(tmp_path)
    env["HF_DATASETS_CACHE"] = str(tmp_path / "datasets")
    server = None
    if SERVER in code:
        pytest.importorskip("uvicorn")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen(
            [sys.executable, str(ROOT / "serve.py"), "outputs/mini", "--port", str(port)],
            cwd=workdir,
            env=env,
            stderr=subprocess.DEVNULL,
        )
        code = code.replace(SERVER, f"http://127.0.0.1:{port}")
        for _ in range(600):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
    try:
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
        )
    finally:
        if server is not None:
            server.kill()
            server.wait()
    assert result.returncode == 0, f"README python block {index + 1}:\n{code}\n{result.stderr[-3000:]}"


def command_lines() -> list[list[str]]:
    """Each command of the bash blocks as argv, continuation lines joined, comments and the environment
    assignments before the command (`NAME=value command ...`) dropped."""
    lines = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                argv = shlex.split(line)
                while len(argv) > 1 and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", argv[0]):
                    argv.pop(0)
                lines.append(argv)
    return lines


def script_and_options(argv: list[str]):
    """(script path, its options) of a command line, through python, accelerate launch, torchrun, run.sh."""
    if argv[:3] == ["bash", "run.sh", "train"]:
        return ROOT / "train_ctc.py", argv[3:]
    if argv[:3] == ["bash", "run.sh", "test"]:
        return ROOT / "tests", None
    for position, word in enumerate(argv):
        if word.endswith(".py"):
            return ROOT / word, argv[position + 1 :]
    if argv[0].startswith("ebranchformer-"):  # a console script: [project.scripts]
        return (
            ROOT / "ebranchformer_ru" / "commands" / f"{argv[0].removeprefix('ebranchformer-').replace('-', '_')}.py",
            argv[1:],
        )
    if argv[:2] == ["python", "-m"]:
        module = ROOT / Path(*argv[2].split("."))
        return (module / "__main__.py" if module.is_dir() else module.with_suffix(".py")), argv[3:]
    return None, None


def check_launcher(argv: list[str]):
    """The launcher's own options (what comes before the script) parsed by torchrun's or accelerate's parser."""
    position = next((n for n, word in enumerate(argv) if word.endswith(".py")), None)
    if position is None:  # bash run.sh, python -m
        return
    if argv[0] == "torchrun":
        from torch.distributed.run import get_args_parser

        get_args_parser().parse_args(argv[1 : position + 1])
    elif argv[:2] == ["accelerate", "launch"]:
        from accelerate.commands.launch import launch_command_parser

        launch_command_parser().parse_args(argv[2 : position + 1])
    else:
        assert position <= 1 or argv[:2] == ["python", "-m"], f"README command with an unknown launcher: {argv}"


def load(path: Path):
    """The command module of a script (`from ebranchformer_ru.commands.transcribe import main`) or the module itself."""
    if path.parent == ROOT / "ebranchformer_ru" / "commands":
        return importlib.import_module(f"ebranchformer_ru.commands.{path.stem}")
    match = re.search(
        r"^from (ebranchformer_ru\.commands\.\w+) import main$", path.read_text(encoding="utf-8"), flags=re.M
    )
    assert match, f"{path.name} is not a thin command line over a module of ebranchformer_ru.commands"
    return importlib.import_module(match.group(1))


def test_every_command_line_names_a_script_and_options_it_accepts():
    checked = 0
    for argv in command_lines():
        if argv[0] in ("pip", "cd", "git", "export", "curl"):
            continue
        script, options = script_and_options(argv)
        assert script is not None, f"README command not understood by this test: {' '.join(argv)}"
        assert script.exists(), f"README command names {script}, which does not exist: {' '.join(argv)}"
        if options is None or script.parent not in (ROOT, ROOT / "ebranchformer_ru" / "commands"):
            continue  # benchmarks and scripts/: the file exists; their options are their own
        options = [SUBSTITUTIONS.get(o, o) for o in options]
        check_launcher(argv)
        module = load(script)
        if hasattr(module, "parse_args"):  # its own checks after the parser's (train_ctc.py: presets too)
            module.parse_args(options)
        else:
            module.build_parser().parse_args(options)
        checked += 1
    assert checked >= 10
