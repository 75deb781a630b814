"""E-Branchformer CTC speech recognition for Russian as a Hugging Face Transformers model package.

Importing the package registers the model types "ebranchformer" and "quartznet" (for the course's
pretrained QuartzNet checkpoint; same features, tokenizer and processor) with the Auto classes (AutoConfig,
AutoModel, AutoModelForCTC, AutoFeatureExtractor, AutoTokenizer, AutoProcessor) and marks the classes for
`save_pretrained` to write an `auto_map` and copy the code, so a saved folder also loads with
`trust_remote_code=True` where this package is not installed. It also makes `evaluate.load("wer")` and
`("cer")` work offline (see `metrics`).
"""

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForCTC,
    AutoProcessor,
    AutoTokenizer,
)

from . import audio, metrics, processing_lm  # noqa: F401  (modeling_ebranchformer.audio.read_audio, ... work after a plain import)
from .configuration import EBranchformerConfig
from .configuration_quartznet import QuartzNetConfig
from .feature_extraction import EBranchformerFeatureExtractor
from .modeling import EBranchformerForCTC, EBranchformerModel, EBranchformerPreTrainedModel
from .modeling_quartznet import QuartzNetForCTC, QuartzNetModel, QuartzNetPreTrainedModel
from .processing import DataCollatorCTC, EBranchformerProcessor
from .processing_lm import EBranchformerASRPipeline, EBranchformerProcessorWithLM  # language model (issue #11)
from .tokenization import COURSE_LABELS, EBranchformerCTCTokenizer, normalize_text

__all__ = [
    "COURSE_LABELS",
    "DataCollatorCTC",
    "EBranchformerASRPipeline",
    "EBranchformerCTCTokenizer",
    "EBranchformerConfig",
    "EBranchformerFeatureExtractor",
    "EBranchformerForCTC",
    "EBranchformerModel",
    "EBranchformerPreTrainedModel",
    "EBranchformerProcessor",
    "EBranchformerProcessorWithLM",
    "QuartzNetConfig",
    "QuartzNetForCTC",
    "QuartzNetModel",
    "QuartzNetPreTrainedModel",
    "normalize_text",
]


def _register():
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
    # Language model (issue #11): folders with language_model/ name EBranchformerProcessorWithLM in
    # processor_config.json; AutoProcessor finds a class by that name among registered processors, which are
    # keyed by config (one per model type), so it is registered under a key of its own. The ASR pipeline
    # then decodes with the folder's LM (a stock pipeline for other models).
    AutoProcessor.register("ebranchformer-processor-with-lm", EBranchformerProcessorWithLM, exist_ok=True)
    EBranchformerProcessorWithLM.register_for_auto_class("AutoProcessor")
    processing_lm.register_pipeline()


_register()
metrics.install_offline_modules()
