"""The `evaluate` modules "wer" and "cer", shipped with the package so that `evaluate.load("wer")` works
offline and gives what the Hub's modules give (corpus-level rates computed with jiwer).

`evaluate.load("wer")` looks for the Hub's module first; offline it falls back to the newest copy in its
module cache (`$HF_MODULES_CACHE/evaluate_modules/metrics/evaluate-metric--wer/<hash>/wer.py`). Importing
`modeling_ebranchformer` places our modules there when no copy is cached yet, so the call users type
works offline; online, or where the Hub's module is cached already, evaluate uses the Hub's, unchanged.
"""

import hashlib
import logging
import os
from pathlib import Path

FOLDER = Path(__file__).resolve().parent
NAMES = ("wer", "cer")
logger = logging.getLogger(__name__)


def load_metric(name: str):
    """`evaluate.load` of our module by its path: the same computation as `evaluate.load(name)`, no network."""
    import evaluate

    return evaluate.load(str(FOLDER / name))


def evaluate_modules_cache() -> Path:
    """Where `evaluate` keeps the modules it fetched (the logic of `evaluate.config`, without importing
    evaluate, which takes over a second)."""
    home = os.path.expanduser(os.getenv("HF_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "huggingface")))
    return Path(os.getenv("HF_MODULES_CACHE", os.path.join(home, "modules"))) / "evaluate_modules"


def install_offline_modules() -> None:
    """Put our modules where `evaluate.load("wer")` looks when the Hub cannot be reached, unless a copy
    (ours or the Hub's) is there already. Never raises: without it, only the offline fallback is missing."""
    for name in NAMES:
        source = FOLDER / name / f"{name}.py"
        folder = evaluate_modules_cache() / "metrics" / f"evaluate-metric--{name}"
        try:
            if folder.is_dir() and any(len(h.name) == 64 for h in folder.iterdir()):
                continue
            code = source.read_bytes()
            target = folder / hashlib.sha256(code).hexdigest()
            target.mkdir(parents=True, exist_ok=True)
            for package in (folder.parent.parent, folder.parent, folder, target):
                (package / "__init__.py").touch()
            tmp = target / f".{name}.py.tmp-{os.getpid()}"
            tmp.write_bytes(code)
            os.replace(tmp, target / f"{name}.py")
        except OSError as error:  # a read-only home, say
            logger.debug("could not place the %s module in evaluate's cache: %s", name, error)
