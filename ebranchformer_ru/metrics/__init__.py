"""WER and CER, computed one way everywhere: corpus-level rates with jiwer (the total of substitutions,
deletions and insertions over all utterances divided by the total number of reference words or characters).

`wer`, `cer` and `word_errors` are what the project's own code calls. The `evaluate` modules "wer" and "cer"
in this folder compute the same (tested equal) for users of `evaluate`: `load_metric("wer")` loads ours by
path, and `evaluate.load("wer")` works offline once you have run, once,

    python -m ebranchformer_ru.metrics install

which places our modules in evaluate's module cache (`$HF_MODULES_CACHE/evaluate_modules/metrics/
evaluate-metric--wer/<hash>/wer.py`), where evaluate looks when the Hub cannot be reached, unless a copy (the
Hub's or ours) is there already. Importing any module of this project never writes there.
"""

import hashlib
import os
import sys
from pathlib import Path

from ebranchformer_ru.errors import Error

FOLDER = Path(__file__).resolve().parent
NAMES = ("wer", "cer")


def wer(references, hypotheses) -> float:
    """Corpus-level word error rate of `hypotheses` against `references` (lists of normalised texts)."""
    import jiwer

    return jiwer.wer(list(references), list(hypotheses))


def cer(references, hypotheses) -> float:
    """Corpus-level character error rate (spaces count as characters, as the Hub's "cer" module counts them)."""
    import jiwer

    return jiwer.cer(list(references), list(hypotheses))


def word_errors(reference: str, hypothesis: str) -> dict:
    """Substitutions, deletions and insertions of one utterance, and its number of reference words."""
    import jiwer

    errors = jiwer.process_words(reference, hypothesis)
    return {
        "substitutions": errors.substitutions,
        "deletions": errors.deletions,
        "insertions": errors.insertions,
        "reference_words": len(reference.split()),
    }


def load_metric(name: str):
    """`evaluate.load` of our module by its path: the same computation as `evaluate.load(name)`, no network."""
    import evaluate

    return evaluate.load(str(FOLDER / name))


def evaluate_modules_cache() -> Path:
    """Where `evaluate` keeps the modules it fetched (the logic of `evaluate.config`, without importing
    evaluate, which takes over a second)."""
    home = os.path.expanduser(
        os.getenv("HF_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "huggingface"))
    )
    return Path(os.getenv("HF_MODULES_CACHE", os.path.join(home, "modules"))) / "evaluate_modules"


def install_offline_modules() -> list[str]:
    """Put our modules where `evaluate.load("wer")` looks when the Hub cannot be reached, unless a copy
    (ours or the Hub's) is there already; returns what it did, one line per module."""
    done = []
    for name in NAMES:
        source = FOLDER / name / f"{name}.py"
        folder = evaluate_modules_cache() / "metrics" / f"evaluate-metric--{name}"
        try:
            if folder.is_dir() and any(len(h.name) == 64 for h in folder.iterdir()):
                done.append(f"{name}: a copy is in {folder} already, left as it is")
                continue
            code = source.read_bytes()
            target = folder / hashlib.sha256(code).hexdigest()
            target.mkdir(parents=True, exist_ok=True)
            for package in (folder.parent.parent, folder.parent, folder, target):
                (package / "__init__.py").touch()
            tmp = target / f".{name}.py.tmp-{os.getpid()}"
            tmp.write_bytes(code)
            os.replace(tmp, target / f"{name}.py")
            done.append(f"{name}: placed in {target}")
        except OSError as error:  # a read-only home, say
            raise Error(f"could not place the {name} module in evaluate's cache ({folder}): {error}") from None
    return done


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m ebranchformer_ru.metrics",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["install"], help="place the wer and cer modules in evaluate's cache")
    parser.parse_args(argv)
    try:
        print("\n".join(install_offline_modules()))
    except Error as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
