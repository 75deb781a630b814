"""E-Branchformer CTC speech recognition for Russian as a Hugging Face Transformers model package.

Importing the package registers the model type "ebranchformer" with the Auto classes (AutoConfig,
AutoModel, AutoModelForCTC, AutoFeatureExtractor, AutoTokenizer, AutoProcessor) and marks the classes for
`save_pretrained` to write an `auto_map` and copy the code, so a saved folder also loads with
`trust_remote_code=True` where this package is not installed.
"""

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForCTC,
    AutoProcessor,
    AutoTokenizer,
)

from .configuration import EBranchformerConfig
from .feature_extraction import EBranchformerFeatureExtractor
from .modeling import EBranchformerForCTC, EBranchformerModel, EBranchformerPreTrainedModel
from .processing import EBranchformerProcessor
from .tokenization import COURSE_LABELS, EBranchformerCTCTokenizer, normalize_text

__all__ = [
    "COURSE_LABELS",
    "EBranchformerCTCTokenizer",
    "EBranchformerConfig",
    "EBranchformerFeatureExtractor",
    "EBranchformerForCTC",
    "EBranchformerModel",
    "EBranchformerPreTrainedModel",
    "EBranchformerProcessor",
    "normalize_text",
]


def _register():
    AutoConfig.register(EBranchformerConfig.model_type, EBranchformerConfig, exist_ok=True)
    AutoModel.register(EBranchformerConfig, EBranchformerModel, exist_ok=True)
    AutoModelForCTC.register(EBranchformerConfig, EBranchformerForCTC, exist_ok=True)
    AutoFeatureExtractor.register(EBranchformerConfig, EBranchformerFeatureExtractor, exist_ok=True)
    AutoTokenizer.register(EBranchformerConfig, slow_tokenizer_class=EBranchformerCTCTokenizer, exist_ok=True)
    AutoProcessor.register(EBranchformerConfig, EBranchformerProcessor, exist_ok=True)

    EBranchformerConfig.register_for_auto_class()
    EBranchformerModel.register_for_auto_class("AutoModel")
    EBranchformerForCTC.register_for_auto_class("AutoModelForCTC")
    EBranchformerFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
    EBranchformerCTCTokenizer.register_for_auto_class("AutoTokenizer")
    EBranchformerProcessor.register_for_auto_class("AutoProcessor")


_register()
