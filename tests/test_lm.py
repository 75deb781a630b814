"""Language-model decoding (issue #11): the n-gram builder and ARPA reader against hand computations, the beam
search against brute force, hotwords, the processor / pipeline / trust_remote_code folder, build_lm.py and
its errors."""

import gzip
import itertools
import json
import math
import shutil
import subprocess
import sys
import textwrap
from collections import Counter

import jiwer
import numpy as np
import pytest
import torch
from project import CORPUS, ROOT

from ebranchformer_ru.commands import build_lm as build_lm_command
from ebranchformer_ru.errors import Error, UsageError
from modeling_ebranchformer import (
    EBranchformerConfig,
    EBranchformerCTCTokenizer,
    EBranchformerForCTC,
    EBranchformerProcessor,
    EBranchformerProcessorWithLM,
)
from modeling_ebranchformer.beam_search import CTCBeamSearchDecoder, tokenizer_labels
from modeling_ebranchformer.ngram import LanguageModelError, NGramLanguageModel, build_arpa, kneser_ney

TOKENIZER = EBranchformerCTCTokenizer()
LABELS = tokenizer_labels(TOKENIZER)
BLANK = LABELS.index("")


def build_lm(argv):
    """`ebranchformer-build-lm ARGV`'s job on parsed options (errors raised, not exited)."""
    return build_lm_command.build_lm(build_lm_command.build_parser().parse_args(argv))


def train_sentences():
    return [json.loads(line)["text"].split() for line in (CORPUS / "train_opus" / "manifest.jsonl").open()]


@pytest.fixture(scope="module")
def corpus_lm(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm") / "lm.arpa"
    path.write_text(build_arpa(train_sentences(), 3), encoding="utf-8")
    return NGramLanguageModel.from_file(path)


# ---- the n-gram model


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


ARPA = """\\data\\
ngram 1=5
ngram 2=3
ngram 3=1

\\1-grams:
-1.0\t<unk>
-99\t<s>\t-0.5
-0.5\tа\t-0.25
-0.7\tб\t-0.2
-0.6\t</s>

\\2-grams:
-0.3\t<s> а\t-0.1
-0.2\tа б\t-0.15
-0.4\tб </s>

\\3-grams:
-0.05\t<s> а б

\\end\\
"""


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


# ---- the beam search


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


def crafted_logits(text, rng, frames=(2, 4), noise=1.0, confusion=0.0, confusion_margin=1.0):
    """Logits that spell `text` (each character for a few frames, blanks between), with noise; with
    probability `confusion` a character's frames favour another letter by `confusion_margin`."""
    letters = [i for i, c in enumerate(LABELS) if c not in ("", " ")]
    rows = [rng.normal(0, noise, len(LABELS)) + 8 * (np.arange(len(LABELS)) == BLANK)]
    for char in text:
        index = LABELS.index(char)
        wrong = rng.choice(letters) if char != " " and rng.random() < confusion else None
        for _ in range(rng.integers(*frames, endpoint=True)):
            row = rng.normal(0, noise, len(LABELS))
            row[index] += 8
            if wrong is not None and wrong != index:
                row[wrong] += 8 + confusion_margin
            rows.append(row)
        blank = rng.normal(0, noise, len(LABELS))
        blank[BLANK] += 8
        rows.append(blank)
    return np.array(rows, dtype=np.float32)


def crafted_test_sets():
    """The embedded crowd and farfield transcripts, and logits crafted from them with noise and near-miss
    letters (greedy decoding makes errors on them)."""
    rng = np.random.default_rng(1)
    references, logits = [], []
    for name in ("crowd", "farfield"):
        for line in (CORPUS / "test_opus" / name / "manifest.jsonl").open():
            references.append(json.loads(line)["text"])
            logits.append(crafted_logits(references[-1], rng, noise=1.5, confusion=0.06, confusion_margin=0.8))
    return references, logits


def greedy(logits):
    return TOKENIZER.decode(logits.argmax(-1))


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


def near_miss(text, confused_index, wrong_char, margin=0.4):
    """Logits spelling `text` where the character at `confused_index` (one frame) slightly favours `wrong_char`."""
    rows = []
    for i, char in enumerate(text):
        for _ in range(1 if i == confused_index else 3):
            row = np.zeros(len(LABELS), dtype=np.float32)
            row[LABELS.index(char)] = 6.0
            if i == confused_index:
                row[LABELS.index(wrong_char)] = 6.0 + margin
            rows.append(row)
        blank = np.zeros(len(LABELS), dtype=np.float32)
        blank[BLANK] = 6.0
        rows.append(blank)
    return np.array(rows)


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


# ---- the model folder: build_lm.py, AutoProcessor, pipeline, trust_remote_code


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory, tiny_config_values, speech_like):
    torch.manual_seed(0)
    model = EBranchformerForCTC(EBranchformerConfig(**tiny_config_values)).eval()
    processor = EBranchformerProcessor()
    # As in test_hub: a random encoder with a head that reads one channel, "в" where it is above its median,
    # space where below, so that transcripts have many words with distinct times; other letters slightly less
    # likely than blank, so that the beam search has candidates to weigh.
    with torch.no_grad():
        inputs = processor(audio=speech_like(3.0), sampling_rate=16000, return_tensors="pt")
        hidden = model.ebranchformer(**inputs).last_hidden_state[0]
        channel = int(hidden.std(0).argmax())
        model.lm_head.weight.zero_()
        model.lm_head.bias.fill_(-4.0)
        model.lm_head.weight[3, channel], model.lm_head.weight[0, channel] = 10.0, -10.0
        model.lm_head.bias[[3, 0]] = torch.tensor([-10.0, 10.0]) * hidden[:, channel].median()
        model.lm_head.bias[33] = 0.0
    folder = tmp_path_factory.mktemp("model") / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    plain = folder.with_name("plain")
    shutil.copytree(folder, plain)
    build_lm([str(folder)])
    return model, folder, plain


