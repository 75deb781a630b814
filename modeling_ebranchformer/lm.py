"""Word n-gram language models for CTC decoding, without compiled dependencies.

* `build_arpa(sentences, order)`: an interpolated Kneser-Ney n-gram model over words, as ARPA text.
* `NGramLanguageModel`: reads an ARPA file (plain or .gz) and scores words with back-off; a KenLM binary
  is read through the `kenlm` module when it is installed (`KenLMLanguageModel`), otherwise the error says
  to use the ARPA version.
* `CTCBeamSearchDecoder`: CTC prefix beam search with shallow fusion of the word LM
  (score = log P_ctc + alpha * ln P_lm(words) + beta * words), character pruning, hotwords and word
  offsets. It has the interface of pyctcdecode's `BeamSearchDecoderCTC` that Transformers' ASR pipeline
  calls (`decode_beams`), and saves/loads the layout of `Wav2Vec2ProcessorWithLM` folders:
  `alphabet.json`, `language_model/{LM file, attrs.json, unigrams.txt}`.

Scores are natural logarithms; ARPA files hold log10, converted on reading. `alpha`, `beta` and
`unk_score_offset` mean what they mean in pyctcdecode, so its tuned values carry over.
"""

import gzip
import heapq
import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

LN10 = math.log(10.0)
NEG_INF = float("-inf")
BOS, EOS, UNK = "<s>", "</s>", "<unk>"
KENLM_MAGIC = b"mmap lm "  # KenLM binary files start with "mmap lm http://kheafield.com/code format version"

# Defaults (pyctcdecode's values, except the beam: see README, "Language model").
DEFAULT_ALPHA = 0.5
DEFAULT_BETA = 1.5
DEFAULT_UNK_SCORE_OFFSET = -10.0
DEFAULT_BEAM_WIDTH = 32
DEFAULT_BEAM_PRUNE_LOGP = -10.0
DEFAULT_TOKEN_MIN_LOGP = -5.0
DEFAULT_HOTWORD_WEIGHT = 10.0
ALPHA_RANGE = (0.0, 10.0)
BETA_RANGE = (-20.0, 20.0)

ALPHABET_FILE = "alphabet.json"
LM_DIR = "language_model"
ATTRS_FILE = "attrs.json"
UNIGRAMS_FILE = "unigrams.txt"


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
                raise LanguageModelError(f"{path}: \\data\\ announces {count} {n}-grams but the file holds {seen[n]}; "
                                         "the file is truncated or corrupt")  # fmt: skip
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
        except Exception as error:  # noqa: BLE001 - kenlm raises OSError/RuntimeError/its own with its messages
            raise LanguageModelError(f"{path}: kenlm cannot read this file ({error})") from None
        return cls(model, path)

    def in_vocabulary(self, word):
        return word in self._model if not self.vocabulary else word in self.vocabulary

    def _state(self, context):
        import kenlm

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
        import kenlm

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


# --------------------------------------------------------------------------------------------------------------
# Decoding


def _logaddexp(a, b):
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    if a > b:
        return a + math.log1p(math.exp(b - a))
    return b + math.log1p(math.exp(a - b))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def check_range(name, value, low, high):
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LanguageModelError(f"{name} must be a finite number in [{low}, {high}], got {value!r}")
    if not low <= value <= high:
        raise LanguageModelError(f"{name}={value} is out of range: it must be in [{low}, {high}]")


class _Hotwords:
    """Hotword bonuses: a finished word that is a hotword gets `weight`; a partial word that begins one gets
    weight * len(partial) / len(shortest such hotword), so that beams heading for a hotword survive pruning."""

    def __init__(self, hotwords, weight, characters):
        self.weight = weight
        self.words = set()
        for phrase in hotwords or ():
            if not isinstance(phrase, str):
                raise LanguageModelError(f"hotwords must be strings, got {phrase!r}")
            from .tokenization import normalize_text

            words = normalize_text(phrase).split()
            unknown = sorted({c for w in words for c in w if c not in characters})
            if unknown:
                raise LanguageModelError(f"hotword {phrase!r} has characters {unknown} outside the alphabet")
            self.words.update(words)
        self.prefixes = {}
        for word in self.words:
            for i in range(1, len(word) + 1):
                prefix = word[:i]
                self.prefixes[prefix] = min(self.prefixes.get(prefix, len(word)), len(word))

    def __bool__(self):
        return bool(self.words)

    def partial(self, partial_word):
        length = self.prefixes.get(partial_word)
        return 0.0 if length is None else self.weight * len(partial_word) / length


