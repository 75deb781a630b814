"""Add a word n-gram language model to a model folder, for beam-search decoding (`ebranchformer-build-lm`,
`ebranchformer_ru.commands.build_lm`): `build`.

From the train transcripts of a Golos-layout folder (default: the embedded corpus's), from text files (one
sentence a line), or an existing ARPA model (a KenLM binary needs the kenlm module).

Text is normalised exactly as the tokenizer normalises training text (lower case, ё -> е, whitespace
collapsed). A text file line with characters outside the model's alphabet is an error naming the file and
line; manifest utterances with such characters are left out and counted, as training leaves them out.
The model is interpolated Kneser-Ney (see `modeling_ebranchformer/ngram.py`), written as ARPA.

The folder gets the layout of Transformers' `Wav2Vec2ProcessorWithLM`: `alphabet.json`,
`language_model/{lm.arpa, attrs.json (alpha, beta, ...), unigrams.txt}`, and a processor config naming
`EBranchformerProcessorWithLM` (with its code, for `trust_remote_code`). The whole folder is replaced
atomically; an existing language model is replaced only with `overwrite`. Then `AutoProcessor` gives the
processor with the LM and `pipeline("automatic-speech-recognition", model=MODEL)` decodes with it.
Tune alpha and beta with `ebranchformer-tune-lm MODEL`.
"""

import os
import shutil
import sys
import unicodedata
from pathlib import Path

from ebranchformer_ru.files import write_folder_atomically
from ebranchformer_ru.golos import EMBEDDED_CORPUS
from ebranchformer_ru.golos.golos import DOMAINS, split_manifests
from ebranchformer_ru.manifest import read_manifest
from modeling_ebranchformer.beam_search import (
    ALPHA_RANGE,
    ALPHABET_FILE,
    BETA_RANGE,
    DEFAULT_ALPHA,
    DEFAULT_BETA,
    LM_DIR,
    CTCBeamSearchDecoder,
    check_range,
    tokenizer_labels,
)
from modeling_ebranchformer.ngram import BOS, EOS, UNK, LanguageModelError, build_arpa, load_language_model
from modeling_ebranchformer.processing_lm import EBranchformerProcessorWithLM
from modeling_ebranchformer.tokenization import normalize_text

from .errors import Error, UsageError


class TextError(Error, ValueError):
    pass


def without_punctuation(text: str) -> str:
    """Punctuation and symbols as spaces, then the tokenizer's normalisation: real text has commas, dashes and
    quotes everywhere, and a transcript has none of them."""
    return normalize_text("".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text))


def read_text_file(path, characters) -> list:
    """Sentences (lists of words) of a text file, one a line, punctuation removed; raises naming the file and
    line of a letter (or digit) outside the alphabet."""
    if Path(path).is_dir():
        raise TextError(f"--text {path} is a folder; give text files (one sentence a line)")
    sentences = []
    try:
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                text = without_punctuation(line)
                if not text:
                    continue
                unknown = sorted({c for c in text if c not in characters and c != " "})
                if unknown:
                    raise TextError(
                        f"{path}, line {number}: characters {unknown} are outside the model's alphabet "
                        f"(after normalisation: {text[:80]!r}); spell numbers out, remove or "
                        "transliterate the rest"
                    )
                sentences.append(text.split())
    except UnicodeDecodeError as error:
        raise TextError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    except FileNotFoundError:
        raise TextError(f"text file not found: {path}") from None
    return sentences


def read_manifests(data_dir, characters) -> tuple:
    """Sentences of the train manifest of a Golos-layout folder, and how many utterances were left out."""
    manifests = split_manifests(str(data_dir), "train", DOMAINS["all"])
    sentences, skipped = [], 0
    for manifest in manifests:
        if not os.path.isfile(manifest):
            raise TextError(
                f"no train manifest {manifest} (a Golos-layout folder has train_opus/manifest.jsonl); "
                "give --text files instead"
            )
        for number, entry in read_manifest(manifest):
            text = entry.get("text")
            if not isinstance(text, str):
                raise TextError(f"{manifest}, line {number}: no 'text' string")
            text = normalize_text(text)
            if any(c not in characters and c != " " for c in text):
                skipped += 1
                continue
            if text:
                sentences.append(text.split())
    return sentences, skipped


def check_language_model_words(model, characters, path):
    """Words of an existing LM that the model cannot spell are never decoded; say how many; refuse if all."""
    words = [w for w in model.vocabulary if w not in (BOS, EOS, UNK)]
    foreign = [w for w in words if any(c not in characters for c in w)]
    if words and len(foreign) == len(words):
        raise LanguageModelError(
            f"{path}: none of its {len(words)} words can be spelt with the model's alphabet "
            f"(e.g. {foreign[:5]}); is it a language model for this language and normalisation?"
        )
    if foreign:
        print(
            f"warning: {len(foreign)} of {len(words)} words of {path} have characters outside the model's alphabet "
            f"and can never be decoded, e.g. {sorted(foreign)[:5]}",
            file=sys.stderr,
        )


