"""CTC prefix beam search with shallow fusion of a word n-gram LM (`ngram.py`), hotwords and word offsets.

score = log P_ctc + alpha * ln P_lm(words) + beta * words. `CTCBeamSearchDecoder` has the interface of
pyctcdecode's `BeamSearchDecoderCTC` that Transformers' ASR pipeline calls (`decode_beams`, whose beams it reads
by position: `OutputBeam` keeps that order and names the fields), and saves/loads the layout of
`Wav2Vec2ProcessorWithLM` folders: `alphabet.json`, `language_model/{LM file, attrs.json, unigrams.txt}`.
`alpha`, `beta` and `unk_score_offset` mean what they mean in pyctcdecode, so its tuned values carry over.
"""

import bisect
import heapq
import json
import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .ngram import BOS, EOS, UNK, LanguageModelError, load_language_model
from .text import normalize_text

NEG_INF = float("-inf")

# Defaults: pyctcdecode's values, except the beam (pyctcdecode: 100). A beam of 32 adds 15 % to the forward pass's
# time and is 0.3-0.6 WER points from 64 on the main job's model (docs/decoding.md, "Language model decoding").
DEFAULT_ALPHA = 0.5
DEFAULT_BETA = 1.5
DEFAULT_UNK_SCORE_OFFSET = -10.0
DEFAULT_BEAM_WIDTH = 32
DEFAULT_BEAM_PRUNE_LOGP = -10.0
DEFAULT_TOKEN_MIN_LOGP = -5.0
DEFAULT_HOTWORD_WEIGHT = 10.0
HOTWORD_WEIGHT_RANGE = (0.0, 100.0)
# Bounds on the hotwords of one decoder (a server's `prompt` is a client's): their structure is linear in their
# length, and every beam step looks a partial word up in it.
MAX_HOTWORDS = 1000
MAX_HOTWORD_LENGTH = 100  # characters of one word
COMMIT_EVERY = 64  # frames between moves of the words all prefixes share out of them (_Committed)
DECODE_OPTIONS = [
    "alpha",
    "beam_prune_logp",
    "beam_width",
    "beta",
    "hotword_weight",
    "hotwords",
    "lm_score_boundary",
    "sum_alignments",
    "token_min_logp",
    "unk_score_offset",
]
ALPHA_RANGE = (0.0, 10.0)
BETA_RANGE = (-20.0, 20.0)

ALPHABET_FILE = "alphabet.json"
LM_DIR = "language_model"
ATTRS_FILE = "attrs.json"
UNIGRAMS_FILE = "unigrams.txt"


class OutputBeam(NamedTuple):
    """One hypothesis of `decode_beams`, in the field order of pyctcdecode's beams (Transformers' ASR pipeline
    reads `beam[0]` and `beam[2]`)."""

    text: str
    last_lm_state: None  # pyctcdecode's LM state; this decoder keeps none
    word_offsets: list  # [(word, (start frame, end frame))], end exclusive
    logit_score: float  # acoustic log-score
    lm_score: float  # what beams are ranked by: acoustic + alpha * LM + beta * words (+ hotword bonus)


class _Weights(NamedTuple):
    alpha: float
    beta: float
    unk_score_offset: float
    score_boundary: bool


class _Prefix:
    """A text in the search: its CTC log-probabilities ending in a blank or not, the LM score of its finished
    words, the score of its unfinished word (with and without the hotword bonus), the LM context, and (word,
    start, end) frames of its finished words and of the unfinished word, taken from its likeliest alignment
    (`best`, that alignment's log-probability)."""

    __slots__ = (
        "best",
        "context",
        "lm_score",
        "p_blank",
        "p_nonblank",
        "partial_score",
        "plain_partial_score",
        "word_end",
        "word_start",
        "words",
    )

    def __init__(
        self,
        p_blank,
        p_nonblank,
        lm_score,
        partial_score,
        plain_partial_score,
        context,
        words,
        word_start,
        word_end,
        best,
    ):
        self.p_blank, self.p_nonblank, self.lm_score = p_blank, p_nonblank, lm_score
        self.partial_score, self.plain_partial_score, self.context = partial_score, plain_partial_score, context
        self.words, self.word_start, self.word_end, self.best = words, word_start, word_end, best

    def extended(self, p_blank, p_nonblank, word_start, word_end, best):
        """The same text in the next frame."""
        return _Prefix(
            p_blank,
            p_nonblank,
            self.lm_score,
            self.partial_score,
            self.plain_partial_score,
            self.context,
            self.words,
            word_start,
            word_end,
            best,
        )

    def keep_alignment_if_better(self, p, words, word_start, word_end):
        if p > self.best:
            self.words, self.word_start, self.word_end, self.best = words, word_start, word_end, p


