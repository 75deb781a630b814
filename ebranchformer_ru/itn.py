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

import logging
import os
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
        except OSError as error:
            raise ITNError(f"--itn_cache_dir {cache}: cannot make the folder ({error.strerror})") from None
        if not (cache / GRAMMAR).is_file() and log is not None:
            log(f"compiling the Russian inverse-normalisation grammars into {cache} (once; a few minutes)")
        for name in ("NeMo-text-processing", "nemo_text_processing"):  # its INFO lines would drown our output
            logging.getLogger(name).setLevel(logging.WARNING)
        self.normalizer = Nemo(lang="ru", cache_dir=str(cache), overwrite_cache=False)
        self.cache_dir = cache

    def __call__(self, text: str) -> str:
        return self.normalizer.inverse_normalize(text, verbose=False) if text.strip() else text
