"""Processor: the feature extractor for audio and the character tokenizer for transcripts, saved together;
and the collator that turns decoded examples into training batches."""

from dataclasses import dataclass

import torch
from transformers import Wav2Vec2Processor

from .feature_extraction import EBranchformerFeatureExtractor
from .tokenization import EBranchformerCTCTokenizer


class EBranchformerProcessor(Wav2Vec2Processor):
    """`processor(audio=..., sampling_rate=16000, text=..., return_tensors="pt")` gives `input_features`,
    `attention_mask` and `labels` padded with -100 (ready for the CTC loss);
    `processor.batch_decode(model.generate(**inputs))` gives greedy CTC transcripts.

    `EBranchformerProcessor()` is the course's: default features and the course alphabet."""

    # The sub-processor classes are found through the Auto classes (registered in __init__, or `auto_map`
    # in a saved folder), as Transformers 5 expects; naming them here is deprecated there.

    def __init__(self, feature_extractor=None, tokenizer=None, **kwargs):
        super().__init__(
            feature_extractor or EBranchformerFeatureExtractor(), tokenizer or EBranchformerCTCTokenizer(), **kwargs
        )

    def __call__(self, audio=None, text=None, sampling_rate=None, return_tensors=None, **kwargs):
        if audio is None and text is None:
            raise ValueError("EBranchformerProcessor needs `audio`, `text` or both")
        inputs = {}
        if audio is not None:
            inputs = self.feature_extractor(audio, sampling_rate=sampling_rate, return_tensors=return_tensors, **kwargs)
        if text is None:
            return inputs
        labels = self.labels(text, return_tensors=return_tensors)
        if audio is None:
            return labels
        transcripts = 1 if isinstance(text, str) else len(text)
        if transcripts != len(inputs["input_features"]):
            raise ValueError(
                f"{len(inputs['input_features'])} utterances of audio but {transcripts} transcript(s): give one "
                "transcript per utterance"
            )
        inputs["labels"] = labels["input_ids"]
        return inputs

    def labels(self, text, return_tensors=None):
        """Tokenised transcripts; with `return_tensors`, padded with -100, the value the CTC loss ignores.

        This is where labels are checked (the model's loss does not check them, to keep the host from
        waiting on the device): an empty transcript has no CTC target and is refused, and the blank can
        never be a label because the tokenizer has no character for it. The tokenizer also takes token ids
        and pre-split words, which as labels would pass unchecked ids (the blank among them) or glue words
        together: only text is taken here."""
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, (list, tuple)):
            raise ValueError(f"text must be a transcript (str) or a list of them, got {type(text).__name__}: {text!r}")
        for index, item in enumerate(texts):
            if not isinstance(item, str):
                raise ValueError(f"transcript {index} is not a string ({item!r}); give the text, not ids or words")
            if not item.strip():
                raise ValueError(f"transcript {index} is empty ({item!r}): CTC needs a target")
        encoded = self.tokenizer(text, padding=return_tensors is not None, return_tensors=return_tensors)
        if return_tensors is not None:
            encoded["input_ids"] = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
        return encoded


@dataclass
class DataCollatorCTC:
    """Decoded examples ({"audio": {"array": ...}, "text": ...}) -> padded log-mel features, frame mask and
    -100-padded labels. Runs in DataLoader workers, so features are computed off the training process."""

    processor: EBranchformerProcessor

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        audio = [example["audio"]["array"] for example in examples]
        sampling_rate = examples[0]["audio"].get("sampling_rate", self.processor.feature_extractor.sampling_rate)
        batch = self.processor.feature_extractor(audio, sampling_rate=sampling_rate, return_tensors="pt")
        if "text" in examples[0]:
            batch["labels"] = self.processor.labels([e["text"] for e in examples], return_tensors="pt")["input_ids"]
        return batch
