"""The processor with a word n-gram language model (the ASR pipeline that decodes with it: `asr_pipeline.py`).

A model folder with `alphabet.json` and `language_model/` (what `build_lm.py` writes: the layout of
Transformers' `Wav2Vec2ProcessorWithLM`) loads as `EBranchformerProcessorWithLM` through `AutoProcessor`;
`processor.batch_decode(logits)` then runs the beam search of `beam_search.CTCBeamSearchDecoder`
(`processor.batch_decode(ids)` with token ids still decodes greedily, so training code keeps working).
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers.utils import ModelOutput, logging

from .beam_search import (
    ALPHABET_FILE,
    ATTRS_FILE,
    DECODE_OPTIONS,
    DEFAULT_BEAM_WIDTH,
    LM_DIR,
    LanguageModelError,
    check_alphabet,
    load_decoder,
)
from .processing import EBranchformerProcessor

logger = logging.get_logger(__name__)


@dataclass
class EBranchformerDecoderWithLMOutput(ModelOutput):
    """What `batch_decode` gives (the fields of Transformers' `Wav2Vec2DecoderWithLMOutput`): `text`,
    `logit_score` (acoustic log-score of the beam), `lm_score` (acoustic + alpha * LM + beta * words, the
    score beams are ranked by) and, with `output_word_offsets=True`, `word_offsets`: per utterance a list of
    {"word", "start_offset", "end_offset"} in logit frames (end exclusive). With `n_best` > 1 every field
    holds a list per utterance."""

    text: list | str = None
    logit_score: list | float = None
    lm_score: list | float = None
    word_offsets: list = None


def _resolve_folder(pretrained_model_name_or_path, **kwargs):
    """A local folder as it is; a Hub repo: the LM files downloaded (nothing when it has none)."""
    if os.path.isdir(pretrained_model_name_or_path):
        return Path(pretrained_model_name_or_path)
    from huggingface_hub import snapshot_download

    hub_kwargs = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if kwargs.get(k)}
    try:
        return Path(
            snapshot_download(
                pretrained_model_name_or_path, allow_patterns=[ALPHABET_FILE, f"{LM_DIR}/*"], **hub_kwargs
            )
        )
    except Exception as error:
        logger.warning(f"no language model files could be fetched for {pretrained_model_name_or_path}: {error}")
        return None


def _as_array(values):
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        return (values.float() if values.is_floating_point() else values).numpy()
    return np.asarray(values)


class EBranchformerProcessorWithLM(EBranchformerProcessor):
    """`EBranchformerProcessor` with a beam-search decoder over a word n-gram LM.

    `processor.batch_decode(logits, beam_width=32, alpha=..., beta=..., hotwords=[...], hotword_weight=10.0,
    output_word_offsets=True, n_best=1)` decodes (batch, frames, labels) logits (padded frames may be -100
    as the pipeline pads them, or pass `lengths`); integer token ids are decoded greedily by the tokenizer.
    `processor.decoder` is also what `pipeline(..., decoder=processor.decoder)` takes."""

    def __init__(self, feature_extractor=None, tokenizer=None, decoder=None, **kwargs):
        super().__init__(feature_extractor, tokenizer, **kwargs)
        if decoder is None:
            raise ValueError(
                "EBranchformerProcessorWithLM needs a `decoder` (beam_search.CTCBeamSearchDecoder); use "
                "EBranchformerProcessor for greedy decoding"
            )
        check_alphabet(decoder.labels, self.tokenizer, ALPHABET_FILE)
        self.decoder = decoder

    # The decoder is not a JSON attribute of processor_config.json: it is saved as its own files.
    def to_dict(self):
        decoder = self.__dict__.pop("decoder", None)
        try:
            return super().to_dict()
        finally:
            if decoder is not None:
                self.decoder = decoder

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        hub_kwargs = {k: kwargs.pop(k) for k in ("commit_message", "repo_id", "token", "private") if k in kwargs}
        files = super().save_pretrained(save_directory, push_to_hub=False, **kwargs)
        self.decoder.save_to_dir(save_directory)
        if push_to_hub:  # upload the whole folder, LM files included, once they are all written
            from huggingface_hub import HfApi

            api = HfApi(token=hub_kwargs.get("token"))
            repo_id = hub_kwargs.get("repo_id", os.path.basename(os.path.normpath(save_directory)))
            repo_id = api.create_repo(repo_id, exist_ok=True, private=hub_kwargs.get("private")).repo_id
            api.upload_folder(
                folder_path=save_directory,
                repo_id=repo_id,
                commit_message=hub_kwargs.get("commit_message") or "Upload processor with language model",
            )
        return files

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """The processor with the folder's LM; the plain `EBranchformerProcessor` (with a warning) when the
        folder has no `language_model/`. `alpha`, `beta`, `unk_score_offset`, `score_boundary` override attrs.json."""
        overrides = {k: kwargs.pop(k, None) for k in ("alpha", "beta", "unk_score_offset", "score_boundary")}
        plain = EBranchformerProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs)
        folder = _resolve_folder(pretrained_model_name_or_path, **kwargs)
        decoder = load_decoder(folder, "auto", plain.tokenizer, **overrides) if folder is not None else None
        if decoder is None:
            logger.warning(
                f"{pretrained_model_name_or_path} has no {LM_DIR}/ folder: decoding greedily without a language model"
            )
            return plain
        return cls(plain.feature_extractor, plain.tokenizer, decoder=decoder)

    @property
    def language_model(self):
        return self.decoder.language_model

    # Long for its signature: the options of `Wav2Vec2ProcessorWithLM.batch_decode`, which the pipeline and users'
    # code pass unchanged.
    def batch_decode(
        self,
        logits,
        *args,
        beam_width=None,
        beam_prune_logp=None,
        token_min_logp=None,
        hotwords=None,
        hotword_weight=None,
        alpha=None,
        beta=None,
        unk_score_offset=None,
        lm_score_boundary=None,
        output_word_offsets=False,
        n_best=1,
        lengths=None,
        sum_alignments=True,
        pool=None,
        num_processes=None,
        **kwargs,
    ):
        """Beam search with the LM over float logits (batch, frames, labels); token ids go to the tokenizer
        (greedy, as `EBranchformerProcessor.batch_decode`). Parameters not given come from attrs.json."""
        array = _as_array(logits)
        if not np.issubdtype(array.dtype, np.floating):  # token ids
            return self.tokenizer.batch_decode(logits, *args, **kwargs)
        if array.ndim != 3:
            raise ValueError(
                f"batch_decode with the LM takes logits of shape (batch, frames, {len(self.decoder.labels)}),"
                f" got {array.shape}; token ids are decoded greedily"
            )
        if not isinstance(n_best, int) or n_best < 1:
            raise ValueError(f"n_best must be a positive integer, got {n_best!r}")
        if kwargs:
            raise LanguageModelError(f"unknown decoding option(s) {sorted(kwargs)}; the options are {DECODE_OPTIONS}")
        results = []
        for index, item in enumerate(array):
            if lengths is not None:
                item = item[: int(lengths[index])]
            else:
                item = item[(item != -100.0).all(axis=-1)]  # the pipeline's padding value
            try:
                results.append(
                    self.decoder.decode_beams(
                        item,
                        beam_width=beam_width if beam_width is not None else DEFAULT_BEAM_WIDTH,
                        beam_prune_logp=beam_prune_logp,
                        token_min_logp=token_min_logp,
                        hotwords=hotwords,
                        hotword_weight=hotword_weight,
                        sum_alignments=sum_alignments,
                        alpha=alpha,
                        beta=beta,
                        unk_score_offset=unk_score_offset,
                        lm_score_boundary=lm_score_boundary,
                    )
                )
            except LanguageModelError as error:
                if str(error).startswith("frame "):  # which utterance of the batch
                    raise LanguageModelError(f"utterance {index}, {error}") from None
                raise
        texts, logit_scores, lm_scores, offsets = [], [], [], []
        for beams in results:
            chosen = beams[:n_best]
            one = [b.text for b in chosen], [b.logit_score for b in chosen], [b.lm_score for b in chosen]
            words = [[{"word": w, "start_offset": s, "end_offset": e} for w, (s, e) in b.word_offsets] for b in chosen]
            if n_best == 1:
                texts.append(one[0][0]), logit_scores.append(one[1][0]), lm_scores.append(one[2][0])
                offsets.append(words[0])
            else:
                texts.append(one[0]), logit_scores.append(one[1]), lm_scores.append(one[2]), offsets.append(words)
        return EBranchformerDecoderWithLMOutput(
            text=texts,
            logit_score=logit_scores,
            lm_score=lm_scores,
            word_offsets=offsets if output_word_offsets else None,
        )

    def decode(self, logits, **kwargs):
        """One utterance: (frames, labels) logits -> beam search with the LM; token ids -> greedy."""
        array = _as_array(logits)
        if array.ndim == 2 and np.issubdtype(array.dtype, np.floating):
            output = self.batch_decode(array[None], **kwargs)
            return EBranchformerDecoderWithLMOutput(**{k: (v[0] if v is not None else None) for k, v in output.items()})
        return self.tokenizer.decode(logits, **kwargs)


__all__ = ["ATTRS_FILE", "EBranchformerDecoderWithLMOutput", "EBranchformerProcessorWithLM", "LanguageModelError"]
