"""E-Branchformer CTC speech recognition for Russian as a Hugging Face Transformers model package.

Importing the package registers the model types "ebranchformer" and "quartznet" (for the course's pretrained
QuartzNet checkpoint; same features, tokenizer and processor) with the Auto classes (AutoConfig, AutoModel,
AutoModelForCTC, AutoFeatureExtractor, AutoTokenizer, AutoProcessor), and marks the classes for
`save_pretrained` to write an `auto_map` and copy the code, so that a saved folder also loads with
`trust_remote_code=True` where this package is not installed. That is all it does: it writes nothing, and
changes no registry, pipeline or logger of Transformers beyond adding our own types.

Names load lazily, as in Transformers' own `__init__` files. Where torch or transformers cannot be imported
(a deployment with ONNX Runtime only), nothing is registered and the numpy modules still import:
`from modeling_ebranchformer import beam_search, ngram`.
"""

import importlib

# name -> submodule that defines it
_LAZY = {
    "EBranchformerConfig": "configuration",
    "QuartzNetConfig": "configuration_quartznet",
    "EBranchformerFeatureExtractor": "feature_extraction",
    "EBranchformerModel": "modeling",
    "EBranchformerForCTC": "modeling",
    "EBranchformerPreTrainedModel": "modeling",
    "QuartzNetModel": "modeling_quartznet",
    "QuartzNetForCTC": "modeling_quartznet",
    "QuartzNetPreTrainedModel": "modeling_quartznet",
    "DataCollatorCTC": "processing",
    "EBranchformerProcessor": "processing",
    "EBranchformerProcessorWithLM": "processing_lm",
    "EBranchformerASRPipeline": "asr_pipeline",
    "CTCBeamSearchDecoder": "beam_search",
    "COURSE_LABELS": "tokenization",
    "EBranchformerCTCTokenizer": "tokenization",
    "normalize_text": "text",
}
__all__ = sorted(_LAZY)  # noqa: PLE0605 (the lazy names: one list to keep)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_LAZY])


def _register():
    try:
        import torch  # noqa: F401
        from transformers import (
            AutoConfig,
            AutoFeatureExtractor,
            AutoModel,
            AutoModelForCTC,
            AutoProcessor,
            AutoTokenizer,
        )
    except ImportError:  # no torch or transformers here: the numpy modules are all that can be used
        return
    from .configuration import EBranchformerConfig
    from .configuration_quartznet import QuartzNetConfig
    from .feature_extraction import EBranchformerFeatureExtractor
    from .modeling import EBranchformerForCTC, EBranchformerModel
    from .modeling_quartznet import QuartzNetForCTC, QuartzNetModel
    from .processing import EBranchformerProcessor
    from .processing_lm import EBranchformerProcessorWithLM
    from .tokenization import EBranchformerCTCTokenizer

    for config, model, model_for_ctc in (
        (EBranchformerConfig, EBranchformerModel, EBranchformerForCTC),
        (QuartzNetConfig, QuartzNetModel, QuartzNetForCTC),
    ):
        AutoConfig.register(config.model_type, config, exist_ok=True)
        AutoModel.register(config, model, exist_ok=True)
        AutoModelForCTC.register(config, model_for_ctc, exist_ok=True)
        # Both models read the same log-mel features and write the same characters.
        AutoFeatureExtractor.register(config, EBranchformerFeatureExtractor, exist_ok=True)
        AutoTokenizer.register(config, slow_tokenizer_class=EBranchformerCTCTokenizer, exist_ok=True)
        AutoProcessor.register(config, EBranchformerProcessor, exist_ok=True)

        config.register_for_auto_class()
        model.register_for_auto_class("AutoModel")
        model_for_ctc.register_for_auto_class("AutoModelForCTC")
    EBranchformerFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
    EBranchformerCTCTokenizer.register_for_auto_class("AutoTokenizer")
    EBranchformerProcessor.register_for_auto_class("AutoProcessor")
    # Folders with language_model/ name EBranchformerProcessorWithLM in processor_config.json; AutoProcessor finds
    # a class by that name among registered processors, which are keyed by config (one per model type), so it is
    # registered under a key of its own.
    AutoProcessor.register("ebranchformer-processor-with-lm", EBranchformerProcessorWithLM, exist_ok=True)
    EBranchformerProcessorWithLM.register_for_auto_class("AutoProcessor")


_register()