def model_logits(model, processor, wave):
    with torch.no_grad():
        return model(**processor(audio=wave, sampling_rate=16000, return_tensors="pt")).logits


def test_folder_layout_and_auto_processor(lm_folder):
    from transformers import AutoProcessor

    _, folder, plain = lm_folder
    assert json.loads((folder / "alphabet.json").read_text())["labels"] == LABELS
    assert sorted(p.name for p in (folder / "language_model").iterdir()) == ["attrs.json", "lm.arpa", "unigrams.txt"]
    assert set(json.loads((folder / "language_model" / "attrs.json").read_text())) == {
        "alpha",
        "beta",
        "unk_score_offset",
        "score_boundary",
    }
    vocabulary = {w for s in train_sentences() for w in s}
    assert set((folder / "language_model" / "unigrams.txt").read_text().split()) == vocabulary
    processor = AutoProcessor.from_pretrained(folder)
    assert type(processor) is EBranchformerProcessorWithLM
    assert processor.language_model.order == 3 and "салют" in processor.language_model.vocabulary
    assert type(AutoProcessor.from_pretrained(plain)) is EBranchformerProcessor


def test_batch_decode_beam_searches_logits_and_decodes_ids_greedily(lm_folder, speech_like):
    from transformers import AutoProcessor

    model, folder, _ = lm_folder
    processor = AutoProcessor.from_pretrained(folder)
    logits = torch.cat([model_logits(model, processor, speech_like(2.0, seed)) for seed in (1, 2)])
    output = processor.batch_decode(logits, output_word_offsets=True, beam_width=16)
    for i in range(2):
        beams = processor.decoder.decode_beams(logits[i].numpy(), beam_width=16)
        assert output.text[i] == beams[0][0] and output.text[i]
        assert [(o["word"], o["start_offset"], o["end_offset"]) for o in output.word_offsets[i]] == [
            (w, s, e) for w, (s, e) in beams[0][2]
        ]
    ids = logits.argmax(-1)
    assert processor.batch_decode(ids) == processor.tokenizer.batch_decode(ids)
    noisy = torch.tensor(crafted_logits("салют выключи свет", np.random.default_rng(3), noise=2.0))[None]
    n_best = processor.batch_decode(noisy, n_best=2)
    assert n_best.text[0][0] == processor.batch_decode(noisy).text[0] == "салют выключи свет"
    assert len(set(n_best.text[0])) == 2 and n_best.lm_score[0] == sorted(n_best.lm_score[0], reverse=True)
    # per-call weights do not stick
    processor.batch_decode(logits, alpha=0.0, beta=0.0)
    assert processor.decoder.alpha == 0.5 and processor.decoder.beta == 1.5
    with pytest.raises(LanguageModelError, match="alpha"):
        processor.batch_decode(logits, alpha=11.0)


