"""modeling_ebranchformer.beam_search: the CTC prefix beam search with the n-gram LM against brute force and
greedy decoding, hotwords, options and their errors, non-finite logits."""

import itertools

import jiwer
import numpy as np
import pytest
from lm_inputs import BLANK, LABELS, TOKENIZER, crafted_logits, crafted_test_sets, greedy, near_miss

from modeling_ebranchformer import EBranchformerCTCTokenizer
from modeling_ebranchformer.beam_search import CTCBeamSearchDecoder
from modeling_ebranchformer.ngram import LanguageModelError, NGramLanguageModel, build_arpa


def brute_force_best(logits, labels, lm, alpha, beta, unk_offset=-10.0):
    """Every alignment enumerated: the text with the highest ln P_ctc(text) + LM score."""
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    texts = {}
    for path in itertools.product(range(len(labels)), repeat=len(logits)):
        collapsed = [k for i, k in enumerate(path) if i == 0 or k != path[i - 1]]
        text = " ".join("".join(labels[k] for k in collapsed).split())
        score = sum(logp[t, k] for t, k in enumerate(path))
        texts[text] = np.logaddexp(texts.get(text, -np.inf), score)
    best = None
    for text, acoustic in texts.items():
        words, context, lm_score = text.split(), ("<s>",), 0.0
        for word in words:
            lm_score += alpha * lm.score(context, word) + beta + (0 if lm.in_vocabulary(word) else unk_offset)
            context = (context + (word,))[-(lm.order - 1) :]
        if words:
            lm_score += alpha * lm.score(context, "</s>")
        if best is None or acoustic + lm_score > best[1]:
            best = (text, acoustic + lm_score)
    return best


@pytest.mark.parametrize("alpha, beta", [(0.0, 0.0), (1.0, 0.5), (2.0, -1.0)])
def test_beam_search_finds_what_brute_force_finds(tmp_path, alpha, beta):
    labels = ["", " ", "а", "б"]
    path = tmp_path / "lm.arpa"
    path.write_text(build_arpa([s.split() for s in ["аб ба", "аб", "ба аб аб", "б"]], 2))
    lm = NGramLanguageModel.from_file(path)
    decoder = CTCBeamSearchDecoder(labels, lm, alpha=alpha, beta=beta)
    rng = np.random.default_rng(int(alpha * 10))
    for _ in range(4):
        logits = rng.normal(0, 1.5, (6, 4))
        text, score = brute_force_best(logits, labels, lm, alpha, beta)
        beams = decoder.decode_beams(logits, beam_width=10_000, beam_prune_logp=-1e9, token_min_logp=-1e9)
        assert beams[0][0] == text
        assert beams[0][4] == pytest.approx(score, abs=1e-6)


def test_all_blank_gives_the_empty_text(corpus_lm):
    decoder = CTCBeamSearchDecoder(LABELS, corpus_lm)
    logits = np.full((40, len(LABELS)), -5.0, dtype=np.float32)
    logits[:, BLANK] = 5.0
    assert decoder.decode_beams(logits)[0][0] == "" and decoder.decode_beams(logits)[0][2] == []
    assert decoder.decode(np.zeros((0, len(LABELS)), dtype=np.float32)) == ""


def test_clear_speech_with_alpha_beta_zero_is_the_greedy_transcript(corpus_lm):
    decoder = CTCBeamSearchDecoder(LABELS, corpus_lm, alpha=0.0, beta=0.0)
    rng = np.random.default_rng(0)
    for text in ["салют выключи свет", "переведи пять тысяч рублей", "я", "ааа ббб"]:
        logits = crafted_logits(text, rng)
        assert greedy(logits) == text
        beams = decoder.decode_beams(logits)
        assert beams[0][0] == text
        # word offsets: first and last frame of each word's characters (end exclusive), as the tokenizer's
        expected = TOKENIZER.decode(logits.argmax(-1), output_word_offsets=True).word_offsets
        assert [(w, s, e) for w, (s, e) in beams[0][2]] == [
            (o["word"], o["start_offset"], o["end_offset"]) for o in expected
        ]


def test_on_the_embedded_test_sets_alpha_beta_zero_stays_within_half_a_point_of_greedy_and_the_lm_helps(corpus_lm):
    """Logits crafted from the test sets' transcripts with noise and near-miss letters (greedy makes errors)."""
    references, logits = crafted_test_sets()
    greedy_wer = jiwer.wer(references, [greedy(x) for x in logits])
    plain = CTCBeamSearchDecoder(LABELS, corpus_lm, alpha=0.0, beta=0.0)
    beam_wer = jiwer.wer(references, [plain.decode(x, beam_width=16) for x in logits])
    lm = CTCBeamSearchDecoder(LABELS, corpus_lm, alpha=0.5, beta=1.0)
    lm_wer = jiwer.wer(references, [lm.decode(x, beam_width=16) for x in logits])
    assert 0.1 < greedy_wer < 0.5  # the crafted errors are there
    assert abs(beam_wer - greedy_wer) <= 0.005
    assert lm_wer < 0.5 * greedy_wer
    # scoring texts by their best alignment, the search must find exactly the greedy transcripts
    assert [plain.decode(x, beam_width=8, sum_alignments=False) for x in logits] == [greedy(x) for x in logits]


