"""Configuration of the E-Branchformer CTC model (Kim et al., 2022, arXiv:2210.00077).

The defaults are the course configuration `ebranchformer_ctc`: 64 log-mel bins stacked 4 to 1,
8 layers of width 256 with 4 attention heads, a cgMLP of width 768 and a 34-class CTC head
(33 characters + blank).
"""

import math
import numbers

from transformers import PretrainedConfig


class EBranchformerConfig(PretrainedConfig):
    r"""
    Args:
        vocab_size (`int`, defaults to 34):
            Output classes of the CTC head, the blank included.
        pad_token_id (`int`, *optional*):
            The CTC blank. The tokenizer's pad token has the same id, so padding never becomes a label. Not given
            (or None), it is the last class, `vocab_size - 1` (33 by default, as in the course), so a config
            with another vocabulary builds from its defaults; a given value outside `[0, vocab_size)` raises.
        num_mel_bins (`int`, defaults to 64):
            Features per input frame (the feature extractor's `feature_size`).
        subsampling_stride (`int`, defaults to 4):
            Frames stacked into one encoder step. The time axis is zero-padded to a multiple of it and
            `stride * num_mel_bins` values are projected to `hidden_size`.
        hidden_size (`int`, defaults to 256):
            Width of the encoder (even with sinusoidal positions: the table pairs sin and cos channels).
        num_hidden_layers (`int`, defaults to 8):
            Number of E-Branchformer layers.
        num_attention_heads (`int`, defaults to 4):
            Heads of the global (self-attention) branch; must divide `hidden_size`.
        cgmlp_intermediate_size (`int`, defaults to 768):
            Width after the cgMLP's first projection. The CSGU splits it in two halves (value and gate),
            so it must be even.
        cgmlp_conv_kernel_size (`int`, defaults to 7):
            Kernel of the CSGU depthwise convolution (odd, for "same" padding).
        ffn_intermediate_size (`int`, defaults to 512):
            Inner width of the two macaron feed-forward modules.
        merge_conv_kernel_size (`int`, defaults to 31):
            Kernel of the depthwise convolution that mixes the two branches before the merge projection (odd).
        position_embedding_type (`str`, defaults to `"sinusoidal"`):
            `"sinusoidal"` adds the classic sin/cos table to every frame. `"none"` adds nothing: models
            converted from the course code use it, because the course added one constant table row to all
            frames (see `convert_checkpoint.py`), which the converter folds into the subsampling bias.
        max_position_embeddings (`int`, defaults to 5000):
            Rows of the sinusoidal table, i.e. the longest input in encoder steps (5000 steps = 200 s).
        dropout (`float`, defaults to 0.1):
            Dropout after the positional encoding, inside and after every sub-module.
        attention_dropout (`float`, defaults to 0.0):
            Dropout on the attention probabilities.
        layer_norm_eps (`float`, defaults to 1e-5):
            Epsilon of every LayerNorm (positive: with 0, a constant frame, such as padding, gives NaN).
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the normal initialisation of linear and convolution weights.
        ctc_loss_reduction (`str`, defaults to `"mean"`):
            `"mean"` (loss per target character averaged over the batch, as `torch.nn.CTCLoss` and the course)
            or `"sum"`.
        ctc_zero_infinity (`bool`, defaults to `False`):
            Replace infinite CTC losses (a transcript too long for its audio) by zero instead of propagating them.
        apply_spec_augment (`bool`, defaults to `False`):
            SpecAugment on the input log-mel features during training (off in the course).
        mask_time_prob (`float`, defaults to 0.05):
            Fraction of frames masked in time (approximately), as in `Wav2Vec2Config`.
        mask_time_length (`int`, defaults to 10):
            Length of each time mask, in feature frames.
        mask_time_min_masks (`int`, defaults to 2):
            Minimum number of time masks per utterance.
        mask_feature_prob (`float`, defaults to 0.0):
            Fraction of mel bins masked (approximately).
        mask_feature_length (`int`, defaults to 10):
            Length of each frequency mask, in mel bins (at most `num_mel_bins` when frequency masking is on).
        mask_feature_min_masks (`int`, defaults to 0):
            Minimum number of frequency masks per utterance.
        causal_convolutions (`bool`, defaults to `False`):
            Streaming: the depthwise convolutions of the CSGU and of the merge module see only the current and
            earlier frames (`kernel - 1` frames of left context, none of look-ahead) instead of a centred window.
            The stacking subsampling never looks ahead of its `subsampling_stride` frames.
        chunk_convolutions (`bool`, defaults to `False`):
            Streaming, instead of `causal_convolutions`: the depthwise convolutions keep their centred window but see
            nothing past the end of the frame's attention chunk (zeros there, as at the end of a recording): the
            dynamic chunk convolution of Li et al. 2023 (arXiv:2304.09325). At full context they are the course's
            convolutions; in a chunk they look ahead at most to the chunk's end, which costs no latency.
        streaming_chunk_size (`int`, *optional*):
            Streaming: self-attention is limited to chunks of this many encoder steps (4 = 160 ms at the default
            stride): each frame sees the frames of its own chunk and of `streaming_left_chunks` earlier ones, the
            attention a chunk-by-chunk recogniser (`EBranchformerForCTC.stream_step`) computes. None: full context.
            Change it at run time (`model.config.streaming_chunk_size = 16`) to decode with another chunk size.
        streaming_left_chunks (`int`, defaults to -1):
            Earlier chunks each frame attends to under `streaming_chunk_size`; -1: all of them. A bounded value
            bounds the cost of a chunk step however long the stream.
        dynamic_chunk_training (`bool`, defaults to `False`):
            Streaming: in training, every batch draws its attention chunk (the U2 recipe of WeNet, Zhang et al.
            2020, arXiv:2012.05481): full context half of the time, otherwise a chunk of 1 to
            `dynamic_chunk_max_size` steps, so one model serves full context and any chunk size.
        dynamic_chunk_max_size (`int`, defaults to 32):
            The largest chunk drawn by `dynamic_chunk_training`, in encoder steps (32 = 1.28 s).
    """

    model_type = "ebranchformer"

    def __init__(
        self,
        vocab_size=34,
        pad_token_id=None,
        num_mel_bins=64,
        subsampling_stride=4,
        hidden_size=256,
        num_hidden_layers=8,
        num_attention_heads=4,
        cgmlp_intermediate_size=768,
        cgmlp_conv_kernel_size=7,
        ffn_intermediate_size=512,
        merge_conv_kernel_size=31,
        position_embedding_type="sinusoidal",
        max_position_embeddings=5000,
        dropout=0.1,
        attention_dropout=0.0,
        layer_norm_eps=1e-5,
        initializer_range=0.02,
        ctc_loss_reduction="mean",
        ctc_zero_infinity=False,
        apply_spec_augment=False,
        mask_time_prob=0.05,
        mask_time_length=10,
        mask_time_min_masks=2,
        mask_feature_prob=0.0,
        mask_feature_length=10,
        mask_feature_min_masks=0,
        causal_convolutions=False,
        chunk_convolutions=False,
        streaming_chunk_size=None,
        streaming_left_chunks=-1,
        dynamic_chunk_training=False,
        dynamic_chunk_max_size=32,
        **kwargs,
    ):
        super().__init__(pad_token_id=default_blank(vocab_size, pad_token_id), **kwargs)
        self.vocab_size = vocab_size
        self.num_mel_bins = num_mel_bins
        self.subsampling_stride = subsampling_stride
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.cgmlp_intermediate_size = cgmlp_intermediate_size
        self.cgmlp_conv_kernel_size = cgmlp_conv_kernel_size
        self.ffn_intermediate_size = ffn_intermediate_size
        self.merge_conv_kernel_size = merge_conv_kernel_size
        self.position_embedding_type = position_embedding_type
        self.max_position_embeddings = max_position_embeddings
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.ctc_loss_reduction = ctc_loss_reduction
        self.ctc_zero_infinity = ctc_zero_infinity
        self.apply_spec_augment = apply_spec_augment
        self.mask_time_prob = mask_time_prob
        self.mask_time_length = mask_time_length
        self.mask_time_min_masks = mask_time_min_masks
        self.mask_feature_prob = mask_feature_prob
        self.mask_feature_length = mask_feature_length
        self.mask_feature_min_masks = mask_feature_min_masks
        self.causal_convolutions = causal_convolutions
        self.chunk_convolutions = chunk_convolutions
        self.streaming_chunk_size = streaming_chunk_size
        self.streaming_left_chunks = streaming_left_chunks
        self.dynamic_chunk_training = dynamic_chunk_training
        self.dynamic_chunk_max_size = dynamic_chunk_max_size
        self._validate()

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        # `from_pretrained(..., layer_norm_eps=0)` sets its keyword arguments after construction: check again.
        result = super().from_dict(config_dict, **kwargs)
        (result[0] if isinstance(result, tuple) else result)._validate()
        return result

    def validate(self):
        """Transformers' checks, then ours; `save_pretrained` runs it, so values changed since construction
        are checked before they are saved."""
        super().validate()
        self._validate()

    # Longer than our ~60 lines: a flat list of checks, one per field or pair of fields, each with its own message.
    def _validate(self):
        owner = "EBranchformerConfig"
        positive = (
            "vocab_size",
            "num_mel_bins",
            "subsampling_stride",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "cgmlp_intermediate_size",
            "cgmlp_conv_kernel_size",
            "ffn_intermediate_size",
            "merge_conv_kernel_size",
            "max_position_embeddings",
            "mask_time_length",
            "mask_feature_length",
            "dynamic_chunk_max_size",
        )
        for name in positive:
            check_integer(owner, name, getattr(self, name), minimum=1)
        for name in ("mask_time_min_masks", "mask_feature_min_masks"):
            check_integer(owner, name, getattr(self, name), minimum=0)
        for name in ("dropout", "attention_dropout", "mask_time_prob", "mask_feature_prob"):
            check_probability(owner, name, getattr(self, name))
        check_positive_number(owner, "layer_norm_eps", self.layer_norm_eps, "LayerNorm divides by sqrt(variance + eps)")
        check_positive_number(owner, "initializer_range", self.initializer_range, "the std of the initial weights")
        if self.streaming_chunk_size is not None:
            check_integer(owner, "streaming_chunk_size", self.streaming_chunk_size, minimum=1)
        check_integer(owner, "streaming_left_chunks", self.streaming_left_chunks, minimum=-1)
        flags = (
            "apply_spec_augment",
            "ctc_zero_infinity",
            "causal_convolutions",
            "chunk_convolutions",
            "dynamic_chunk_training",
        )
        for name in flags:
            check_flag(owner, name, getattr(self, name))
        if self.causal_convolutions and self.chunk_convolutions:
            raise ValueError(
                "EBranchformerConfig: causal_convolutions and chunk_convolutions are two ways to stream; set one"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"EBranchformerConfig: hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.position_embedding_type == "sinusoidal" and self.hidden_size % 2:
            raise ValueError(
                f"EBranchformerConfig: hidden_size ({self.hidden_size}) must be even with position_embedding_type="
                "'sinusoidal': the table fills its channels with sin and cos pairs"
            )
        if self.cgmlp_intermediate_size % 2:
            raise ValueError(
                f"EBranchformerConfig: cgmlp_intermediate_size ({self.cgmlp_intermediate_size}) must be even: "
                "the CSGU splits it into equal value and gate halves"
            )
        for name in ("cgmlp_conv_kernel_size", "merge_conv_kernel_size"):
            if getattr(self, name) % 2 == 0:
                raise ValueError(
                    f"EBranchformerConfig: {name} ({getattr(self, name)}) must be odd: "
                    "the depthwise convolution keeps the length with (kernel - 1) / 2 frames of padding each side"
                )
        if self.position_embedding_type not in ("sinusoidal", "none"):
            raise ValueError(
                "EBranchformerConfig: position_embedding_type must be 'sinusoidal' or 'none', "
                f"got {self.position_embedding_type!r}"
            )
        if self.ctc_loss_reduction not in ("mean", "sum"):
            raise ValueError(
                f"EBranchformerConfig: ctc_loss_reduction must be 'mean' or 'sum', got {self.ctc_loss_reduction!r}"
            )
        if not is_integer(self.pad_token_id) or not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"EBranchformerConfig: pad_token_id (the CTC blank, {self.pad_token_id!r}) must be a class of the "
                f"CTC head, i.e. in [0, vocab_size={self.vocab_size})"
            )
        if self.apply_spec_augment and self.mask_feature_prob > 0 and self.mask_feature_length > self.num_mel_bins:
            raise ValueError(
                f"EBranchformerConfig: mask_feature_length ({self.mask_feature_length}) must be at most num_mel_bins "
                f"({self.num_mel_bins}) when frequency masking is on (apply_spec_augment, mask_feature_prob > 0)"
            )

    @property
    def is_streaming(self) -> bool:
        """Whether the model can recognise chunk by chunk: convolutions that do not see past a chunk (causal or
        chunk convolutions), and attention trained or set to work in chunks."""
        convolutions = self.causal_convolutions or self.chunk_convolutions
        return convolutions and (self.dynamic_chunk_training or self.streaming_chunk_size is not None)

    @property
    def convolution_context(self) -> str:
        """What the depthwise convolutions see: "full" (a centred window), "causal" or "chunk"."""
        return "causal" if self.causal_convolutions else "chunk" if self.chunk_convolutions else "full"

    @property
    def inputs_to_logits_ratio(self) -> int:
        """Audio samples per output frame: 160 samples per feature frame (hop) times the stacking stride."""
        return 160 * self.subsampling_stride


# Checks shared with QuartzNetConfig. `owner` names the config in the message; each names the value at fault.


def default_blank(vocab_size, pad_token_id):
    """The CTC blank: `pad_token_id` when given, else the last class (the course's blank is the last of its
    34). An invalid `vocab_size` is left for the config's checks to name."""
    if pad_token_id is None and is_integer(vocab_size):
        return vocab_size - 1
    return pad_token_id


def is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_integer(owner: str, name: str, value, minimum: int):
    if not is_integer(value) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{owner}: {name} must be {kind}, got {value!r}")


def is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_probability(owner: str, name: str, value):
    if not is_real(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{owner}: {name} must lie in [0, 1], got {value!r}")


def check_positive_number(owner: str, name: str, value, role: str):
    if not is_real(value) or value <= 0:
        raise ValueError(f"{owner}: {name} must be a positive number ({role}), got {value!r}")


def check_flag(owner: str, name: str, value):
    # Any object is truthy or not, so a string such as "false" would silently switch the option on.
    if not isinstance(value, bool):
        raise ValueError(f"{owner}: {name} must be True or False, got {value!r}")