class _Committed:
    """The words that every live prefix begins with, moved out of the prefixes' texts (the search's dict keys)
    and word lists. Without it a prefix's text and words grow with the recording, and copying and hashing them
    every frame made the search quadratic in its length (RTF 0.037 at two hours against 0.002 at 27 s); with it
    they hold the last few words. The committed words' frames are the best prefix's at the time."""

    def __init__(self):
        self.text, self.words = "", ()

    def take(self, prefixes: dict) -> dict:
        common = os.path.commonprefix(list(prefixes))  # noqa: RUF071 (texts: character by character is meant)
        cut = common.rfind(" ") + 1  # after the last space that all share: a word boundary in every prefix
        if cut == 0:
            return prefixes
        count = common[:cut].count(" ")  # texts hold single spaces between words, none leading
        best = next(iter(prefixes.values()))  # prefixes are kept best first
        self.text += common[:cut]
        self.words += best.words[:count]
        stripped = {}
        for text, prefix in prefixes.items():
            prefix.words = prefix.words[count:]
            stripped[text[cut:]] = prefix
        return stripped


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
            words = normalize_text(phrase).split()
            if long := [w for w in words if len(w) > MAX_HOTWORD_LENGTH]:
                raise LanguageModelError(
                    f"hotword {long[0][:40]!r}... has {len(long[0])} characters, over the limit of {MAX_HOTWORD_LENGTH}"
                )
            unknown = sorted({c for w in words for c in w if c not in characters})
            if unknown:
                raise LanguageModelError(f"hotword {phrase[:80]!r} has characters {unknown} outside the alphabet")
            self.words.update(words)
            if len(self.words) > MAX_HOTWORDS:
                raise LanguageModelError(f"over {MAX_HOTWORDS} hotwords: give at most {MAX_HOTWORDS} words")
        self.prefixes = _Prefixes(self.words)

    def __bool__(self):
        return bool(self.words)

    def partial(self, partial_word):
        length = self.prefixes.get(partial_word)
        return 0.0 if length is None else self.weight * len(partial_word) / length


class _Prefixes:
    """The prefixes of a set of words, each mapped to the length of the shortest word it begins, in memory linear
    in the words' length (the words sorted: those a prefix begins are a run of them, found by bisection; a dict
    of every prefix as its own string is quadratic, 22 GB for one 480,000-character word)."""

    def __init__(self, words):
        self.words = sorted(words)

    def get(self, prefix, default=None):
        first = bisect.bisect_left(self.words, prefix)
        end = bisect.bisect_left(self.words, prefix + "\U0010ffff", first)  # past the words that begin with it
        lengths = [len(w) for w in self.words[first:end] if w.startswith(prefix)]
        return min(lengths) if prefix and lengths else default

    def __contains__(self, prefix):
        return self.get(prefix) is not None


