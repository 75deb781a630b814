"""Processor: the feature extractor for audio and the character tokenizer for transcripts, saved together."""

from transformers import Wav2Vec2Processor


class EBranchformerProcessor(Wav2Vec2Processor):
    """`processor(audio=..., sampling_rate=16000, text=..., return_tensors="pt")` gives `input_features`,
    `attention_mask` and `labels` padded with -100 (ready for the CTC loss);
    `processor.batch_decode(logits.argmax(-1))` gives greedy CTC transcripts."""

    # The sub-processor classes are found through the Auto classes (registered in __init__, or `auto_map`
    # in a saved folder), as Transformers 5 expects; naming them here is deprecated there.

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
        """Tokenised transcripts; with `return_tensors`, padded with -100, the value the CTC loss ignores."""
        # The tokenizer also takes token ids and pre-split words, which as labels would pass unchecked ids
        # (the blank among them) or glue words together: only text is taken here.
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, (list, tuple)):
            raise ValueError(f"text must be a transcript (str) or a list of them, got {type(text).__name__}: {text!r}")
        for index, item in enumerate(texts):
            if not isinstance(item, str):
                raise ValueError(f"transcript {index} is not a string ({item!r}); give the text, not ids or words")
        encoded = self.tokenizer(text, padding=return_tensors is not None, return_tensors=return_tensors)
        if return_tensors is not None:
            encoded["input_ids"] = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
        return encoded
