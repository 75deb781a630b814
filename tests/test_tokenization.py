import json

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, AutoTokenizer

from modeling_ebranchformer import (
    COURSE_LABELS,
    EBranchformerConfig,
    EBranchformerCTCTokenizer,
    EBranchformerProcessor,
    normalize_text,
)


@pytest.fixture(scope="module")
def tok():
    return EBranchformerCTCTokenizer()


def test_ids_are_the_course_output_indices(tok):
    assert len(tok) == 34 and tok.pad_token_id == 33
    for index, label in enumerate(COURSE_LABELS):
        assert tok(label if label != " " else "а а").input_ids == ([index] if label != " " else [1, 0, 1])
    assert tok("салют мир").input_ids == [18, 1, 12, 31, 19, 0, 13, 9, 17]


def test_normalisation_is_shared(tok):
    assert normalize_text("  Ёлка\tи\n ЁЖ  ") == "елка и еж"
    assert tok("  Ёлка  и ёж ").input_ids == tok("елка и еж").input_ids


def test_unknown_characters_are_rejected_and_named(tok):
    assert tok.unknown_characters("Привет, world!") == [",", "w", "o", "r", "l", "d", "!"]
    with pytest.raises(ValueError, match=r"\['1'\] are not in the vocabulary, in text 'в 1 час'"):
        tok("в 1 час")


def test_greedy_ctc_decoding_collapses_repeats_and_drops_blanks(tok):
    # с с <blank> с а <space> <space> я  ->  "сса я"
    assert tok.decode([18, 18, 33, 18, 1, 0, 0, 32]) == "сса я"
    out = tok.decode([18, 18, 33, 1, 0, 32], output_word_offsets=True)
    assert [(w["word"], w["start_offset"], w["end_offset"]) for w in out.word_offsets] == [("са", 0, 4), ("я", 5, 6)]


def test_offsets_are_plain_ints(tok):
    out = tok.decode([18, 18, 33, 1, 0, 32], output_char_offsets=True, output_word_offsets=True)
    values = [o[key] for o in out.char_offsets + out.word_offsets for key in ("start_offset", "end_offset")]
    assert values and all(type(v) is int for v in values)
    json.dumps({"chars": out.char_offsets, "words": out.word_offsets})  # numpy ints made this raise


def test_processor_gives_padded_labels_and_round_trips_with_auto_processor(tmp_path):
    processor = EBranchformerProcessor()
    batch = processor(
        audio=[torch.zeros(1600).numpy() + 0.01, torch.zeros(800).numpy() + 0.01],
        sampling_rate=16000,
        text=["да", "салют"],
        return_tensors="pt",
    )
    assert batch.labels.tolist() == [[5, 1, -100, -100, -100], [18, 1, 12, 31, 19]]
    assert batch.input_features.shape == (2, 11, 64)

    EBranchformerConfig().save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, EBranchformerProcessor)
    assert isinstance(loaded.tokenizer, EBranchformerCTCTokenizer)
    assert isinstance(AutoTokenizer.from_pretrained(tmp_path), EBranchformerCTCTokenizer)
    assert loaded(text="да").input_ids == [5, 1]
    assert loaded.batch_decode([[5, 5, 33, 1]]) == ["да"]


@pytest.mark.parametrize(
    "text, message",
    [
        (123, "text must be a transcript \\(str\\) or a list of them, got int: 123"),
        (b"\xd0\xb4\xd0\xb0", "got bytes"),
        ([33, 99], "transcript 0 is not a string \\(33\\)"),  # ids, the blank among them, went through as labels
        ([["да", "нет"]], "transcript 0 is not a string \\(\\['да', 'нет'\\]\\)"),  # became "данет"
        (["да", None], "transcript 1 is not a string \\(None\\)"),
    ],
)
def test_processor_takes_only_text_as_transcripts(text, message):
    processor = EBranchformerProcessor()
    with pytest.raises(ValueError, match=message):
        processor(text=text, return_tensors="pt")


def test_processor_needs_one_transcript_per_utterance():
    processor = EBranchformerProcessor()
    audio = [np.full(1600, 0.01, np.float32)] * 2
    with pytest.raises(ValueError, match="2 utterances of audio but 3 transcript\\(s\\)"):
        processor(audio=audio, sampling_rate=16000, text=["да", "нет", "да"], return_tensors="pt")
    with pytest.raises(ValueError, match="2 utterances of audio but 1 transcript\\(s\\)"):
        processor(audio=audio, sampling_rate=16000, text="да")
    one = processor(audio=audio[0], sampling_rate=16000, text="да")
    assert one["labels"] == [5, 1]


def test_added_tokens_keep_the_word_delimiter_as_in_wav2vec2(tmp_path):
    """Issue #23 (5), Transformers' tokenizer mixin's added-token check: the space between an added token and
    the next (or previous) word is a word delimiter, as `Wav2Vec2CTCTokenizer` over the same vocabulary gives;
    it was lost because each piece between added tokens was normalised (stripped) on its own."""
    from transformers import Wav2Vec2CTCTokenizer

    from modeling_ebranchformer.tokenization import DEFAULT_VOCAB_FILE

    ours = EBranchformerCTCTokenizer()
    wav2vec2 = Wav2Vec2CTCTokenizer(DEFAULT_VOCAB_FILE, unk_token="<unk>", pad_token="<pad>", do_lower_case=False)
    for tokenizer in (ours, wav2vec2):
        assert tokenizer.add_tokens(["aaaaa bbbbbb", "cccccc"]) == 2
    assert ours.tokenize("aaaaa bbbbbb мир") == ["aaaaa bbbbbb", "|", "м", "и", "р"]
    for text in ("aaaaa bbbbbb мир", "мир aaaaa bbbbbb мир cccccc", "мирaaaaa bbbbbbмир", "cccccc aaaaa bbbbbb"):
        assert ours.tokenize(text) == wav2vec2.tokenize(text), text
    # Whitespace and case are still normalised around added tokens; the ids decode back to the text.
    ids = ours("  Мир \t aaaaa bbbbbb  Ёж ").input_ids
    assert ids == [13, 9, 17, 0, len(COURSE_LABELS) + 1, 0, 6, 7]
    assert ours.decode(ids) == "мир aaaaa bbbbbb еж"
    ours.save_pretrained(tmp_path)
    loaded = EBranchformerCTCTokenizer.from_pretrained(tmp_path)
    assert loaded.tokenize("мир cccccc мир") == ["м", "и", "р", "|", "cccccc", "|", "м", "и", "р"]
    with pytest.raises(ValueError, match=r"\['1'\] are not in the vocabulary"):  # by design: no unknown token
        loaded("cccccc 1")
