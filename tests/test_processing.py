"""The processor's labels and the training collator: where labels are made, they are checked."""

import numpy as np
import pytest
import torch

from modeling_ebranchformer import DataCollatorCTC, EBranchformerConfig, EBranchformerForCTC, EBranchformerProcessor


@pytest.fixture(scope="module")
def processor():
    return EBranchformerProcessor()


def test_default_processor_is_the_course_one(processor):
    assert processor.tokenizer.pad_token_id == 33 and processor.feature_extractor.feature_size == 64


def test_labels_are_end_padded_with_minus_100_and_never_the_blank(processor):
    labels = processor.labels(["да", "салют мир", "ёлка"], return_tensors="pt")["input_ids"]
    assert labels.shape == (3, 9)
    assert labels[0].tolist() == [5, 1] + [-100] * 7
    assert labels[2, :4].tolist() == [6, 12, 11, 1]  # ё is normalised to е
    assert not (labels == processor.tokenizer.pad_token_id).any()


@pytest.mark.parametrize("text", ["", "   ", None, 5])
def test_an_empty_or_non_text_transcript_is_refused(processor, text):
    with pytest.raises(ValueError, match="transcript 1 is (empty|not a string)"):
        processor.labels(["да", text], return_tensors="pt")


def test_collator_batch_gives_each_utterance_its_own_loss(processor, speech_like):
    examples = [
        {"audio": {"array": speech_like(1.0, seed), "sampling_rate": 16000}, "text": text}
        for seed, text in enumerate(["да", "салют мир включи свет"])
    ]
    batch = DataCollatorCTC(processor)(examples)
    assert batch["input_features"].shape == (2, 101, 64) and batch["labels"].shape == (2, 21)
    torch.manual_seed(0)
    model = EBranchformerForCTC(EBranchformerConfig(num_hidden_layers=1, ctc_loss_reduction="sum")).eval()
    with torch.no_grad():
        together = model(**batch).loss
        alone = sum(model(**DataCollatorCTC(processor)([e])).loss for e in examples)
    assert together.item() == pytest.approx(alone.item(), rel=1e-5)


def test_collator_refuses_audio_at_another_rate(processor):
    examples = [{"audio": {"array": np.zeros(8000, np.float32), "sampling_rate": 8000}, "text": "да"}]
    with pytest.raises(ValueError, match="8000 Hz"):
        DataCollatorCTC(processor)(examples)