class CTCBeamSearchDecoder:
    """CTC prefix beam search with a word n-gram LM; `labels[i]` is the character of logit column i ("" for the
    CTC blank, " " for the word delimiter). `language_model` may be None (beam search without an LM)."""

    def __init__(
        self,
        labels,
        language_model=None,
        alpha=DEFAULT_ALPHA,
        beta=DEFAULT_BETA,
        unk_score_offset=DEFAULT_UNK_SCORE_OFFSET,
        score_boundary=True,
        unigrams=None,
    ):
        labels = list(labels)
        if labels.count("") != 1:
            raise LanguageModelError(f'the alphabet must have exactly one blank (""), it has {labels.count("")}')
        if labels.count(" ") != 1:
            raise LanguageModelError('the alphabet must have exactly one word delimiter (" ")')
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
        return {
            "alpha": self.alpha,
            "beta": self.beta,
            "unk_score_offset": self.unk_score_offset,
            "score_boundary": self.score_boundary,
        }

    def _vocabulary_prefixes(self):
        if self._prefixes is None:
            words = self.unigrams if self.unigrams is not None else getattr(self.language_model, "vocabulary", ())
            self._prefixes = {w[:i] for w in words for i in range(1, len(w) + 1)}
        return self._prefixes

    # ---- decoding

    def decode_beams(self, logits, **options):
        """`OutputBeam`s for one utterance, best first (pyctcdecode's tuples: text, None, word frames
        [(word, (start, end))], acoustic log-score, combined score). `logits`: (frames, labels), logits or
        log-probabilities (a log-softmax is applied). `options`: those of `search`."""
        logits = np.asarray(logits)
        if logits.ndim != 2 or logits.shape[1] != len(self.labels):
            raise LanguageModelError(f"logits must have shape (frames, {len(self.labels)}), got {logits.shape}")
        search = self.search(**options)
        search.advance(logits)
        return search.beams()

    def search(
        self,
        beam_width=None,
        beam_prune_logp=None,
        token_min_logp=None,
        prune_history=False,
        hotwords=None,
        hotword_weight=None,
        sum_alignments=True,
        alpha=None,
        beta=None,
        unk_score_offset=None,
        lm_score_boundary=None,
        lm_start_state=None,
        **unknown,
    ) -> "BeamSearch":
        """A search over frames to come, frame by frame (`BeamSearch.advance`, then `beams()` at any point): what
        `decode_beams` runs over a whole utterance, and what a stream runs chunk by chunk.

        `alpha`, `beta`, `unk_score_offset` and `lm_score_boundary` override the decoder's own for this call
        (what `pipeline(..., decoder_kwargs=...)` passes); an unknown option is refused by name.
        `sum_alignments=True` (prefix beam search): a text's acoustic score sums all its CTC alignments.
        `False`: the score of its best alignment (Viterbi); with alpha = beta = 0 the result is then exactly
        the greedy transcript, which makes a check of the search. `prune_history` is pyctcdecode's and changes
        nothing here (histories are merged by text)."""
        if unknown:
            raise LanguageModelError(f"unknown decoding option(s) {sorted(unknown)}; the options are {DECODE_OPTIONS}")
        if lm_start_state is not None:
            raise LanguageModelError("lm_start_state is pyctcdecode's; this decoder starts every utterance at <s>")
        beam_width = DEFAULT_BEAM_WIDTH if beam_width is None else beam_width
        if isinstance(beam_width, bool) or not isinstance(beam_width, (int, np.integer)) or beam_width < 1:
            raise LanguageModelError(f"beam_width must be a positive integer, got {beam_width!r}")
        beam_prune_logp = DEFAULT_BEAM_PRUNE_LOGP if beam_prune_logp is None else beam_prune_logp
        token_min_logp = DEFAULT_TOKEN_MIN_LOGP if token_min_logp is None else token_min_logp
        check_range("beam_prune_logp", beam_prune_logp, -1e9, 0.0)
        check_range("token_min_logp", token_min_logp, -1e9, 0.0)
        weight = DEFAULT_HOTWORD_WEIGHT if hotword_weight is None else hotword_weight
        check_range("hotword_weight", weight, *HOTWORD_WEIGHT_RANGE)
        hot = _Hotwords([hotwords] if isinstance(hotwords, str) else hotwords, weight, self.characters)
        weights = self._weights(alpha, beta, unk_score_offset, lm_score_boundary)
        merge = _logaddexp if sum_alignments else max
        return BeamSearch(self, int(beam_width), float(beam_prune_logp), float(token_min_logp), hot, weights, merge)

    def decode(self, logits, **kwargs) -> str:
        return self.decode_beams(logits, **kwargs)[0].text

    def _weights(self, alpha=None, beta=None, unk_score_offset=None, lm_score_boundary=None) -> "_Weights":
        """The decoder's weights, with those given for one call (checked as `reset_params` checks them)."""
        check_range("alpha", alpha, *ALPHA_RANGE)
        check_range("beta", beta, *BETA_RANGE)
        check_range("unk_score_offset", unk_score_offset, -1000.0, 0.0)
        return _Weights(
            self.alpha if alpha is None else float(alpha),
            self.beta if beta is None else float(beta),
            self.unk_score_offset if unk_score_offset is None else float(unk_score_offset),
            self.score_boundary if lm_score_boundary is None else bool(lm_score_boundary),
        )

    def _word_score(self, context, word, hot, w):
        """LM score of a finished word: alpha * ln P + beta, the unknown-word offset, the hotword bonus."""
        score = w.beta
        lm = self.language_model
        if lm is not None and w.alpha > 0:  # alpha = 0: no LM at all, the unknown-word offset included
            score += w.alpha * lm.score(context, word)
            if not lm.in_vocabulary(word) and word not in hot.words:
                score += w.unk_score_offset
        if word in hot.words:
            score += hot.weight
        return score

    def _partial_score(self, partial, hot, w):
        """Score of an unfinished word: the unknown-word offset once it begins no known word, or the hotword bonus
        while it begins a hotword. With `hot` empty, the score the word has without hotwords."""
        if hot and partial in hot.prefixes:
            return hot.partial(partial)
        if self.language_model is not None and w.alpha > 0:
            prefixes = self._vocabulary_prefixes()
            if prefixes and partial not in prefixes:  # no word list (a KenLM binary alone): no penalty
                return w.unk_score_offset
        return 0.0

    def _next_context(self, context, word):
        order = getattr(self.language_model, "order", 1)
        return (context + (word,))[-(order - 1) :] if order > 1 else ()

    @staticmethod
    def _prune(new, beam_width, beam_prune_logp, hotwords, merge):
        """The best prefixes, best first (the next frame's entries then take their word frames from the likeliest
        prefix). With hotwords, also the best by the score without the unfinished word's hotword bonus: a bonus
        that a word loses when it leaves the hotword's spelling must not have pruned the words the audio says
        (they came out cut short, 'бу' for 'будет' with the hotword 'будильник')."""

        def best(partial):
            scored = [(merge(b.p_blank, b.p_nonblank) + b.lm_score + partial(b), text) for text, b in new.items()]
            scored = heapq.nlargest(beam_width, scored) if len(scored) > beam_width else sorted(scored, reverse=True)
            threshold = scored[0][0] + beam_prune_logp
            return [text for score, text in scored if score >= threshold]

        kept = best(lambda b: b.partial_score)
        if hotwords:
            kept += [text for text in best(lambda b: b.plain_partial_score) if text not in set(kept)]
        return {text: new[text] for text in kept}

    def _finish(self, committed, prefixes, hot, w, merge=_logaddexp) -> list:
        finished = {}  # text -> [acoustic score, LM score, words]
        for text, prefix in prefixes.items():
            acoustic, lm, context, words = (
                merge(prefix.p_blank, prefix.p_nonblank),
                prefix.lm_score,
                prefix.context,
                prefix.words,
            )
            if text and text[-1] != " ":
                word = text[text.rfind(" ") + 1 :]
                lm += self._word_score(context, word, hot, w)
                context = self._next_context(context, word)
                words = words + ((word, prefix.word_start, prefix.word_end),)
            words = committed.words + words
            if self.language_model is not None and w.alpha > 0 and w.score_boundary and words:
                lm += w.alpha * self.language_model.score(context, EOS)
            final = (committed.text + text).strip()
            previous = finished.get(final)
            if previous is None:
                finished[final] = [acoustic, lm, words]
            else:
                previous[0] = merge(previous[0], acoustic)
        output = [
            OutputBeam(text, None, [(w, (s, e)) for w, s, e in words], acoustic, acoustic + lm)
            for text, (acoustic, lm, words) in finished.items()
        ]
        output.sort(key=lambda beam: beam.lm_score, reverse=True)
        return output or [OutputBeam("", None, [], 0.0, 0.0)]

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
            raise LanguageModelError(
                f"{alphabet_path} is missing: a language model folder needs the alphabet of the "
                "logits (run build_lm.py again)"
            )
        try:
            alphabet = json.loads(alphabet_path.read_text(encoding="utf-8"))
            labels = alphabet["labels"]
            if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
                raise TypeError
        except (ValueError, KeyError, TypeError) as error:
            raise LanguageModelError(f"{alphabet_path} is not a valid alphabet ({error})") from None
        if alphabet.get("is_bpe"):
            raise LanguageModelError(
                f"{alphabet_path}: BPE alphabets are not supported; this decoder is for characters"
            )
        lm_dir = folder / LM_DIR
        files = (
            sorted(p for p in lm_dir.iterdir() if p.name not in (ATTRS_FILE, UNIGRAMS_FILE)) if lm_dir.is_dir() else []
        )
        if len(files) != 1:
            raise LanguageModelError(
                f"{lm_dir} must hold exactly one language model file besides {ATTRS_FILE} and "
                f"{UNIGRAMS_FILE}, found {[p.name for p in files]}"
            )
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


