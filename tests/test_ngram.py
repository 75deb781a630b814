"""modeling_ebranchformer.ngram: the n-gram builder (interpolated Kneser-Ney) and the ARPA reader against hand
computations, corrupt and binary files, KenLM binaries through the kenlm module."""

import gzip
import itertools
import math
import sys
from collections import Counter

import pytest
from lm_inputs import ARPA, LABELS, near_miss, train_sentences

from modeling_ebranchformer.beam_search import CTCBeamSearchDecoder
from modeling_ebranchformer.ngram import LanguageModelError, NGramLanguageModel, build_arpa, kneser_ney


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_every_context_distribution_sums_to_one(tmp_path, order):
    sentences = [s.split() for s in ["а б в", "а б г", "б в а", "в в", "а", "г а б в"]]
    path = tmp_path / "lm.arpa"
    path.write_text(build_arpa(sentences, order))
    lm = NGramLanguageModel.from_file(path)
    vocabulary = sorted(lm.vocabulary - {"<s>"})
    assert set(vocabulary) == {"а", "б", "в", "г", "</s>", "<unk>"}
    for context in itertools.product(["<s>", "а", "б", "в", "г", "д"], repeat=order - 1):
        if "<s>" in context[1:]:
            continue
        total = sum(math.exp(lm.score(context, w)) for w in vocabulary)
        assert total == pytest.approx(1.0, abs=1e-5), context


def test_bigram_probabilities_are_interpolated_kneser_ney():
    """An independent computation of interpolated Kneser-Ney for a bigram model."""
    sentences = [s.split() for s in ["а б", "а б", "б а", "в б"]]
    estimates = kneser_ney(sentences, 2)
    padded = [["<s>", *s, "</s>"] for s in sentences]
    bigrams = Counter((s[i], s[i + 1]) for s in padded for i in range(len(s) - 1))
    continuation = Counter(w for (_, w) in bigrams)  # distinct left neighbours
    n1, n2 = sum(c == 1 for c in continuation.values()), sum(c == 2 for c in continuation.values())
    d1 = n1 / (n1 + 2 * n2)
    total = sum(continuation.values())
    vocabulary = set(continuation) | {"<unk>"}
    unigram = {w: (max(continuation[w] - d1, 0) + d1 * len(continuation) / len(vocabulary)) / total for w in vocabulary}
    c1, c2 = Counter(bigrams.values())[1], Counter(bigrams.values())[2]
    d2 = c1 / (c1 + 2 * c2)
    for (h, w), count in bigrams.items():
        context_total = sum(c for (x, _), c in bigrams.items() if x == h)
        types = sum(1 for (x, _) in bigrams if x == h)
        expected = (count - d2) / context_total + d2 * types / context_total * unigram[w]
        assert 10 ** estimates[2][(h, w)][0] == pytest.approx(expected, rel=1e-9), (h, w)
    assert 10 ** estimates[1][("<unk>",)][0] == pytest.approx(unigram["<unk>"], rel=1e-9)


def test_arpa_back_off_matches_a_hand_computation(tmp_path):
    path = tmp_path / "hand.arpa.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(ARPA)
    lm = NGramLanguageModel.from_file(path)
    ln10 = math.log(10)
    assert lm.order == 3
    assert lm.score(("<s>", "а"), "б") == pytest.approx(-0.05 * ln10)  # the trigram
    assert lm.score(("б", "а"), "б") == pytest.approx(-0.2 * ln10)  # no context "б а": bigram "а б"
    assert lm.score(("<s>", "а"), "</s>") == pytest.approx((-0.1 - 0.25 - 0.6) * ln10)  # two back-offs
    assert lm.score(("а",), "а") == pytest.approx((-0.25 - 0.5) * ln10)
    assert lm.score(("а",), "слово") == pytest.approx((-0.25 - 1.0) * ln10)  # unknown: <unk>
    assert not lm.in_vocabulary("слово") and lm.in_vocabulary("а")
    assert lm.sentence_score(["а", "б"]) == pytest.approx((-0.3 - 0.05 - 0.15 - 0.4) * ln10)


@pytest.mark.parametrize(
    "corruption, message",
    [
        (lambda t: t.replace("\\end\\\n", ""), "truncated"),
        (lambda t: t.replace("ngram 2=3", "ngram 2=4"), "announces 4 2-grams"),
        (lambda t: t.replace("-0.2\tа б", "x0.2\tа б"), "line 15"),
        (lambda t: t.replace("\\data\\\n", ""), "no \\data\\"),
        (lambda t: t.replace("-0.4\tб </s>", "-0.4\tб"), "line 16"),
    ],
)
def test_corrupt_arpa_files_are_refused_naming_the_file(tmp_path, corruption, message):
    path = tmp_path / "bad.arpa"
    path.write_text(corruption(ARPA))
    with pytest.raises(LanguageModelError, match="bad.arpa") as error:
        NGramLanguageModel.from_file(path)
    assert message in str(error.value)


def test_binary_garbage_and_kenlm_binaries(tmp_path):
    garbage = tmp_path / "lm.bin"
    garbage.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(LanguageModelError, match="lm.bin is neither an ARPA"):
        NGramLanguageModel.from_file(garbage)
    kenlm_file = tmp_path / "golos.binary"
    kenlm_file.write_bytes(b"mmap lm http://kheafield.com/code format version 5\n\0\0\0garbage")
    try:
        import kenlm  # noqa: F401
    except ImportError:
        with pytest.raises(LanguageModelError, match="golos.binary is a KenLM binary.*ARPA"):
            NGramLanguageModel.from_file(kenlm_file)
    else:
        with pytest.raises(LanguageModelError, match="golos.binary"):
            NGramLanguageModel.from_file(kenlm_file)


class FakeKenLM:
    """A stand-in for the `kenlm` module (not installed here) with the calls KenLMLanguageModel makes, answering
    from an ARPA model: it checks our adapter's state handling and units, not kenlm itself."""

    class State:
        def __init__(self):
            self.context = ()

    class Model:
        def __init__(self, path):
            self._lm = NGramLanguageModel.from_file(str(path) + ".arpa")
            self.order = self._lm.order

        def __contains__(self, word):
            return word in self._lm.vocabulary

        def BeginSentenceWrite(self, state):
            state.context = ("<s>",)

        def NullContextWrite(self, state):
            state.context = ()

        def BaseScore(self, state, word, out):
            out.context = (state.context + (word,))[-(self.order - 1) :]
            return self._lm.score(state.context, word) / math.log(10)


def test_a_kenlm_binary_is_read_through_the_kenlm_module(tmp_path, monkeypatch, corpus_lm):
    binary = tmp_path / "golos.binary"
    binary.write_bytes(b"mmap lm http://kheafield.com/code format version 5\n")
    (tmp_path / "golos.binary.arpa").write_text(build_arpa(train_sentences(), 3), encoding="utf-8")
    monkeypatch.setitem(sys.modules, "kenlm", FakeKenLM)
    from modeling_ebranchformer.ngram import load_language_model

    lm = load_language_model(binary)
    assert lm.score(("<s>", "салют"), "выключи") == pytest.approx(corpus_lm.score(("<s>", "салют"), "выключи"))
    assert lm.score(("джой",), "позвони") == pytest.approx(corpus_lm.score(("джой",), "позвони"))
    assert lm.in_vocabulary("салют") and not lm.in_vocabulary("кукуруза")
    logits = near_miss("салют выключи свет", 3, "о")
    assert CTCBeamSearchDecoder(LABELS, lm).decode(logits) == "салют выключи свет"
