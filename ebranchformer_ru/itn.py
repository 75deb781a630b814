"""Inverse text normalisation for Russian: numbers, dates, money and measures as digits ("двадцать третьего мая
две тысячи двадцать шестого года" -> "23.05.2026г."), with the Russian grammars of `nemo-text-processing` (the `itn`
extra: `pip install 'ebranchformer-ru[itn]'`). It runs after decoding, on the text only: word times keep the spoken
words, and outputs keep the spoken text beside the normalised one.

    from ebranchformer_ru.itn import InverseNormalizer
    itn = InverseNormalizer()                     # grammars compiled once (minutes) into the cache folder, then read
    itn("у меня сто двадцать три рубля")          # "у меня 123 руб."

The compiled grammars (about 60 MB) go to `cache_dir`: default `$EBRANCHFORMER_ITN_CACHE`, else
`~/.cache/ebranchformer_ru/itn`.
"""

import fcntl
import logging
import os
import tempfile
import threading
from pathlib import Path

from .errors import Error

GRAMMAR = "ru_itn_lower_cased.far"  # what nemo-text-processing writes into the cache folder for Russian


class ITNError(Error, RuntimeError):
    """The inverse normaliser cannot be used (its extra is not installed, its cache folder is not writable)."""


def default_cache_dir() -> Path:
    given = os.environ.get("EBRANCHFORMER_ITN_CACHE")
    return Path(given) if given else Path.home() / ".cache" / "ebranchformer_ru" / "itn"


class InverseNormalizer:
    """`itn(text)`: `text` with numbers and the like written as digits."""

    def __init__(self, cache_dir=None, log=None):
        try:
            from nemo_text_processing.inverse_text_normalization.inverse_normalize import InverseNormalizer as Nemo
        except ImportError as error:
            raise ITNError(
                f"--itn needs the itn extra, which is not installed ({error.name} is missing): "
                "pip install 'ebranchformer-ru[itn]' (nemo-text-processing and pynini)"
            ) from None
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        try:
            cache.mkdir(parents=True, exist_ok=True)
            lock = open(cache / ".lock", "a")
        except OSError as error:
            raise ITNError(f"--itn_cache_dir {cache}: cannot make or write the folder ({error.strerror})") from None
        for name in ("NeMo-text-processing", "nemo_text_processing"):  # its INFO lines would drown our output
            logging.getLogger(name).setLevel(logging.WARNING)
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # several processes (torchrun): one compiles, the others wait and read
            if not (cache / GRAMMAR).is_file():
                if log is not None:
                    log(f"compiling the Russian inverse-normalisation grammars into {cache} (once; a few minutes)")
                _compile(Nemo, cache)
            try:
                self.normalizer = Nemo(lang="ru", cache_dir=str(cache), overwrite_cache=False)
            except OSError as error:  # pynini's FstIOError: a damaged file
                raise ITNError(
                    f"--itn_cache_dir {cache}: the compiled grammars cannot be read ({error}); delete "
                    f"{cache / GRAMMAR} to compile them again"
                ) from None
        self.cache_dir = cache
        self.lock = threading.Lock()  # NeMo's parser keeps its state on the normaliser: one text at a time

    def __call__(self, text: str) -> str:
        if not text.strip():
            return text
        with self.lock:
            return self.normalizer.inverse_normalize(text, verbose=False)


def _compile(nemo, cache: Path):
    """The grammars compiled in a folder of their own, then moved into `cache`: a run killed while compiling leaves
    no half-written file there."""
    with tempfile.TemporaryDirectory(dir=cache, prefix=".compiling-") as work:
        nemo(lang="ru", cache_dir=work, overwrite_cache=False)
        for path in Path(work).glob("*.far"):
            os.replace(path, cache / path.name)
