"""The layers of pyproject.toml's import-linter contracts (model <- base <- data <- jobs <- commands; the model
package imports nothing of ours; no command imports another) hold, and `lint-imports` does catch a reverse import."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from project import ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` over the packages and pyproject.toml found in `root` (it puts the working folder first on
    the import path, so a copy is analysed, not the installed package)."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(root / "pyproject.toml")],
        check=False,
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_layers_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Contracts: 3 kept, 0 broken." in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("ebranchformer_ru/audio.py", "from ebranchformer_ru import transcription", "model <- base <- data"),
        ("ebranchformer_ru/golos/selection.py", "from ebranchformer_ru import inference", "model <- base <- data"),
        ("ebranchformer_ru/inference.py", "from ebranchformer_ru.commands import cli", "model <- base <- data"),
        ("modeling_ebranchformer/text.py", "import ebranchformer_ru.audio", "the model package imports no module"),
        ("ebranchformer_ru/commands/train.py", "from . import transcribe", "no command imports another"),
    ],
)
def test_a_reverse_import_breaks_a_contract(tmp_path, module, line, broken):
    """One import against the layers, added to a copy of the tree, makes `lint-imports` fail naming the contract."""
    for package in ("ebranchformer_ru", "modeling_ebranchformer"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("golos_mini", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    assert lint_imports(tmp_path).returncode == 0
    path = tmp_path / module
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}  # against the layers\n", encoding="utf-8")
    result = lint_imports(tmp_path)
    assert result.returncode == 1
    assert f"{broken}" in result.stdout and "BROKEN" in result.stdout, result.stdout[-3000:]
