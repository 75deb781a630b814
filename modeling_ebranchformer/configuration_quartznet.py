"""Configuration of the QuartzNet CTC model (Kriman et al., 2019, arXiv:1910.10261).

The defaults are the course configuration `quartznet_5x5_ru`, the architecture of the course's pretrained
checkpoint `q5x5_ru_stride_4_crowd_epoch_4_step_9794.ckpt`: the same 64 log-mel features and 34-class
CTC head as the E-Branchformer, eight blocks of 1-D convolutions with an overall stride of 4.
"""

from transformers import PretrainedConfig

from .configuration import (
    check_flag,
    check_integer,
    check_positive_number,
    check_probability,
    default_blank,
    is_integer,
)

# (channels, repeat, kernel, stride, dilation, residual, separable) of the course's quartznet_5x5_ru.
COURSE_BLOCKS = (
    (256, 1, 33, 4, 1, False, True),
    (256, 5, 33, 1, 1, True, True),
    (256, 5, 39, 1, 1, True, True),
    (512, 5, 51, 1, 1, True, True),
    (512, 5, 63, 1, 1, True, True),
    (512, 5, 75, 1, 1, True, True),
    (512, 1, 87, 1, 2, False, True),
    (1024, 1, 1, 1, 1, False, False),
)


class QuartzNetConfig(PretrainedConfig):
    r"""
    Every `block_*` list has one entry per block.

    Args:
        vocab_size (`int`, defaults to 34):
            Output classes of the CTC head, the blank included.
        pad_token_id (`int`, *optional*):
            The CTC blank (= the tokenizer's pad token). Not given (or None), the last class, `vocab_size - 1`
            (33 by default); a given value outside `[0, vocab_size)` raises.
        num_mel_bins (`int`, defaults to 64):
            Features per input frame.
        block_channels (`list[int]`): output channels of each block.
        block_repeats (`list[int]`): sub-blocks (conv, batch norm, ReLU) per block.
        block_kernel_sizes (`list[int]`): kernel of the block's convolutions over time (odd).
        block_strides (`list[int]`): stride of the block's first sub-block (the course uses 4 once: 640
            samples per output frame).
        block_dilations (`list[int]`): dilation of the convolutions over time.
        block_residual (`list[bool]`): whether a 1x1 convolution + batch norm of the block's input is added
            before the last sub-block's ReLU.
        block_separable (`list[bool]`): depthwise (per channel, over time) + pointwise (1x1) convolutions
            instead of one full convolution.
        conv_bias (`bool`, defaults to `False`):
            Whether the convolutions carry biases (course implementations differ; the converter reads it
            from the checkpoint).
        batch_norm_eps (`float`, defaults to 1e-5):
            Epsilon of the batch norms (PyTorch's default; NeMo's Jasper code uses 1e-3). Positive: with 0, a
            channel that is constant over the batch gives NaN.
        dropout (`float`, defaults to 0.0):
            Dropout after each sub-block's ReLU.
        ctc_loss_reduction (`str`, defaults to `"mean"`): `"mean"` or `"sum"`, as for `EBranchformerConfig`.
        ctc_zero_infinity (`bool`, defaults to `False`): replace infinite CTC losses by zero.
        initializer_range (`float`, defaults to 0.02): std of the initial weights (the batch norms make the
            convolutions' scale irrelevant).
    """

    model_type = "quartznet"

    def __init__(
        self,
        vocab_size=34,
        pad_token_id=None,
        num_mel_bins=64,
        block_channels=tuple(b[0] for b in COURSE_BLOCKS),
        block_repeats=tuple(b[1] for b in COURSE_BLOCKS),
        block_kernel_sizes=tuple(b[2] for b in COURSE_BLOCKS),
        block_strides=tuple(b[3] for b in COURSE_BLOCKS),
        block_dilations=tuple(b[4] for b in COURSE_BLOCKS),
        block_residual=tuple(b[5] for b in COURSE_BLOCKS),
        block_separable=tuple(b[6] for b in COURSE_BLOCKS),
        conv_bias=False,
        batch_norm_eps=1e-5,
        dropout=0.0,
        ctc_loss_reduction="mean",
        ctc_zero_infinity=False,
        initializer_range=0.02,
        **kwargs,
    ):
        super().__init__(pad_token_id=default_blank(vocab_size, pad_token_id), **kwargs)
        self.vocab_size = vocab_size
        self.num_mel_bins = num_mel_bins
        self.block_channels = list(block_channels)
        self.block_repeats = list(block_repeats)
        self.block_kernel_sizes = list(block_kernel_sizes)
        self.block_strides = list(block_strides)
        self.block_dilations = list(block_dilations)
        # 0 and 1 (and numpy booleans) become bools; anything else is left for _validate to reject.
        self.block_residual = [bool(x) if _is_bit(x) else x for x in block_residual]
        self.block_separable = [bool(x) if _is_bit(x) else x for x in block_separable]
        self.conv_bias = conv_bias
        self.batch_norm_eps = batch_norm_eps
        self.dropout = dropout
        self.ctc_loss_reduction = ctc_loss_reduction
        self.ctc_zero_infinity = ctc_zero_infinity
        self.initializer_range = initializer_range
        self._validate()

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        # `from_pretrained(..., batch_norm_eps=0)` sets its keyword arguments after construction: check again.
        result = super().from_dict(config_dict, **kwargs)
        (result[0] if isinstance(result, tuple) else result)._validate()
        return result

    def validate(self):
        """Transformers' checks, then ours; `save_pretrained` runs it, so values changed since construction
        are checked before they are saved."""
        super().validate()
        self._validate()

    def _validate(self):
        owner = "QuartzNetConfig"
        lists = (
            "block_channels",
            "block_repeats",
            "block_kernel_sizes",
            "block_strides",
            "block_dilations",
            "block_residual",
            "block_separable",
        )
        lengths = {name: len(getattr(self, name)) for name in lists}
        if len(set(lengths.values())) != 1 or not self.block_channels:
            raise ValueError(f"QuartzNetConfig: the block_* lists must be non-empty and equally long, got {lengths}")
        for name in lists[:5]:
            for index, value in enumerate(getattr(self, name)):
                check_integer(owner, f"{name}[{index}]", value, minimum=1)
        for name in lists[5:]:
            for index, value in enumerate(getattr(self, name)):
                check_flag(owner, f"{name}[{index}]", value)
        for index, kernel in enumerate(self.block_kernel_sizes):
            if kernel % 2 == 0:
                raise ValueError(
                    f"QuartzNetConfig: block_kernel_sizes[{index}] ({kernel}) must be odd for 'same' padding"
                )
        for name in ("vocab_size", "num_mel_bins"):
            check_integer(owner, name, getattr(self, name), minimum=1)
        check_probability(owner, "dropout", self.dropout)
        check_positive_number(owner, "batch_norm_eps", self.batch_norm_eps, "batch norm divides by sqrt(var + eps)")
        check_positive_number(owner, "initializer_range", self.initializer_range, "the std of the initial weights")
        for name in ("conv_bias", "ctc_zero_infinity"):
            check_flag(owner, name, getattr(self, name))
        if self.ctc_loss_reduction not in ("mean", "sum"):
            raise ValueError(
                f"QuartzNetConfig: ctc_loss_reduction must be 'mean' or 'sum', got {self.ctc_loss_reduction!r}"
            )
        if not is_integer(self.pad_token_id) or not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"QuartzNetConfig: pad_token_id ({self.pad_token_id!r}) must lie in [0, vocab_size)")

    @property
    def hidden_size(self) -> int:
        """Channels of the last block, the input of the CTC head."""
        return self.block_channels[-1]

    @property
    def total_stride(self) -> int:
        stride = 1
        for s in self.block_strides:
            stride *= s
        return stride

    @property
    def inputs_to_logits_ratio(self) -> int:
        """Audio samples per output frame: 160 per feature frame times the blocks' strides."""
        return 160 * self.total_stride


def _is_bit(value) -> bool:
    return not isinstance(value, str) and value in (0, 1)