class CTCBeamSearchDecoder:
    """CTC prefix beam search with a word n-gram LM; `labels[i]` is the character of logit column i ("" for the
    CTC blank, " " for the word delimiter). `language_model` may be None (beam search without an LM)."""

    def __init__(self, labels, language_model=None, alpha=DEFAULT_ALPHA, beta=DEFAULT_BETA,
                 unk_score_offset=DEFAULT_UNK_SCORE_OFFSET, score_boundary=True, unigrams=None):  # fmt: skip
        labels = list(labels)
        if labels.count("") != 1:
            raise LanguageModelError(f"the alphabet must have exactly one blank (\"\"), it has {labels.count('')}")
        if labels.count(" ") != 1:
            raise LanguageModelError("the alphabet must have exactly one word delimiter (\" \")")
        if bad := [t for t in labels if len(t) > 1]:
            raise LanguageModelError(f"the alphabet must hold single characters, not {bad}")
        if len(set(labels)) != len(labels):
            raise LanguageModelError(f"the alphabet repeats labels: {labels}")
        self.labels = labels
        self.blank = labels.index("")
        self.space = labels.index(" ")
        self.characters = set(labels) - {""}
        self.language_model = language_model
        self.unigrams = list(unigrams) if unigrams is not None else None
        self._prefixes = None
        self.reset_params(alpha=alpha, beta=beta, unk_score_offset=unk_score_offset, lm_score_boundary=score_boundary)

    # pyctcdecode's name; the pipeline and Wav2Vec2ProcessorWithLM call it
    def reset_params(self, alpha=None, beta=None, unk_score_offset=None, lm_score_boundary=None):
        check_range("alpha", alpha, *ALPHA_RANGE)
        check_range("beta", beta, *BETA_RANGE)
        check_range("unk_score_offset", unk_score_offset, -1000.0, 0.0)
        if alpha is not None:
            self.alpha = float(alpha)
        if beta is not None:
            self.beta = float(beta)
        if unk_score_offset is not None:
            self.unk_score_offset = float(unk_score_offset)
        if lm_score_boundary is not None:
            self.score_boundary = bool(lm_score_boundary)

    @property
    def attrs(self) -> dict:
        """What `attrs.json` holds (pyctcdecode's keys)."""
        return {"alpha": self.alpha, "beta": self.beta, "unk_score_offset": self.unk_score_offset,
                "score_boundary": self.score_boundary}  # fmt: skip

    def _vocabulary_prefixes(self):
        if self._prefixes is None:
            words = self.unigrams if self.unigrams is not None else getattr(self.language_model, "vocabulary", ())
            self._prefixes = {w[:i] for w in words for i in range(1, len(w) + 1)}
        return self._prefixes

    # ---- decoding

    def decode_beams(self, logits, beam_width=None, beam_prune_logp=None, token_min_logp=None, prune_history=False,
                     hotwords=None, hotword_weight=None, sum_alignments=True, **unused):  # fmt: skip
        """Beams for one utterance, best first, as pyctcdecode gives them: tuples (text, None, word frames
        [(word, (start, end))], acoustic log-score, combined score). `logits`: (frames, labels), logits or
        log-probabilities (a log-softmax is applied).

        `sum_alignments=True` (prefix beam search): a text's acoustic score sums all its CTC alignments.
        `False`: the score of its best alignment (Viterbi); with alpha = beta = 0 the result is then exactly
        the greedy transcript, which makes a check of the search."""
        logits = np.asarray(logits)
        if logits.ndim != 2 or logits.shape[1] != len(self.labels):
            raise LanguageModelError(f"logits must have shape (frames, {len(self.labels)}), got {logits.shape}")
        beam_width = DEFAULT_BEAM_WIDTH if beam_width is None else beam_width
        if isinstance(beam_width, bool) or not isinstance(beam_width, (int, np.integer)) or beam_width < 1:
            raise LanguageModelError(f"beam_width must be a positive integer, got {beam_width!r}")
        beam_prune_logp = DEFAULT_BEAM_PRUNE_LOGP if beam_prune_logp is None else beam_prune_logp
        token_min_logp = DEFAULT_TOKEN_MIN_LOGP if token_min_logp is None else token_min_logp
        check_range("beam_prune_logp", beam_prune_logp, -1e9, 0.0)
        check_range("token_min_logp", token_min_logp, -1e9, 0.0)
        weight = DEFAULT_HOTWORD_WEIGHT if hotword_weight is None else hotword_weight
        check_range("hotword_weight", weight, 0.0, 1000.0)
        hot = _Hotwords([hotwords] if isinstance(hotwords, str) else hotwords, weight, self.characters)
        return self._search(log_softmax(logits), int(beam_width), float(beam_prune_logp), float(token_min_logp), hot,
                            _logaddexp if sum_alignments else max)  # fmt: skip

    def decode(self, logits, **kwargs) -> str:
        return self.decode_beams(logits, **kwargs)[0][0]

    def _word_score(self, context, word, hot):
        """LM score of a finished word: alpha * ln P + beta, the unknown-word offset, the hotword bonus."""
        score = self.beta
        lm = self.language_model
        if lm is not None and self.alpha > 0:  # alpha = 0: no LM at all, the unknown-word offset included
            score += self.alpha * lm.score(context, word)
            if not lm.in_vocabulary(word) and word not in hot.words:
                score += self.unk_score_offset
        if word in hot.words:
            score += hot.weight
        return score

    def _partial_score(self, partial, hot):
        """Score of an unfinished word: the unknown-word offset once it begins no known word, the hotword bonus."""
        score = 0.0
        if hot and partial in hot.prefixes:
            return hot.partial(partial)
        if self.language_model is not None and self.alpha > 0:
            prefixes = self._vocabulary_prefixes()
            if prefixes and partial not in prefixes:  # no word list (a KenLM binary alone): no penalty
                score += self.unk_score_offset
        return score

    def _next_context(self, context, word):
        order = getattr(self.language_model, "order", 1)
        return (context + (word,))[-(order - 1) :] if order > 1 else ()

    def _search(self, logp, beam_width, beam_prune_logp, token_min_logp, hot, merge=_logaddexp):
        labels, blank = self.labels, self.blank
        start_context = (BOS,) if self.score_boundary else ()
        # A beam: text -> [p_blank, p_nonblank, lm (finished words), lm partial, context, words, word start, end,
        # best]: `words` holds (word, start frame, end frame) of finished words; start/end: the unfinished word's,
        # taken from the likeliest path that reached the text in this frame (`best`, its log-probability).
        beams = {"": [0.0, NEG_INF, 0.0, 0.0, start_context, (), -1, -1, 0.0]}
        partial_scores = {}  # unfinished word -> its score (a function of the word alone)
        frames = logp.shape[0]
        above = logp > token_min_logp
        above[:, blank] = False
        best_tokens = logp.argmax(axis=1)
        for t in range(frames):
            row = logp[t]
            candidates = np.flatnonzero(above[t]).tolist()
            best = int(best_tokens[t])
            if best != blank and best not in candidates:
                candidates.append(best)
            blank_lp = float(row[blank])
            if not candidates:  # only the blank: every beam stays, no new text
                for beam in beams.values():
                    beam[0] = merge(beam[0], beam[1]) + blank_lp
                    beam[1] = NEG_INF
                    beam[8] = beam[0]
                continue
            lps = [(c, labels[c], float(row[c])) for c in candidates]
            new = {}
            for text, beam in beams.items():
                pb, pnb, lm, lm_partial, context, words, wstart, wend, _ = beam
                total = merge(pb, pnb)
                last = text[-1] if text else ""
                # blank: same text
                p = total + blank_lp
                entry = new.get(text)
                if entry is None:
                    new[text] = [p, NEG_INF, lm, lm_partial, context, words, wstart, wend, p]
                else:
                    entry[0] = merge(entry[0], p)
                    if p > entry[8]:
                        entry[5], entry[6], entry[7], entry[8] = words, wstart, wend, p
                for c, ch, lp in lps:
                    if ch == " ":
                        if not text or last == " ":  # a leading or repeated space leaves the text as it is
                            entry = new.get(text)
                            entry[1] = merge(entry[1], total + lp)
                            continue
                        # a space ends the word
                        p = total + lp
                        new_text = text + " "
                        entry = new.get(new_text)
                        if entry is None:
                            word = text[text.rfind(" ") + 1 :]
                            score = lm + self._word_score(context, word, hot)
                            new[new_text] = [NEG_INF, p, score, 0.0, self._next_context(context, word),
                                             words + ((word, wstart, wend),), -1, -1, p]  # fmt: skip
                        else:
                            entry[1] = merge(entry[1], p)
                            if p > entry[8]:
                                entry[5], entry[8] = words + ((text[text.rfind(" ") + 1 :], wstart, wend),), p
                        continue
                    if ch == last:
                        # the same character again: collapsed (from non-blank) or a new one (after a blank)
                        entry = new[text]
                        p = pnb + lp
                        entry[1] = merge(entry[1], p)
                        if p > entry[8]:
                            entry[5], entry[6], entry[7], entry[8] = words, wstart, t + 1, p
                        p = pb + lp
                    else:
                        p = total + lp
                    if p == NEG_INF:
                        continue
                    new_text = text + ch
                    entry = new.get(new_text)
                    starts_word = not text or last == " "
                    if entry is None:
                        partial = ch if starts_word else new_text[new_text.rfind(" ") + 1 :]
                        partial_score = partial_scores.get(partial)
                        if partial_score is None:
                            partial_score = partial_scores[partial] = self._partial_score(partial, hot)
                        new[new_text] = [NEG_INF, p, lm, partial_score, context, words,
                                         t if starts_word else wstart, t + 1, p]  # fmt: skip
                    else:
                        entry[1] = merge(entry[1], p)
                        if p > entry[8]:
                            entry[5], entry[6], entry[7], entry[8] = words, t if starts_word else wstart, t + 1, p
            # keep the best beams
            scored = [(merge(b[0], b[1]) + b[2] + b[3], text) for text, b in new.items()]
            # best first: the next frame's entries then take their word frames from the likeliest beam
            scored = heapq.nlargest(beam_width, scored) if len(scored) > beam_width else sorted(scored, reverse=True)
            threshold = scored[0][0] + beam_prune_logp
            beams = {text: new[text] for score, text in scored if score >= threshold}
        return self._finish(beams, frames, hot, merge)

    def _finish(self, beams, frames, hot, merge=_logaddexp):
        finished = {}
        for text, beam in beams.items():
            pb, pnb, lm, _, context, words, wstart, wend, _ = beam
            acoustic = merge(pb, pnb)
            if text and text[-1] != " ":
                word = text[text.rfind(" ") + 1 :]
                lm += self._word_score(context, word, hot)
                context = self._next_context(context, word)
                words = words + ((word, wstart, wend),)
            if self.language_model is not None and self.alpha > 0 and self.score_boundary and words:
                lm += self.alpha * self.language_model.score(context, EOS)
            final = text.strip()
            previous = finished.get(final)
            if previous is None:
                finished[final] = [acoustic, lm, words]
            else:
                previous[0] = merge(previous[0], acoustic)
        output = [(text, None, [(w, (s, e)) for w, s, e in words], acoustic, acoustic + lm)
                  for text, (acoustic, lm, words) in finished.items()]  # fmt: skip
        output.sort(key=lambda beam: beam[4], reverse=True)
        return output or [("", None, [], 0.0, 0.0)]

    def decode_beams_batch(self, logits_list, pool=None, **kwargs):
        return [self.decode_beams(logits, **kwargs) for logits in logits_list]

    # ---- saving and loading (the layout of Wav2Vec2ProcessorWithLM / pyctcdecode folders)

    def save_to_dir(self, folder):
        """Writes alphabet.json and language_model/ (the LM file as it was read, attrs.json, unigrams.txt)."""
        import shutil

        folder = Path(folder)
        (folder / ALPHABET_FILE).write_text(json.dumps({"labels": self.labels, "is_bpe": False}, ensure_ascii=False))
        if self.language_model is None:
            return
        lm_dir = folder / LM_DIR
        lm_dir.mkdir(parents=True, exist_ok=True)
        source = Path(self.language_model.path)
        target = lm_dir / source.name
        if source.resolve() != target.resolve():
            shutil.copyfile(source, target)
        (lm_dir / ATTRS_FILE).write_text(json.dumps(self.attrs, indent=1))
        unigrams = self.unigrams
        if unigrams is None:
            unigrams = sorted(w for w in self.language_model.vocabulary if w not in (BOS, EOS, UNK))
        if unigrams:  # a KenLM binary read alone has no word list
            (lm_dir / UNIGRAMS_FILE).write_text("".join(w + "\n" for w in unigrams), encoding="utf-8")

    @classmethod
    def load_from_dir(cls, folder, **overrides):
        """The decoder of a folder with alphabet.json and language_model/; errors name the file at fault."""
        folder = Path(folder)
        alphabet_path = folder / ALPHABET_FILE
        if not alphabet_path.is_file():
            raise LanguageModelError(f"{alphabet_path} is missing: a language model folder needs the alphabet of the "
                                     "logits (run build_lm.py again)")  # fmt: skip
        try:
            alphabet = json.loads(alphabet_path.read_text(encoding="utf-8"))
            labels = alphabet["labels"]
            if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
                raise TypeError
        except (ValueError, KeyError, TypeError) as error:
            raise LanguageModelError(f"{alphabet_path} is not a valid alphabet ({error})") from None
        if alphabet.get("is_bpe"):
            raise LanguageModelError(f"{alphabet_path}: BPE alphabets are not supported; this decoder is for characters")
        lm_dir = folder / LM_DIR
        files = sorted(p for p in lm_dir.iterdir() if p.name not in (ATTRS_FILE, UNIGRAMS_FILE)) if lm_dir.is_dir() else []
        if len(files) != 1:
            raise LanguageModelError(f"{lm_dir} must hold exactly one language model file besides {ATTRS_FILE} and "
                                     f"{UNIGRAMS_FILE}, found {[p.name for p in files]}")  # fmt: skip
        attrs = {}
        attrs_path = lm_dir / ATTRS_FILE
        if attrs_path.is_file():
            try:
                attrs = json.loads(attrs_path.read_text(encoding="utf-8"))
            except ValueError as error:
                raise LanguageModelError(f"{attrs_path} is not valid JSON ({error})") from None
            if not isinstance(attrs, dict):
                raise LanguageModelError(f"{attrs_path} must hold a JSON object, got {type(attrs).__name__}")
            unknown = set(attrs) - {"alpha", "beta", "unk_score_offset", "score_boundary"}
            if unknown:
                raise LanguageModelError(f"{attrs_path}: unknown keys {sorted(unknown)}")
            try:
                check_range("alpha", attrs.get("alpha"), *ALPHA_RANGE)
                check_range("beta", attrs.get("beta"), *BETA_RANGE)
                check_range("unk_score_offset", attrs.get("unk_score_offset"), -1000.0, 0.0)
            except LanguageModelError as error:
                raise LanguageModelError(f"{attrs_path}: {error}") from None
        unigrams = None
        unigrams_path = lm_dir / UNIGRAMS_FILE
        if unigrams_path.is_file():
            unigrams = [w for w in unigrams_path.read_text(encoding="utf-8").split("\n") if w.strip()]
        attrs.update({k: v for k, v in overrides.items() if v is not None})
        try:
            language_model = load_language_model(files[0], unigrams)
            return cls(labels, language_model, unigrams=unigrams, **attrs)
        except LanguageModelError as error:
            message = str(error)
            if str(folder) not in message:
                message = f"{folder}: {message}"
            raise LanguageModelError(message) from None


