"""The corpus generator reproduces the committed corpus (needs Debian's espeak-ng, festival and festvox-ru:
skipped without them; CI installs them)."""

import json
import shutil
import subprocess
import sys

import pytest
from project import CORPUS, ROOT

SPLITS = ("train_opus", "test_opus/crowd", "test_opus/farfield", "test_opus/heldout_voice")


@pytest.mark.skipif(
    not (shutil.which("espeak-ng") and shutil.which("text2wave")),
    reason="espeak-ng and festival (festvox-ru) are not installed",
)
@pytest.mark.slow
def test_the_generator_reproduces_the_committed_corpus(tmp_path):
    out = tmp_path / "golos_mini"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_golos_mini.py"), "--out", str(out), "--limit", "3"],
        check=True,
        capture_output=True,
    )
    for split in SPLITS:
        made = [json.loads(x) for x in (out / split / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
        committed = [
            json.loads(x) for x in (CORPUS / split / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
        ]
        assert len(made) == 3 and made == committed[:3], split
        for line in made:
            assert (out / split / line["audio_filepath"]).read_bytes() == (
                CORPUS / split / line["audio_filepath"]
            ).read_bytes()


@pytest.mark.slow
def test_the_generator_replaces_only_a_corpus_it_made(tmp_path):
    def make(*options):
        return subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "make_golos_mini.py"), *options], capture_output=True, text=True
        )

    golos = tmp_path / "golos"  # a real Golos folder has the same two subfolders
    for sub in ("train_opus", "test_opus"):
        (golos / sub).mkdir(parents=True)
    (golos / "train_opus" / "manifest.jsonl").write_text('{"audio_filepath": "crowd/a.opus", "text": "да"}\n')
    result = make("--out", str(golos))
    assert result.returncode != 0 and "exists: pass --overwrite" in result.stderr
    result = make("--out", str(golos), "--overwrite")
    assert result.returncode != 0 and "is not a corpus made by this script" in result.stderr
    assert (golos / "train_opus" / "manifest.jsonl").read_text().startswith('{"audio_filepath"')
    result = make("--limit", "3")  # would replace the embedded corpus with 3 utterances a split
    assert result.returncode == 2 and "needs an --out other than the embedded corpus" in result.stderr