def _copy_folder(source: Path, target: Path):
    """Everything of the model folder except an earlier LM; hard links where possible (checkpoints are large).
    A symbolic link stays a link: followed, it would put the file it names (a key of ~/.ssh, /proc/self/environ)
    into the folder as a file of its own, which publishing then could not tell from the model's."""
    for item in source.iterdir():
        if item.name in (LM_DIR, ALPHABET_FILE):
            continue
        destination = target / item.name
        if item.is_symlink():
            os.symlink(os.readlink(item), destination)
        elif item.is_dir():
            shutil.copytree(item, destination, copy_function=_link_or_copy, symlinks=True)
        else:
            _link_or_copy(item, destination)


def _link_or_copy(source, destination):
    try:
        os.link(source, destination, follow_symlinks=False)
    except OSError:
        shutil.copy2(source, destination, follow_symlinks=False)
    return destination


def collect_sentences(data_dir, texts, characters, summary: dict) -> list:
    """Sentences of the `texts` files and of the train manifest of `data_dir` (the embedded corpus's when neither
    is given); what each gave goes into `summary`."""
    sentences = []
    for path in texts:
        found = read_text_file(path, characters)
        if not found:
            raise TextError(f"--text {path}: no sentence in it (empty, or punctuation only)")
        summary[f"text {path}"] = f"{len(found)} sentences"
        sentences += found
    if data_dir is not None or not texts:
        source = Path(data_dir) if data_dir is not None else EMBEDDED_CORPUS
        found, skipped = read_manifests(source, characters)
        summary[f"train manifest of {source}"] = f"{len(found)} sentences, {skipped} left out (characters)"
        sentences += found
    if not sentences:
        raise TextError("no sentences to build a language model from")
    return sentences


def check_build_options(model_dir: Path, order, alpha, beta, overwrite):
    """Refuses, before any work, a missing folder, an LM that would be replaced unasked, and options out of range."""
    if not model_dir.is_dir():
        raise Error(f"model folder not found: {model_dir}")
    if (model_dir / LM_DIR).exists() and not overwrite:
        raise Error(f"{model_dir / LM_DIR} exists; pass --overwrite to replace the language model")
    try:
        check_range("alpha", alpha, *ALPHA_RANGE)
        check_range("beta", beta, *BETA_RANGE)
    except LanguageModelError as error:
        raise UsageError(str(error)) from None
    if not isinstance(order, int) or not 1 <= order <= 10:
        raise UsageError(f"--order must be between 1 and 10, got {order}")


def build(
    model_dir,
    data_dir=None,
    texts=(),
    order=3,
    arpa=None,
    alpha=None,
    beta=None,
    overwrite=False,
    trust_remote_code=False,
) -> dict:
    """Writes the language model into `model_dir` (see the module's docstring); returns what was built (also
    printed). `arpa` is used as it is; otherwise an n-gram of `order` is built from the `texts` files and the
    train manifest of `data_dir` (default: the embedded corpus's, unless `texts` are given)."""
    model_dir = Path(model_dir)
    check_build_options(model_dir, order, alpha, beta, overwrite)
    from modeling_ebranchformer import EBranchformerProcessor

    try:  # the plain processor: an LM being replaced is not read (it may be the broken thing being replaced)
        processor = EBranchformerProcessor.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise Error(f"{model_dir}: cannot load the model's processor ({error})") from None
    labels = tokenizer_labels(processor.tokenizer)
    characters = set(labels) - {"", " "}
    summary = {"model": str(model_dir)}
    try:
        if arpa is None:
            arpa_text = build_arpa(collect_sentences(data_dir, texts, characters, summary), order)
        else:
            model = load_language_model(arpa)
            check_language_model_words(model, characters, arpa)
    except (TextError, LanguageModelError) as error:
        raise Error(f"{type(error).__name__}: {error}") from None

    def write(tmp):
        tmp = Path(tmp)
        _copy_folder(model_dir, tmp)
        if arpa is None:
            (tmp / LM_DIR).mkdir()
            (tmp / LM_DIR / "lm.arpa").write_text(arpa_text, encoding="utf-8")
        language_model = load_language_model(tmp / LM_DIR / "lm.arpa") if arpa is None else model
        decoder = CTCBeamSearchDecoder(
            labels,
            language_model,
            alpha=DEFAULT_ALPHA if alpha is None else alpha,
            beta=DEFAULT_BETA if beta is None else beta,
        )
        EBranchformerProcessorWithLM(processor.feature_extractor, processor.tokenizer, decoder=decoder).save_pretrained(
            str(tmp)
        )
        words = [w for w in language_model.vocabulary if w not in (BOS, EOS, UNK)]
        summary.update(
            {
                "order": language_model.order,
                "words": len(words),
                "alpha": decoder.alpha,
                "beta": decoder.beta,
                "language model": str(model_dir / LM_DIR / Path(language_model.path).name),
            }
        )

    write_folder_atomically(model_dir, write, overwrite=True)
    for key, value in summary.items():
        print(f"{key}: {value}")
    return summary