def test_pipeline_decodes_with_the_lm_with_chunks_and_word_times(lm_folder, speech_like):
    from transformers import AutoProcessor, pipeline

    from modeling_ebranchformer import EBranchformerASRPipeline

    model, folder, plain = lm_folder
    processor = AutoProcessor.from_pretrained(folder)
    asr = pipeline("automatic-speech-recognition", model=str(folder), pipeline_class=EBranchformerASRPipeline)
    assert type(asr) is EBranchformerASRPipeline and asr.type == "ctc_with_lm"
    wave = speech_like(3.0, 5)
    result = asr(wave.copy(), return_timestamps="word")
    output = processor.batch_decode(model_logits(model, processor, wave), output_word_offsets=True)
    assert result["text"] == output.text[0]
    assert [c["text"] for c in result["chunks"]] == result["text"].split()
    for chunk, offset in zip(result["chunks"], output.word_offsets[0]):
        assert chunk["timestamp"] == pytest.approx((offset["start_offset"] * 0.04, offset["end_offset"] * 0.04))
    long = np.concatenate([speech_like(6.0, seed) for seed in range(4)])  # 24 s in chunks of 10 s
    chunked = asr(long, chunk_length_s=10, return_timestamps="word")
    starts = [c["timestamp"][0] for c in chunked["chunks"]]
    assert starts == sorted(starts) and starts[-1] > 15.0
    assert (
        pipeline("automatic-speech-recognition", model=str(plain), pipeline_class=EBranchformerASRPipeline).type
        == "ctc"
    )
    greedy = pipeline(
        "automatic-speech-recognition", model=str(folder), pipeline_class=EBranchformerASRPipeline, language_model=False
    )
    assert greedy.type == "ctc"
    # the stock pipeline: greedy unless given the decoder, then the same LM decoding
    assert pipeline("automatic-speech-recognition", model=str(folder)).type == "ctc"
    stock = pipeline("automatic-speech-recognition", model=str(folder), decoder=processor.decoder)
    assert type(stock) is not EBranchformerASRPipeline and stock(wave.copy())["text"] == output.text[0]


@pytest.mark.slow
def test_folder_loads_without_the_package_through_trust_remote_code(lm_folder, tmp_path, speech_like):
    from transformers import AutoProcessor

    model, folder, _ = lm_folder
    processor = AutoProcessor.from_pretrained(folder)
    logits = model_logits(model, processor, speech_like(2.0, 7))
    np.save(tmp_path / "logits.npy", logits.numpy())
    np.save(tmp_path / "wave.npy", speech_like(2.0, 7))
    script = textwrap.dedent(f"""
        import sys, json
        sys.modules["modeling_ebranchformer"] = None  # importing our package must fail here
        import numpy as np
        from transformers import AutoProcessor, pipeline
        processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
        assert type(processor).__name__ == "EBranchformerProcessorWithLM"
        text = processor.batch_decode(np.load({str(tmp_path / "logits.npy")!r})).text[0]
        asr = pipeline("automatic-speech-recognition", model={str(folder)!r}, trust_remote_code=True,
                       decoder=processor.decoder)
        piped = asr(np.load({str(tmp_path / "wave.npy")!r}))["text"]
        print(json.dumps([text, piped]))
    """)
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    text, piped = json.loads(run.stdout.strip().splitlines()[-1])
    assert text == processor.batch_decode(logits).text[0] == piped


