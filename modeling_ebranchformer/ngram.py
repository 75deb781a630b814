"""Word n-gram language models, without compiled dependencies: the LM half of LM decoding
(`beam_search.py` is the other half).

* `build_arpa(sentences, order)`: an interpolated Kneser-Ney n-gram model over words, as ARPA text.
* `NGramLanguageModel`: reads an ARPA file (plain or .gz) and scores words with back-off.
* `KenLMLanguageModel`: a KenLM binary through the `kenlm` module when it is installed (otherwise the error
  says to use the ARPA version), with the same interface.

Scores are natural logarithms; ARPA files hold log10, converted on reading.
"""

import gzip
import math
import sys
from collections import Counter, defaultdict
from pathlib import Path

LN10 = math.log(10.0)
BOS, EOS, UNK = "<s>", "</s>", "<unk>"
KENLM_MAGIC = b"mmap lm "  # KenLM binary files start with "mmap lm http://kheafield.com/code format version"


class LanguageModelError(ValueError):
    """A language model, alphabet or decoding parameter that cannot be used; the message names the file or value."""


# --------------------------------------------------------------------------------------------------------------
# Building: interpolated Kneser-Ney


def _discount(adjusted: dict) -> float:
    """Kneser-Ney's discount D = n1 / (n1 + 2 n2) from the counts of counts; 0.5 where they do not define it."""
    counts = Counter(adjusted.values())
    n1, n2 = counts.get(1, 0), counts.get(2, 0)
    if n1 == 0 or n2 == 0:
        return 0.5
    d = n1 / (n1 + 2 * n2)
    return d if 0.0 < d < 1.0 else 0.5


def kneser_ney(sentences, order: int = 3):
    """Interpolated Kneser-Ney estimates: {n: {ngram tuple: (log10 p, log10 backoff or None)}}.

    Sentences are lists of words; each is padded with one <s> and one </s>. The highest order uses raw
    counts, lower orders continuation counts (distinct left neighbours), except n-grams starting with <s>,
    which have no left neighbour and keep their raw counts. One discount per order. The unigram level is
    interpolated with the uniform distribution over the vocabulary (which includes </s> and <unk>), so
    <unk> gets the mass of one unseen word. In ARPA form, the probability of a seen n-gram is the full
    interpolated one and a context's back-off weight is its interpolation weight, so that a back-off
    evaluation gives exactly the interpolated model (tests check that every context's distribution sums to 1).
    """
    if not isinstance(order, int) or order < 1:
        raise LanguageModelError(f"order must be a positive integer, got {order!r}")
    counts = [None] + [Counter() for _ in range(order)]
    sentences_seen = 0
    for words in sentences:
        sentences_seen += 1
        seq = [BOS, *words, EOS]
        for n in range(1, order + 1):
            grams = counts[n]
            for i in range(len(seq) - n + 1):
                grams[tuple(seq[i : i + n])] += 1
    if sentences_seen == 0 or len(counts[1]) <= 2:
        raise LanguageModelError("no words to build a language model from: the text is empty")
    # Adjusted counts.
    adjusted = [None] * (order + 1)
    adjusted[order] = dict(counts[order])
    for n in range(order - 1, 0, -1):
        left = Counter(g[1:] for g in counts[n + 1])
        adjusted[n] = {g: (c if g[0] == BOS else left[g]) for g, c in counts[n].items()}
    adjusted[1].pop((BOS,), None)

    probs = {}  # ngram -> interpolated probability (linear)
    backoffs = {}  # context ngram -> interpolation weight (linear)
    # Unigrams.
    d1 = _discount(adjusted[1])
    vocabulary = {g[0] for g in adjusted[1]} | {UNK}
    total = sum(adjusted[1].values())
    types = len(adjusted[1])
    uniform = d1 * types / total / len(vocabulary)
    for word in vocabulary:
        probs[(word,)] = max(adjusted[1].get((word,), 0) - d1, 0.0) / total + uniform
    # Higher orders.
    for n in range(2, order + 1):
        d = _discount(adjusted[n])
        totals, type_counts = defaultdict(int), defaultdict(int)
        for g, c in adjusted[n].items():
            totals[g[:-1]] += c
            type_counts[g[:-1]] += 1
        for h, t in totals.items():
            backoffs[h] = d * type_counts[h] / t
        for g, c in adjusted[n].items():
            h = g[:-1]
            lower = _backoff_prob(probs, backoffs, g[1:])
            probs[g] = (c - d) / totals[h] + backoffs[h] * lower
    result = {n: {} for n in range(1, order + 1)}
    for g, p in probs.items():
        bow = backoffs.get(g)
        result[len(g)][g] = (math.log10(p), None if bow is None else math.log10(bow))
    result[1][(BOS,)] = (-99.0, math.log10(backoffs[(BOS,)]) if (BOS,) in backoffs else None)
    return result


