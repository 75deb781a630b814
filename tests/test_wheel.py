"""The product as a user installs it: the wheel built from this tree, installed without `-e` into a fresh virtual
environment, used from a folder outside the checkout (presets, the embedded corpus and the server's page found
as package data, every command a console script)."""

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from project import CORPUS, ROOT

pytestmark = pytest.mark.slow  # builds a wheel, trains, transcribes and evaluates in fresh processes

COMMANDS = [
    "train",
    "evaluate",
    "transcribe",
    "serve",
    "export-onnx",
    "convert",
    "average",
    "build-lm",
    "tune-lm",
    "push",
]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of a clean copy of the tree: setuptools reuses a checkout's build/ and *.egg-info, which could
    hold files that the package data no longer names."""
    source, out = tmp_path_factory.mktemp("source") / "tree", tmp_path_factory.mktemp("wheel")
    leftovers = shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "outputs", "__pycache__", ".pytest_cache"
    )
    shutil.copytree(ROOT, source, ignore=leftovers)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (built,) = out.glob("ebranchformer_ru-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> dict:
    """A fresh venv holding the wheel; its dependencies come from the test environment (a .pth file), so nothing
    is downloaded. Returns the environment in which its commands run."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (packages,) = venv.glob("lib/python*/site-packages")
    (packages / "test-environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    home = tmp_path_factory.mktemp("home")
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(home),
        "HF_HOME": str(home / "hf"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }
    return {"venv": venv, "env": env, "work": tmp_path_factory.mktemp("work")}


def run(installed, *argv, timeout=900) -> subprocess.CompletedProcess:
    result = subprocess.run(
        list(argv),
        check=False,
        cwd=installed["work"],
        env=installed["env"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def test_the_wheel_installs_two_import_names_of_ours(wheel):
    with zipfile.ZipFile(wheel) as archive:
        (record,) = [name for name in archive.namelist() if name.endswith(".dist-info/RECORD")]
        paths = [line.split(",")[0] for line in archive.read(record).decode().splitlines()]
    top = {path.split("/")[0] for path in paths if not path.split("/")[0].endswith(".dist-info")}
    assert top == {"ebranchformer_ru", "modeling_ebranchformer"}
    data = {path for path in paths if not path.endswith(".py")}
    assert "ebranchformer_ru/presets/mini.yaml" in data and "ebranchformer_ru/serving_page.html" in data
    corpus = {p.relative_to(ROOT).as_posix() for p in CORPUS.rglob("*") if p.is_file()}
    assert corpus and corpus <= data  # every file of the embedded corpus


def test_the_installed_package_is_the_wheel_not_the_checkout(installed):
    code = "import ebranchformer_ru, modeling_ebranchformer; print(ebranchformer_ru.__file__, modeling_ebranchformer.__file__)"
    result = run(installed, "python", "-c", code)
    assert all(path.startswith(str(installed["venv"])) for path in result.stdout.split())


@pytest.mark.parametrize("name", COMMANDS)
def test_every_console_command_helps(installed, name):
    result = run(installed, f"ebranchformer-{name}", "--help", timeout=300)
    assert result.stdout.startswith(f"usage: ebranchformer-{name}")


def test_train_transcribe_and_evaluate_from_another_folder(installed):
    """Two steps of training with the default preset on the embedded corpus, then the model transcribes and is
    evaluated: presets and corpus come from the installed package."""
    run(installed, "ebranchformer-train", "--output_dir", "model", "--max_steps", "2", "--do_eval", "false")
    assert (installed["work"] / "model" / "model.safetensors").is_file()
    audio = sorted((CORPUS / "test_opus" / "crowd" / "files").glob("*.opus"))[:2]
    run(installed, "ebranchformer-transcribe", "model", *map(str, audio), "--output", "out.jsonl")
    records = [json.loads(line) for line in (installed["work"] / "out.jsonl").read_text().splitlines()]
    assert [r["path"] for r in records] == [str(a) for a in audio]
    run(installed, "ebranchformer-evaluate", "model", "--sets", "crowd", "--max_samples", "4", "--decoder", "greedy")
    results = json.loads((installed["work"] / "model" / "eval" / "results.json").read_text())
    assert "crowd" in json.dumps(results)