def test_build_lm_refuses_bad_input_and_leaves_the_folder_as_it_was(lm_folder, tmp_path, capsys):
    _, folder, _ = lm_folder
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    with pytest.raises(Error, match="language_model exists; pass --overwrite"):
        build_lm([str(copy)])
    text = tmp_path / "corpus.txt"
    text.write_text("привет мир\nhello мир\n", encoding="utf-8")
    with pytest.raises(Error, match=r"corpus.txt, line 2: characters \['e', 'h', 'l', 'o'\]"):
        build_lm([str(copy), "--text", str(text), "--overwrite"])
    with pytest.raises(UsageError, match="alpha=12.0 is out of range"):
        build_lm([str(copy), "--overwrite", "--alpha", "12"])
    corrupt = tmp_path / "golos.arpa"
    corrupt.write_text(ARPA.replace("\\end\\\n", ""))
    with pytest.raises(Error, match="golos.arpa: no \\\\end\\\\ line"):
        build_lm([str(copy), "--arpa", str(corrupt), "--overwrite"])
    after = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    assert after == before
    # an ARPA file given as it is, and a text corpus, replace the LM with --overwrite
    latin_free = ARPA.replace("а", "д").replace("б", "е")
    (tmp_path / "given.arpa").write_text(latin_free)
    build_lm([str(copy), "--arpa", str(tmp_path / "given.arpa"), "--overwrite", "--alpha", "0.7"])
    assert (copy / "language_model" / "given.arpa").read_text() == latin_free
    assert not (copy / "language_model" / "lm.arpa").exists()
    build_lm([str(copy), "--text", str(_ok_text(tmp_path)), "--overwrite", "--order", "2"])
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(copy)
    assert processor.language_model.order == 2 and processor.decoder.alpha == 0.5
    assert processor.language_model.vocabulary - {"<s>", "</s>", "<unk>"} == {"привет", "мир", "ежик"}


def _ok_text(tmp_path):
    path = tmp_path / "ok.txt"
    path.write_text("Привет   мир\n\nЁжик мир\n", encoding="utf-8")  # normalised as training text: ё -> е
    return path


def test_an_alphabet_that_does_not_cover_the_tokenizer_is_refused(lm_folder, tmp_path):
    from transformers import AutoProcessor

    _, folder, _ = lm_folder
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    alphabet = json.loads((copy / "alphabet.json").read_text())
    alphabet["labels"] = [x for x in alphabet["labels"] if x != "я"]
    (copy / "alphabet.json").write_text(json.dumps(alphabet, ensure_ascii=False))
    with pytest.raises(LanguageModelError, match=r"alphabet.json does not cover the tokenizer: it lacks \['я'\]"):
        AutoProcessor.from_pretrained(copy)
    attrs = copy / "language_model" / "attrs.json"
    attrs.write_text(json.dumps({"alpha": 0.5, "beta": 99.0}))
    alphabet["labels"] = LABELS
    (copy / "alphabet.json").write_text(json.dumps(alphabet, ensure_ascii=False))
    with pytest.raises(LanguageModelError, match=r"attrs.json: beta=99.0 is out of range"):
        AutoProcessor.from_pretrained(copy)
    attrs.write_text(json.dumps({"alpha": 0.5, "beta": 1.0}))
    (copy / "language_model" / "lm.arpa").write_bytes(b"\x00\xff" * 100)
    alphabet["labels"] = LABELS
    (copy / "alphabet.json").write_text(json.dumps(alphabet, ensure_ascii=False))
    with pytest.raises(LanguageModelError, match="lm.arpa is neither an ARPA"):
        AutoProcessor.from_pretrained(copy)


