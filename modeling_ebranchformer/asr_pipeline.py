"""The ASR pipeline that decodes with a model folder's language model, chosen explicitly (`pipeline_class=`)."""

import os

from transformers import AutomaticSpeechRecognitionPipeline

from .beam_search import load_decoder
from .processing_lm import _resolve_folder


class EBranchformerASRPipeline(AutomaticSpeechRecognitionPipeline):
    """Transformers' ASR pipeline decoding with the folder's language model. Chosen explicitly, the Transformers
    way; importing this package never changes which class `pipeline()` builds:

        asr = pipeline("automatic-speech-recognition", model="outputs/mini", pipeline_class=EBranchformerASRPipeline)

    (or the stock pipeline given `decoder=processor.decoder` of an `EBranchformerProcessorWithLM`). For a folder
    without `language_model/` it is the stock pipeline. With an LM it runs the pipeline's own `ctc_with_lm` code
    path with our `CTCBeamSearchDecoder`, including `chunk_length_s` and `return_timestamps="word"`;
    `decoder_kwargs={"beam_width": 64, "hotwords": [...]}` reach the beam search; `language_model=False` decodes
    greedily."""

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