def test_a_hotword_turns_a_near_miss_into_the_hotword(corpus_lm):
    logits = near_miss("позвони кукурузе", 11, "о")  # greedy hears "кукорузе"
    assert greedy(logits) == "позвони кукорузе"
    no_lm = CTCBeamSearchDecoder(LABELS, None, alpha=0.0, beta=0.0)
    assert no_lm.decode(logits) == "позвони кукорузе"
    assert no_lm.decode(logits, hotwords=["Кукурузе"]) == "позвони кукурузе"
    assert no_lm.decode(logits, hotwords=["кукурузе"], hotword_weight=0.0) == "позвони кукорузе"
    # with the corpus LM, where neither spelling is a known word
    with_lm = CTCBeamSearchDecoder(LABELS, corpus_lm)
    assert with_lm.decode(logits) == "позвони кукорузе"
    assert with_lm.decode(logits, hotwords=["кукурузе"]) == "позвони кукурузе"
    with pytest.raises(LanguageModelError, match="hotword 'kukuruza'"):
        with_lm.decode(logits, hotwords=["kukuruza"])


def test_the_lm_corrects_a_near_miss_towards_a_known_word(corpus_lm):
    logits = near_miss("салют выключи свет", 3, "о")  # "салот"
    assert greedy(logits) == "салот выключи свет"
    assert CTCBeamSearchDecoder(LABELS, corpus_lm).decode(logits) == "салют выключи свет"


@pytest.mark.parametrize("name, value", [("alpha", -1.0), ("alpha", 100.0), ("beta", float("nan")), ("beta", 50)])
def test_out_of_range_weights_are_refused_naming_the_value(corpus_lm, name, value):
    with pytest.raises(LanguageModelError, match=f"{name}"):
        CTCBeamSearchDecoder(LABELS, corpus_lm, **{name: value})
    decoder = CTCBeamSearchDecoder(LABELS, corpus_lm)
    with pytest.raises(LanguageModelError, match=f"{name}"):
        decoder.reset_params(**{name: value})
    with pytest.raises(LanguageModelError, match="beam_width"):
        decoder.decode_beams(np.zeros((3, len(LABELS))), beam_width=0)


HOTWORDS = ["будильник", "двести", "восемнадцать", "андрей", "салют"]


@pytest.mark.parametrize("weight", [10.0, 20.0, 50.0])
@pytest.mark.parametrize(
    "text, hotword",
    [("будет", "будильник"), ("два", "двести"), ("восемь", "восемнадцать"), ("андроид", "андрей"), ("салуд", "салют")],
)
def test_a_word_sharing_a_hotwords_prefix_is_not_cut_short(corpus_lm, text, hotword, weight):
    """The partial-word bonus draws beams towards the hotword; a word that leaves the hotword's spelling must
    still win where the audio says it (it was cut to 'бу', 'дв', 'восемн', 'андре', 'сал')."""
    logits = crafted_logits(f"позвони {text} сейчас", np.random.default_rng(3), noise=0.5)
    assert greedy(logits) == f"позвони {text} сейчас"
    for lm in (None, corpus_lm):
        decoder = CTCBeamSearchDecoder(LABELS, lm)
        words = decoder.decode(logits, hotwords=[hotword], hotword_weight=weight).split()
        assert len(words) == 3 and words[1] in (text, hotword), (lm, words)


def test_hotwords_cost_little_on_speech_without_them(corpus_lm):
    """On the embedded test sets' transcripts (crafted logits with near misses), hotwords that share prefixes
    with many words leave the WER within a point of decoding without them."""
    from ebranchformer_ru.metrics import wer

    references, logits = crafted_test_sets()
    decoder = CTCBeamSearchDecoder(LABELS, corpus_lm)
    plain = wer(references, [decoder.decode(x) for x in logits])
    for weight in (20.0, 50.0):
        boosted = wer(references, [decoder.decode(x, hotwords=HOTWORDS, hotword_weight=weight) for x in logits])
        assert boosted <= plain + 0.01, (weight, plain, boosted)


def test_options_are_applied_or_refused_by_name(corpus_lm):
    logits = crafted_logits("салют выключи свет", np.random.default_rng(0), noise=1.5, confusion=0.2)
    decoder = CTCBeamSearchDecoder(LABELS, corpus_lm, alpha=0.5, beta=1.0)
    zero = CTCBeamSearchDecoder(LABELS, corpus_lm, alpha=0.0, beta=0.0).decode_beams(logits)[0]
    # alpha and beta given to decode_beams apply to that call only (the pipeline's decoder_kwargs reach here)
    assert decoder.decode_beams(logits, alpha=0.0, beta=0.0)[0] == zero
    assert (decoder.alpha, decoder.beta) == (0.5, 1.0)
    for wrong in ({"beamwidth": 8}, {"hotword": ["салют"]}, {"lm_start_state": object()}):
        with pytest.raises(LanguageModelError, match=next(iter(wrong))):
            decoder.decode_beams(logits, **wrong)
    with pytest.raises(LanguageModelError, match="hotword_weight=5000"):
        decoder.decode_beams(logits, hotwords=["салют"], hotword_weight=5000)


def test_non_finite_logits_are_named_by_frame_and_utterance(corpus_lm):
    from modeling_ebranchformer import EBranchformerFeatureExtractor
    from modeling_ebranchformer.processing_lm import EBranchformerProcessorWithLM

    logits = crafted_logits("салют", np.random.default_rng(0))
    bad = logits.copy()
    bad[4, 7] = np.nan
    decoder = CTCBeamSearchDecoder(LABELS, corpus_lm)
    with pytest.raises(LanguageModelError, match="frame 4 .*NaN or infinite"):
        decoder.decode_beams(bad)
    processor = EBranchformerProcessorWithLM(EBranchformerFeatureExtractor(), EBranchformerCTCTokenizer(), decoder)
    frames = min(len(logits), len(bad))
    with pytest.raises(LanguageModelError, match="utterance 1, frame 4"):
        processor.batch_decode(np.stack([logits[:frames], bad[:frames]]))