@pytest.mark.slow
def test_training_from_a_folder_with_an_lm_keeps_it(lm_folder, tmp_path):
    from transformers import AutoProcessor

    from ebranchformer_ru import training

    _, folder, _ = lm_folder
    tiny = (
        "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,cgmlp_intermediate_size=48,ffn_intermediate_size=64"
    )
    training.run(
        [
            "--model_name_or_path",
            str(folder),
            "--config_overrides",
            tiny,
            "--report_to",
            "none",
            "--max_steps",
            "1",
            "--dataloader_num_workers",
            "0",
            "--dataloader_persistent_workers",
            "false",
            "--per_device_train_batch_size",
            "4",
            "--save_strategy",
            "no",
            "--eval_strategy",
            "no",
            "--do_eval",
            "false",
            "--train_subset_seconds",
            "20",
            "--dataset_cache_dir",
            str(tmp_path / "cache"),
            "--output_dir",
            str(tmp_path / "out"),
            "--disable_tqdm",
            "true",
        ]
    )
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    assert type(processor) is EBranchformerProcessorWithLM
    assert (tmp_path / "out" / "language_model" / "lm.arpa").read_text() == (
        folder / "language_model" / "lm.arpa"
    ).read_text()


def test_evaluation_reports_greedy_and_lm_side_by_side_and_tuning_writes_attrs(lm_folder, tmp_path):
    from huggingface_hub import ModelCard

    from ebranchformer_ru.commands import evaluate, tune_lm

    def evaluate_main(argv):
        return evaluate.evaluate(evaluate.build_parser().parse_args(argv))

    def tune(argv):
        return tune_lm.tune_lm(tune_lm.build_parser().parse_args(argv))

    _, folder, plain = lm_folder
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    rows = evaluate_main(
        [str(copy), "--max_samples", "3", "--output_dir", str(tmp_path / "eval"), "--update_model_card"]
    )
    lines = [json.loads(x) for x in (tmp_path / "eval" / "utterances_crowd.jsonl").read_text().splitlines()]
    for row in rows:
        assert row["lm_wer"] >= 0 and 0 <= row["lm_cer"] <= 1
    references = [x["reference"] for x in lines]
    assert rows[0]["lm_wer"] == pytest.approx(jiwer.wer(references, [x["lm_hypothesis"] for x in lines]))
    assert rows[0]["wer"] == pytest.approx(jiwer.wer(references, [x["hypothesis"] for x in lines]))
    assert "| LM WER | LM CER |" in (tmp_path / "eval" / "results.md").read_text()
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["lm_decoding"]["alpha"] == 0.5
    card = ModelCard.load(copy / "README.md")
    names = {(r.dataset_config, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert names[("farfield", "WER (3-gram LM)")] == pytest.approx(rows[1]["lm_wer"], abs=1e-4)
    assert names[("crowd", "WER")] == pytest.approx(rows[0]["wer"], abs=1e-4)
    assert "| WER, greedy | WER, with the LM |" in card.text
    greedy_only = evaluate_main([str(plain), "--max_samples", "2", "--output_dir", str(tmp_path / "eval2")])
    assert "lm_wer" not in greedy_only[0]
    # --decoder greedy: the folder's LM left out, the same greedy figures; --decoder lm requires one
    greedy = evaluate_main(
        [
            str(copy),
            "--max_samples",
            "3",
            "--output_dir",
            str(tmp_path / "eval3"),
            "--sets",
            "crowd",
            "--decoder",
            "greedy",
        ]
    )
    assert greedy == [{k: v for k, v in rows[0].items() if not k.startswith("lm_")}]
    assert "lm_hypothesis" not in (tmp_path / "eval3" / "utterances_crowd.jsonl").read_text()
    assert (
        evaluate_main(
            [
                str(copy),
                "--max_samples",
                "2",
                "--output_dir",
                str(tmp_path / "eval4"),
                "--sets",
                "farfield",
                "--decoder",
                "lm",
            ]
        )[0]["lm_wer"]
        >= 0
    )
    with pytest.raises(
        Error, match=f"--decoder lm: {plain} has no language_model/ folder; add one with `ebranchformer-build-lm {plain}`"
    ):
        evaluate_main([str(plain), "--decoder", "lm", "--output_dir", str(tmp_path / "eval5")])
    assert not (tmp_path / "eval5").exists()
    before = (copy / "language_model" / "attrs.json").read_text()
    summary = tune([str(copy), "--max_samples", "4", "--alphas", "0,1", "--betas", "0,2", "--dry_run"])
    assert (copy / "language_model" / "attrs.json").read_text() == before
    tune([str(copy), "--max_samples", "4", "--alphas", "0,1", "--betas", "0,2", "--dry_run", "false"])
    attrs = json.loads((copy / "language_model" / "attrs.json").read_text())
    assert (attrs["alpha"], attrs["beta"]) == (summary["alpha"], summary["beta"])
    assert summary["tuning_utterances"] == 4 and summary["unseen_utterances"] == 4
    with pytest.raises(UsageError, match="alpha=11.0 is out of range"):
        tune([str(copy), "--alphas", "0,11"])
    # any test set of the data folder; an unknown one named with those there are, before the model is loaded
    assert (
        tune(
            [
                str(copy),
                "--sets",
                "heldout_voice",
                "--max_samples",
                "2",
                "--alphas",
                "0",
                "--betas",
                "0",
                "--subset",
                "all",
                "--dry_run",
                "--threads",
                "1",
            ]
        )["tuning_utterances"]
        == 2
    )
    with pytest.raises(
        Error,
        match=rf"unknown test set\(s\) \['street'\]: the test sets of {CORPUS} are crowd, "
        "farfield, heldout_voice",
    ):
        tune([str(copy), "--sets", "crowd,street"])
    with pytest.raises(Error, match=f"{plain} has no language_model/ folder; add one with `ebranchformer-build-lm {plain}`"):
        tune([str(plain)])
    assert tune_lm.main([str(tmp_path / "nowhere")]) == 1


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


# ---- hotwords, options, non-finite logits, hotwords from the command line

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
    from modeling_ebranchformer import EBranchformerCTCTokenizer, EBranchformerFeatureExtractor
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


def test_pipeline_decoder_kwargs_reach_the_search_and_unknown_ones_are_refused(tmp_path, tiny_config, speech_like):
    import torch
    from transformers import AutoProcessor, pipeline

    from modeling_ebranchformer import EBranchformerASRPipeline, EBranchformerForCTC, EBranchformerProcessor

    torch.manual_seed(0)
    folder = tmp_path / "model"
    EBranchformerForCTC(tiny_config).save_pretrained(folder)
    EBranchformerProcessor().save_pretrained(folder)
    build_lm([str(folder)])
    processor = AutoProcessor.from_pretrained(folder)
    asr = pipeline("automatic-speech-recognition", model=str(folder), pipeline_class=EBranchformerASRPipeline)
    wave = speech_like(2.0, 3)
    with torch.no_grad():
        logits = asr.model(**processor(audio=wave, sampling_rate=16000, return_tensors="pt")).logits
    for options in ({"alpha": 0.0, "beta": 0.0}, {"alpha": 2.0, "beta": -3.0, "beam_width": 4}):
        expected = processor.batch_decode(logits.numpy(), **options).text[0]
        assert asr(wave.copy(), decoder_kwargs=options)["text"] == expected
    with pytest.raises(LanguageModelError, match="beamwidth"):
        asr(wave.copy(), decoder_kwargs={"beamwidth": 8})


@pytest.mark.slow
def test_hotwords_through_transcribe_py(tmp_path, tiny_config):
    """`transcribe.py --decoder lm --hotwords ...` as a user runs it (the script's own process): a hotword the
    acoustics barely allow comes out with a large weight, and not without it; a hotword outside the alphabet
    is refused by name before any work."""
    import torch

    from modeling_ebranchformer import EBranchformerForCTC, EBranchformerProcessor

    torch.manual_seed(0)
    folder = tmp_path / "model"
    EBranchformerForCTC(tiny_config).save_pretrained(folder)  # random weights: every character about as likely
    EBranchformerProcessor().save_pretrained(folder)
    build_lm([str(folder)])
    audio = sorted((CORPUS / "test_opus" / "crowd" / "files").glob("*.opus"))[:2]
    shutil.copy(audio[0], tmp_path / "a.opus")

    def transcribe(*extra):
        output = tmp_path / "out.jsonl"
        command = [
            sys.executable,
            str(ROOT / "transcribe.py"),
            str(folder),
            str(tmp_path / "a.opus"),
            "--decoder",
            "lm",
            "--output",
            str(output),
            "--overwrite",
            "--no_progress",
            *extra,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        text = json.loads(output.read_text(encoding="utf-8"))["text"] if result.returncode == 0 else None
        return result, text

    result, plain = transcribe()
    assert result.returncode == 0, result.stderr[-2000:]
    result, boosted = transcribe("--hotwords", "джой", "--hotword_weight", "60")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "джой" in boosted.split() and "джой" not in plain.split()
    # refused with the folder's alphabet and limits: a runtime error, one line, exit 1
    result, _ = transcribe("--hotwords", "joy")
    assert result.returncode == 1 and result.stderr.splitlines()[-1].startswith("error: hotword 'joy' has characters")
    result, _ = transcribe("--hotwords", "джой", "--hotword_weight", "5000")
    assert result.returncode == 1 and "hotword_weight=5000" in result.stderr.splitlines()[-1]


def test_build_lm_takes_real_text_with_punctuation(lm_folder, tmp_path):
    """Punctuation and symbols are removed as transcripts have none; letters outside the alphabet and numbers
    in digits stay errors that name the line; a folder given as --text is named."""
    _, folder, _ = lm_folder
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    text = tmp_path / "corpus.txt"
    text.write_text("Привет, мир!\n«Ёжик» — это ёж… (да?)\n", encoding="utf-8")
    build_lm([str(copy), "--text", str(text), "--overwrite", "--order", "2"])
    from transformers import AutoProcessor

    words = AutoProcessor.from_pretrained(copy).language_model.vocabulary - {"<s>", "</s>", "<unk>"}
    assert words == {"привет", "мир", "ежик", "это", "еж", "да"}
    text.write_text("привет, мир\nв 5 часов\n", encoding="utf-8")
    with pytest.raises(Error, match=r"corpus.txt, line 2: characters \['5'\] .*spell numbers out"):
        build_lm([str(copy), "--text", str(text), "--overwrite"])
    with pytest.raises(Error, match=r"is a folder; give text files"):
        build_lm([str(copy), "--text", str(tmp_path), "--overwrite"])


def test_build_lm_names_an_empty_text_and_refuses_an_order_for_an_arpa(lm_folder, tmp_path):
    _, folder, _ = lm_folder
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    (tmp_path / "empty.txt").write_text(",,, !\n\n", encoding="utf-8")
    with pytest.raises(Error, match=r"--text .*empty.txt: no sentence in it"):
        build_lm([str(copy), "--text", str(_ok_text(tmp_path)), "--text", str(tmp_path / "empty.txt"), "--overwrite"])
    with pytest.raises(UsageError, match="give either --arpa or --data_dir/--text/--order"):
        build_lm([str(copy), "--arpa", str(copy / "language_model" / "lm.arpa"), "--order", "5", "--overwrite"])


def test_build_lm_exit_statuses(lm_folder, tmp_path, capsys):
    """A usage error exits 2 with argparse's usage; a missing folder or an existing LM exit 1 with one line."""
    _, folder, _ = lm_folder
    arpa = str(folder / "language_model" / "lm.arpa")
    with pytest.raises(SystemExit) as exit:
        build_lm_command.main([str(folder), "--arpa", arpa, "--text", arpa])
    assert exit.value.code == 2 and capsys.readouterr().err.startswith("usage:")
    assert build_lm_command.main([str(tmp_path / "nowhere")]) == 1
    assert capsys.readouterr().err.splitlines() == [f"error: model folder not found: {tmp_path / 'nowhere'}"]
    assert build_lm_command.main([str(folder), "--overwrite", "false"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: {folder / 'language_model'} exists; pass --overwrite to replace the language model"
    ]
    args = build_lm_command.build_parser().parse_args(
        [str(folder), "--push_to_hub", "--hub_model_id", "you/model", "--text", "a.txt", "--text", "b.txt"]
    )
    assert (args.push_to_hub, args.hub_model_id, args.text) == (True, "you/model", ["a.txt", "b.txt"])