class BeamSearch:
    """One utterance's CTC prefix beam search with the language model, frame by frame: `advance(logits)` takes the
    next frames, `beams()` gives the best texts as if the utterance ended there (`OutputBeam`s, best first), and the
    search goes on. `CTCBeamSearchDecoder.search(**options)` makes one; `decode_beams` is one `advance` over a whole
    utterance, so a stream decoded chunk by chunk gets what its whole recording gets."""

    def __init__(self, decoder, beam_width, beam_prune_logp, token_min_logp, hot, w, merge=_logaddexp):
        self.decoder, self.beam_width, self.beam_prune_logp, self.token_min_logp = (
            decoder,
            beam_width,
            beam_prune_logp,
            token_min_logp,
        )
        self.hot, self.w, self.merge = hot, w, merge
        start_context = (BOS,) if w.score_boundary else ()
        self.prefixes = {"": _Prefix(0.0, NEG_INF, 0.0, 0.0, 0.0, start_context, (), -1, -1, 0.0)}
        self.committed = _Committed()  # the words every prefix shares, taken out of the keys (see _Committed)
        self.partial_scores = {}  # unfinished word -> (its score, its score without hotwords): of the word alone
        self.frames = 0  # frames searched so far

    def beams(self) -> list[OutputBeam]:
        self.prefixes = self.committed.take(self.prefixes)
        return self.decoder._finish(self.committed, self.prefixes, self.hot, self.w, self.merge)

    def best_text(self) -> str:
        """The best text so far; unlike `beams`, nothing of the search changes (a partial transcript)."""
        return self.decoder._finish(self.committed, self.prefixes, self.hot, self.w, self.merge)[0].text

    def advance(self, logits):
        """Searches the next frames, `logits` (frames, labels): logits or log-probabilities."""
        logits = np.asarray(logits)
        finite = np.isfinite(logits).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise LanguageModelError(
                f"frame {self.frames + bad[0]} of the logits is NaN or infinite ({len(bad)} such frames of "
                f"{len(logits)}): the model's output is broken there"
            )
        self._search(log_softmax(logits))

    # Longer than our ~60 lines: the frame loop is the decoder's hot path, and splitting it into calls per frame
    # and prefix would cost time where all of the search's time goes.
    def _search(self, logp):
        decoder, merge, w, hot = self.decoder, self.merge, self.w, self.hot
        beam_width, beam_prune_logp, token_min_logp = self.beam_width, self.beam_prune_logp, self.token_min_logp
        labels, blank = decoder.labels, decoder.blank
        prefixes, committed, partial_scores = self.prefixes, self.committed, self.partial_scores
        no_hotwords = _Hotwords((), 0.0, decoder.characters)
        frames = logp.shape[0]
        above = logp > token_min_logp
        above[:, blank] = False
        best_tokens = logp.argmax(axis=1)
        for t in range(self.frames, self.frames + frames):
            if t % COMMIT_EVERY == COMMIT_EVERY - 1:
                prefixes = committed.take(prefixes)
            row = logp[t - self.frames]
            candidates = np.flatnonzero(above[t - self.frames]).tolist()
            best = int(best_tokens[t - self.frames])
            if best != blank and best not in candidates:
                candidates.append(best)
            blank_lp = float(row[blank])
            if not candidates:  # only the blank: every prefix stays, no new text
                for prefix in prefixes.values():
                    prefix.p_blank = merge(prefix.p_blank, prefix.p_nonblank) + blank_lp
                    prefix.p_nonblank = NEG_INF
                    prefix.best = prefix.p_blank
                continue
            lps = [(c, labels[c], float(row[c])) for c in candidates]
            new = {}
            for text, prefix in prefixes.items():
                total = merge(prefix.p_blank, prefix.p_nonblank)
                last = text[-1] if text else ""
                # blank: same text
                p = total + blank_lp
                entry = new.get(text)
                if entry is None:
                    new[text] = prefix.extended(p, NEG_INF, prefix.word_start, prefix.word_end, p)
                else:
                    entry.p_blank = merge(entry.p_blank, p)
                    entry.keep_alignment_if_better(p, prefix.words, prefix.word_start, prefix.word_end)
                for _, ch, lp in lps:
                    if ch == " ":
                        if not text or last == " ":  # a leading or repeated space leaves the text as it is
                            entry = new[text]
                            entry.p_nonblank = merge(entry.p_nonblank, total + lp)
                            continue
                        # a space ends the word
                        p = total + lp
                        word = text[text.rfind(" ") + 1 :]
                        words = prefix.words + ((word, prefix.word_start, prefix.word_end),)
                        entry = new.get(text + " ")
                        if entry is None:
                            new[text + " "] = _Prefix(
                                NEG_INF,
                                p,
                                prefix.lm_score + decoder._word_score(prefix.context, word, hot, w),
                                0.0,
                                0.0,
                                decoder._next_context(prefix.context, word),
                                words,
                                -1,
                                -1,
                                p,
                            )
                        else:
                            entry.p_nonblank = merge(entry.p_nonblank, p)
                            if p > entry.best:
                                entry.words, entry.best = words, p
                        continue
                    if ch == last:
                        # the same character again: collapsed (from non-blank) or a new one (after a blank)
                        entry = new[text]
                        p = prefix.p_nonblank + lp
                        entry.p_nonblank = merge(entry.p_nonblank, p)
                        entry.keep_alignment_if_better(p, prefix.words, prefix.word_start, t + 1)
                        p = prefix.p_blank + lp
                    else:
                        p = total + lp
                    if p == NEG_INF:
                        continue
                    new_text = text + ch
                    starts_word = not text or last == " "
                    word_start = t if starts_word else prefix.word_start
                    entry = new.get(new_text)
                    if entry is None:
                        partial = ch if starts_word else new_text[new_text.rfind(" ") + 1 :]
                        scores = partial_scores.get(partial)
                        if scores is None:
                            scores = partial_scores[partial] = (
                                decoder._partial_score(partial, hot, w),
                                decoder._partial_score(partial, no_hotwords, w),
                            )
                        new[new_text] = _Prefix(
                            NEG_INF, p, prefix.lm_score, *scores, prefix.context, prefix.words, word_start, t + 1, p
                        )
                    else:
                        entry.p_nonblank = merge(entry.p_nonblank, p)
                        entry.keep_alignment_if_better(p, prefix.words, word_start, t + 1)
            prefixes = decoder._prune(new, beam_width, beam_prune_logp, bool(hot), merge)
        self.prefixes, self.frames = prefixes, self.frames + frames


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
        raise LanguageModelError(
            f"{where} does not cover the tokenizer: it lacks {missing} (the LM was built for "
            "another vocabulary; build it again with build_lm.py)"
        )
    if list(labels) != expected:
        diff = [(i, a, b) for i, (a, b) in enumerate(zip(labels, expected)) if a != b][:5]
        raise LanguageModelError(
            f"{where} does not match the tokenizer: {len(labels)} labels for {len(expected)} "
            f"logit columns, first differences (column, alphabet, tokenizer): {diff}"
        )