def _backoff_prob(probs, backoffs, gram):
    """P(gram[-1] | gram[:-1]) by back-off over already computed (lower-order) estimates."""
    weight = 1.0
    while True:
        p = probs.get(gram)
        if p is not None:
            return weight * p
        weight *= backoffs.get(gram[:-1], 1.0)
        gram = gram[1:]
        if not gram:  # cannot happen for n-grams of the corpus: every suffix was counted
            return weight * probs[(UNK,)]


def arpa_text(estimates: dict) -> str:
    """ARPA text of `kneser_ney`'s estimates (n-grams sorted, 6 decimals)."""
    lines = ["\\data\\"]
    lines += [f"ngram {n}={len(estimates[n])}" for n in sorted(estimates)]
    for n in sorted(estimates):
        lines += ["", f"\\{n}-grams:"]
        for gram in sorted(estimates[n]):
            logp, bow = estimates[n][gram]
            line = f"{logp:.6f}\t{' '.join(gram)}"
            if bow is not None:
                line += f"\t{bow:.6f}"
            lines.append(line)
    lines += ["", "\\end\\", ""]
    return "\n".join(lines)


def build_arpa(sentences, order: int = 3) -> str:
    """ARPA text of an interpolated Kneser-Ney model of `sentences` (lists of words)."""
    return arpa_text(kneser_ney(sentences, order))


# --------------------------------------------------------------------------------------------------------------
# Reading and scoring


def is_kenlm_binary(path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(KENLM_MAGIC)) == KENLM_MAGIC


def _open_text(path):
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    if gzipped:
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


class NGramLanguageModel:
    """A back-off word n-gram model read from ARPA. `score(context, word)` is ln P(word | context) with
    context a tuple of preceding words (<s> first at a sentence start); words outside the vocabulary are
    scored as <unk> (or -100 where the model has no <unk>) and reported by `in_vocabulary`."""

    def __init__(self, probs: dict, backoffs: dict, order: int, path=None):
        self._probs = probs
        self._backoffs = backoffs
        self.order = order
        self.path = path
        self.vocabulary = {g[0] for g in probs if len(g) == 1}
        self._unk = probs.get((UNK,))
        self._cache = {}

    @classmethod
    def from_file(cls, path):
        path = Path(path)
        if not path.is_file():
            raise LanguageModelError(f"language model file not found: {path}")
        if is_kenlm_binary(path):
            return KenLMLanguageModel.from_file(path)
        try:
            with _open_text(path) as lines:
                return cls._parse(lines, path)
        except UnicodeDecodeError as error:
            raise LanguageModelError(
                f"{path} is neither an ARPA text file (not UTF-8 text: {error.reason} at byte {error.start}) nor a "
                "KenLM binary; give an ARPA file (.arpa or .arpa.gz) or a KenLM binary"
            ) from None
        except (OSError, EOFError) as error:  # a truncated .gz
            raise LanguageModelError(f"{path} cannot be read: {error}") from None

    # Longer than our ~60 lines: one pass over the file in the order ARPA lays it out (\data\, then each
    # \N-grams: section), so that every error names its line.
    @classmethod
    def _parse(cls, lines, path):
        def fail(number, message):
            raise LanguageModelError(f"{path}, line {number}: {message}; the file is not a valid ARPA language model")

        expected = {}
        probs, backoffs = {}, {}
        pool = {}
        section = None  # None: before \data\, 0: in \data\, n: in \n-grams:
        seen = Counter()
        ended = False
        number = 0
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line:
                continue
            if ended:
                break
            if section is None:
                if line == "\\data\\":
                    section = 0
                    continue
                if number > 50:
                    fail(number, "no \\data\\ header in its first 50 lines")
                continue  # text before \data\ is allowed (comments)
            if line == "\\end\\":
                ended = True
                continue
            if line.startswith("\\") and line.endswith("-grams:"):
                try:
                    section = int(line[1:-7])
                except ValueError:
                    fail(number, f"bad section header {line!r}")
                if section not in expected:
                    fail(number, f"section {line} is not announced in \\data\\")
                continue
            if section == 0:
                if not line.startswith("ngram ") or "=" not in line:
                    fail(number, f"expected 'ngram N=COUNT' in \\data\\, got {line[:60]!r}")
                try:
                    n, count = (int(x) for x in line[6:].split("=", 1))
                except ValueError:
                    fail(number, f"bad count line {line[:60]!r}")
                expected[n] = count
                continue
            n = section
            if "\t" in line:
                fields = line.split("\t")
                if len(fields) not in (2, 3):
                    fail(number, f"expected 'log10p<TAB>words[<TAB>backoff]', got {line[:60]!r}")
                words = tuple([pool.setdefault(w, w) for w in fields[1].split()])  # one string object per word
                bow = fields[2] if len(fields) == 3 else None
            else:
                fields = line.split()
                if len(fields) not in (n + 1, n + 2):
                    fail(number, f"expected a {n}-gram line, got {line[:60]!r}")
                words = tuple([pool.setdefault(w, w) for w in fields[1 : n + 1]])
                bow = fields[n + 1] if len(fields) == n + 2 else None
            if len(words) != n:
                fail(number, f"{len(words)} words in the {n}-grams section: {line[:60]!r}")
            try:
                logp = float(fields[0])
                bow = float(bow) if bow is not None else None
            except ValueError:
                fail(number, f"not a number in {line[:60]!r}")
            if not math.isfinite(logp) or logp > 1e-6 or (bow is not None and not math.isfinite(bow)):
                fail(number, f"a log10 probability must be finite and at most 0: {line[:60]!r}")
            probs[words] = logp * LN10
            if bow:
                backoffs[words] = bow * LN10
            seen[n] += 1
        if section is None:
            raise LanguageModelError(f"{path}: no \\data\\ header; the file is not an ARPA language model")
        if not ended:
            raise LanguageModelError(f"{path}: no \\end\\ line after line {number}; the file is truncated or corrupt")
        for n, count in expected.items():
            if seen[n] != count:
                raise LanguageModelError(
                    f"{path}: \\data\\ announces {count} {n}-grams but the file holds {seen[n]}; "
                    "the file is truncated or corrupt"
                )
        if not expected or 1 not in expected:
            raise LanguageModelError(f"{path}: no unigrams; the file is not a usable ARPA language model")
        return cls(probs, backoffs, max(expected), path)

    def in_vocabulary(self, word: str) -> bool:
        return word in self.vocabulary

    def score(self, context: tuple, word: str) -> float:
        """ln P(word | context), back-off evaluation; context longer than order - 1 is cut."""
        key = (context, word)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        if word not in self.vocabulary:
            word = UNK
            if self._unk is None:
                self._cache[key] = -100.0
                return -100.0
        context = context[len(context) - self.order + 1 :] if self.order > 1 else ()
        total = 0.0
        probs, backoffs = self._probs, self._backoffs
        while True:
            p = probs.get(context + (word,))
            if p is not None:
                total += p
                break
            if not context:  # word is in the vocabulary, so its unigram exists
                total += -100.0
                break
            total += backoffs.get(context, 0.0)
            context = context[1:]
        if len(self._cache) > 1_000_000:
            self._cache.clear()
        self._cache[key] = total
        return total

    def sentence_score(self, words, bos=True, eos=True) -> float:
        """ln P of a whole word sequence (for tests and checks)."""
        context = (BOS,) if bos else ()
        total = 0.0
        for word in [*words, EOS] if eos else words:
            total += self.score(context, word)
            context = (context + (word,))[-(self.order - 1) :] if self.order > 1 else ()
        return total


