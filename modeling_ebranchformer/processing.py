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
        inputs["labels"] = labels["input_ids"]
        return inputs

    def labels(self, text, return_tensors=None):
        """Tokenised transcripts; with `return_tensors`, padded with -100, the value the CTC loss ignores."""
        encoded = self.tokenizer(text, padding=return_tensors is not None, return_tensors=return_tensors)
        if return_tensors is not None:
            encoded["input_ids"] = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
        return encoded