DECODER_KINDS = ("greedy", "lm", "auto")


def load_decoder(folder, kind="lm", tokenizer=None, **overrides) -> "CTCBeamSearchDecoder | None":
    """The one way to a model folder's decoder (the commands, evaluation, LM tuning, the LM processor and the
    pipeline class all take it): `kind` "greedy" gives None (greedy decoding), "lm" the folder's language model,
    "auto" the language model where the folder has one and None otherwise. `tokenizer`: its alphabet is checked
    against the decoder's, column for column. `overrides` (alpha, beta, unk_score_offset, score_boundary) replace
    attrs.json's values. Errors name the folder or file and what to do."""
    if kind not in DECODER_KINDS:
        raise ValueError(f"decoder kind must be one of {', '.join(DECODER_KINDS)}, got {kind!r}")
    if kind == "greedy" or (kind == "auto" and not has_language_model(folder)):
        return None
    if not has_language_model(folder):
        raise LanguageModelError(
            f"{folder} has no {LM_DIR}/ folder; add one with `ebranchformer-build-lm {folder}`, or decode greedily"
        )
    decoder = CTCBeamSearchDecoder.load_from_dir(folder, **overrides)
    if tokenizer is not None:
        check_alphabet(decoder.labels, tokenizer, str(Path(folder) / ALPHABET_FILE))
    return decoder
