"""The ASR pipeline that decodes with a model folder's language model, chosen explicitly (`pipeline_class=`), and
gives each word chunk a confidence."""

import os

import numpy as np
import torch
from transformers import AutomaticSpeechRecognitionPipeline

from . import confidence
from .beam_search import load_decoder
from .processing_lm import _resolve_folder

# The key under which `_forward` hands a chunk's log-probabilities to `postprocess` (which takes it out again).
LOG_PROBS = "ebranchformer_log_probs"


class EBranchformerASRPipeline(AutomaticSpeechRecognitionPipeline):
    """Transformers' ASR pipeline decoding with the folder's language model. Chosen explicitly, the Transformers
    way; importing this package never changes which class `pipeline()` builds:

        asr = pipeline("automatic-speech-recognition", model="outputs/mini", pipeline_class=EBranchformerASRPipeline)

    (or the stock pipeline given `decoder=processor.decoder` of an `EBranchformerProcessorWithLM`). For a folder
    without `language_model/` it is the stock pipeline. With an LM it runs the pipeline's own `ctc_with_lm` code
    path with our `CTCBeamSearchDecoder`, including `chunk_length_s` and `return_timestamps="word"`;
    `decoder_kwargs={"beam_width": 64, "hotwords": [...]}` reach the beam search; `language_model=False` decodes
    greedily.

    With `return_timestamps="word"`, every word chunk also carries `confidence` (0-1), greedy or with the LM: the
    inference core's (`confidence.py`), from the same log-probabilities, so the same as transcribe.py's for the
    same audio (the stock pipeline's chunks have none). Everything else is the stock pipeline's output."""

    def __init__(
        self, model, feature_extractor=None, tokenizer=None, decoder=None, device=None, language_model=True, **kwargs
    ):
        if decoder is None and language_model:
            decoder = self._folder_decoder(model, tokenizer)
        # Built as a plain CTC pipeline, then switched to the LM path: the stock constructor would warn that
        # pyctcdecode decoding is deprecated, and this decoder is not pyctcdecode.
        super().__init__(model, feature_extractor=feature_extractor, tokenizer=tokenizer, device=device, **kwargs)
        if decoder is not None:
            self.decoder, self.type = decoder, "ctc_with_lm"

    @staticmethod
    def _folder_decoder(model, tokenizer):
        name = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
        if not name:
            return None
        folder = _resolve_folder(name) if os.path.isdir(name) or "/" in name else None
        if folder is None:
            return None
        return load_decoder(folder, "auto", tokenizer if not isinstance(tokenizer, str) else None)

    def _forward(self, model_inputs, return_timestamps=False, **kwargs):
        if return_timestamps != "word":
            return super()._forward(model_inputs, return_timestamps=return_timestamps, **kwargs)
        # The stock forward keeps only the argmax (greedy) or the logits (LM): the model's logits are caught on
        # their way out, as the inference core turns them into log-probabilities (float32).
        caught = []
        hook = self.model.register_forward_hook(lambda module, args, output: caught.append(output.logits))
        try:
            out = super()._forward(model_inputs, return_timestamps=return_timestamps, **kwargs)
        finally:
            hook.remove()
        out[LOG_PROBS] = torch.log_softmax(caught[-1].float(), dim=-1)
        return out

    def postprocess(self, model_outputs, decoder_kwargs=None, return_timestamps=None, **kwargs):
        if return_timestamps != "word" or any(LOG_PROBS not in output for output in model_outputs):
            return super().postprocess(model_outputs, decoder_kwargs, return_timestamps, **kwargs)
        log_probs = _joined([output.pop(LOG_PROBS) for output in model_outputs], model_outputs)
        if self.type == "ctc_with_lm":
            beams = []  # what the stock postprocess's search kept: the confidences weigh them all
            decoder, self.decoder = self.decoder, _KeepingBeams(self.decoder, beams)
            try:
                result = super().postprocess(model_outputs, decoder_kwargs, return_timestamps, **kwargs)
            finally:
                self.decoder = decoder
            vocab = self.tokenizer.get_vocab()
            values = confidence.beam_confidences(
                log_probs, beams[-1], self.tokenizer.pad_token_id, lambda word: [vocab[c] for c in word if c in vocab]
            )
        else:
            ids = _joined([output["tokens"] for output in model_outputs], model_outputs)
            result = super().postprocess(model_outputs, decoder_kwargs, return_timestamps, **kwargs)
            delimiter = self.tokenizer.convert_tokens_to_ids(self.tokenizer.word_delimiter_token)
            values = confidence.greedy_confidences(log_probs, ids, self.tokenizer.pad_token_id, delimiter)
        for chunk, value in zip(result["chunks"], values, strict=True):
            chunk["confidence"] = value
        return result


def _joined(pieces, model_outputs) -> np.ndarray:
    """One utterance's frames from its chunks' `pieces` (1, frames, ...), each cut to its stride as the stock
    postprocess cuts the tokens and logits."""
    kept = []
    for piece, output in zip(pieces, model_outputs):
        piece = piece.float().numpy() if piece.is_floating_point() else piece.numpy()
        if output.get("stride") is not None:
            total, left, right = output["stride"]
            piece = piece[:, left : total - right]
        kept.append(piece)
    return np.concatenate(kept, axis=1)[0]


class _KeepingBeams:
    """A decoder whose `decode_beams` also keeps what it returns in `kept`."""

    def __init__(self, decoder, kept):
        self.decoder, self.kept = decoder, kept

    def decode_beams(self, *args, **kwargs):
        self.kept.append(self.decoder.decode_beams(*args, **kwargs))
        return self.kept[-1]