def has_language_model(folder) -> bool:
    folder = Path(folder)
    return (folder / LM_DIR).is_dir()


def tokenizer_labels(tokenizer) -> list:
    """The decoder alphabet of a CTC tokenizer: its tokens in id order, the word delimiter as " ", the padding
    token (CTC blank) as ""."""
    labels = []
    for index in range(len(tokenizer)):
        token = tokenizer.convert_ids_to_tokens(index)
        if token == tokenizer.pad_token:
            labels.append("")
        elif token == getattr(tokenizer, "word_delimiter_token", None):
            labels.append(" ")
        else:
            labels.append(token)
    return labels


def check_alphabet(labels, tokenizer, where="alphabet.json"):
    """Raise if the decoder's alphabet is not the tokenizer's, column for column."""
    expected = tokenizer_labels(tokenizer)
    missing = [t for t in expected if t not in labels]
    if missing:
        raise LanguageModelError(f"{where} does not cover the tokenizer: it lacks {missing} (the LM was built for "
                                 "another vocabulary; build it again with build_lm.py)")  # fmt: skip
    if list(labels) != expected:
        diff = [(i, a, b) for i, (a, b) in enumerate(zip(labels, expected)) if a != b][:5]
        raise LanguageModelError(f"{where} does not match the tokenizer: {len(labels)} labels for {len(expected)} "
                                 f"logit columns, first differences (column, alphabet, tokenizer): {diff}")  # fmt: skip