class KenLMLanguageModel:
    """A KenLM binary (or ARPA) through the `kenlm` module, with `NGramLanguageModel`'s interface."""

    def __init__(self, model, path, unigrams=None):
        # kenlm is imported only inside `try` (from_file): Transformers refuses to load remote code whose files
        # import, outside a try block, a module that is not installed, and kenlm is optional.
        self._kenlm = sys.modules["kenlm"]
        self._model = model
        self.path = path
        self.order = model.order
        self.vocabulary = set(unigrams or ())
        self._states = {}
        self._cache = {}

    @classmethod
    def from_file(cls, path):
        try:
            import kenlm
        except ImportError:
            raise LanguageModelError(
                f"{path} is a KenLM binary, which needs the kenlm Python module to read (pip install kenlm; it builds "
                "from source). Without it, give the ARPA version of the model (KenLM's lmplz writes ARPA; Golos ships "
                "its language models as ARPA too) - a KenLM binary cannot be converted back to ARPA"
            ) from None
        try:
            model = kenlm.Model(str(path))
        except Exception as error:
            raise LanguageModelError(f"{path}: kenlm cannot read this file ({error})") from None
        return cls(model, path)

    def in_vocabulary(self, word):
        return word in self._model if not self.vocabulary else word in self.vocabulary

    def _state(self, context):
        kenlm = self._kenlm
        state = self._states.get(context)
        if state is None:
            state = kenlm.State()
            if context and context[0] == BOS:
                self._model.BeginSentenceWrite(state)
                words = context[1:]
            else:
                self._model.NullContextWrite(state)
                words = context
            for word in words:
                out = kenlm.State()
                self._model.BaseScore(state, word, out)
                state = out
            self._states[context] = state
        return state

    def score(self, context, word):
        kenlm = self._kenlm
        key = (context, word)
        cached = self._cache.get(key)
        if cached is None:
            context = context[-(self.order - 1) :] if self.order > 1 else ()
            cached = self._model.BaseScore(self._state(context), word, kenlm.State()) * LN10
            self._cache[key] = cached
        return cached


def load_language_model(path, unigrams=None):
    path = Path(path)
    if not path.is_file():
        raise LanguageModelError(f"language model file not found: {path}")
    if is_kenlm_binary(path):
        model = KenLMLanguageModel.from_file(path)
        model.vocabulary = set(unigrams or ())
        return model
    return NGramLanguageModel.from_file(path)
