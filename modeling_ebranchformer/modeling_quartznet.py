"""QuartzNet with a CTC head (Kriman et al., 2019, arXiv:1910.10261), for the course's pretrained checkpoint.

A block repeats a sub-block R times:

    y = BN(pointwise_conv(depthwise_conv(x)))        time-channel separable convolution
    x = dropout(ReLU(y))                              the last sub-block adds the residual first:
    x = dropout(ReLU(y + BN(conv1x1(block_input))))

Same inputs (log-mel features from `EBranchformerFeatureExtractor`), outputs and CTC loss as
`EBranchformerForCTC`, so the processor, `train_ctc.py` and the pipeline treat both alike. As in
`modeling.py`, padded frames are zeroed before every convolution over time, so an utterance gives the same
logits alone and in a padded batch.
"""

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput
from transformers.utils import can_return_tuple
from transformers.utils.import_utils import is_tracing

from .configuration_quartznet import QuartzNetConfig
from .ctc import CTCEncoderOutput, CTCGenerationMixin, CTCHead, check_input_features, ctc_loss


def masked(hidden_states: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, C, T) with padded frames zeroed, so a convolution over time cannot read them."""
    return hidden_states if frame_mask is None else hidden_states * frame_mask


class QuartzNetSubBlock(nn.Module):
    """Convolution over time (time-channel separable, or one full convolution) and batch norm."""

    def __init__(self, config: QuartzNetConfig, block: int, in_channels: int, stride: int):
        super().__init__()
        out_channels, kernel = config.block_channels[block], config.block_kernel_sizes[block]
        dilation, bias = config.block_dilations[block], config.conv_bias
        padding = dilation * (kernel - 1) // 2  # "same" length for stride 1; ceil(T / stride) otherwise
        self.separable = config.block_separable[block]
        if self.separable:
            self.depthwise_conv = nn.Conv1d(
                in_channels, in_channels, kernel, stride, padding, dilation, groups=in_channels, bias=bias
            )
            self.pointwise_conv = nn.Conv1d(in_channels, out_channels, 1, bias=bias)
        else:
            self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride, padding, dilation, bias=bias)
        self.norm = nn.BatchNorm1d(out_channels, eps=config.batch_norm_eps)

    def forward(self, hidden_states, frame_mask):
        if self.separable:
            hidden_states = self.pointwise_conv(self.depthwise_conv(masked(hidden_states, frame_mask)))
        else:
            hidden_states = self.conv(masked(hidden_states, frame_mask))
        return self.norm(hidden_states)


class QuartzNetResidual(nn.Module):
    """The block's input, projected to the block's width: 1x1 convolution and batch norm."""

    def __init__(self, config: QuartzNetConfig, block: int, in_channels: int):
        super().__init__()
        out_channels = config.block_channels[block]
        self.conv = nn.Conv1d(in_channels, out_channels, 1, config.block_strides[block], bias=config.conv_bias)
        self.norm = nn.BatchNorm1d(out_channels, eps=config.batch_norm_eps)

    def forward(self, hidden_states):
        return self.norm(self.conv(hidden_states))


class QuartzNetBlock(nn.Module):
    def __init__(self, config: QuartzNetConfig, block: int, in_channels: int):
        super().__init__()
        stride = config.block_strides[block]
        self.stride = stride
        self.sub_blocks = nn.ModuleList(
            QuartzNetSubBlock(
                config, block, in_channels if i == 0 else config.block_channels[block], stride if i == 0 else 1
            )
            for i in range(config.block_repeats[block])
        )
        self.residual = QuartzNetResidual(config, block, in_channels) if config.block_residual[block] else None
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden_states, frame_mask, output_mask):
        """`frame_mask` marks real frames of the input, `output_mask` those after the block's stride."""
        residual = self.residual(hidden_states) if self.residual is not None else None
        for index, sub_block in enumerate(self.sub_blocks):
            hidden_states = sub_block(hidden_states, frame_mask if index == 0 else output_mask)
            if index == len(self.sub_blocks) - 1 and residual is not None:
                hidden_states = hidden_states + residual
            hidden_states = self.dropout(self.activation(hidden_states))
        return hidden_states


class QuartzNetPreTrainedModel(PreTrainedModel):
    config_class = QuartzNetConfig
    base_model_prefix = "quartznet"
    main_input_name = "input_features"
    input_modalities = "audio"
    _no_split_modules = ["QuartzNetBlock"]
    _can_compile_fullgraph = True  # torch.compile(fullgraph=True): no data-dependent branch while compiling

    def get_output_lengths(self, feature_lengths: torch.LongTensor) -> torch.LongTensor:
        """Encoder steps (= CTC frames) for inputs of `feature_lengths` frames: (T - 1) // stride + 1 per block."""
        for stride in self.config.block_strides:
            feature_lengths = torch.div(feature_lengths - 1, stride, rounding_mode="floor") + 1
        return feature_lengths


class QuartzNetModel(QuartzNetPreTrainedModel):
    """The encoder: QuartzNet blocks over (B, num_mel_bins, T)."""

    def __init__(self, config: QuartzNetConfig):
        super().__init__(config)
        in_channels = [config.num_mel_bins] + config.block_channels[:-1]
        self.blocks = nn.ModuleList(QuartzNetBlock(config, i, c) for i, c in enumerate(in_channels))
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_features: torch.FloatTensor,
        attention_mask: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> CTCEncoderOutput:
        r"""
        input_features (`torch.FloatTensor` of shape `(batch, frames, num_mel_bins)`):
            Log-mel features from `EBranchformerFeatureExtractor`.
        attention_mask (`torch.LongTensor` of shape `(batch, frames)`, *optional*):
            1 for real frames, 0 for padding. Without it every frame counts as real.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        check_input_features(input_features, self.config.num_mel_bins)
        batch, frames, _ = input_features.shape
        lengths = attention_mask.sum(-1) if attention_mask is not None else None
        # Between blocks the hidden states are (B, T, C), the layout of the outputs, and each block runs its
        # convolutions over (B, C, T): both are views of one tensor, so no copy is made, and the hidden states
        # returned are the tensors the next block reads (on the autograd path: their .grad can be retained).
        hidden_states = input_features
        all_hidden_states = () if output_hidden_states else None
        frame_mask = self._frame_mask(lengths, frames, hidden_states)
        for block in self.blocks:
            if lengths is not None:
                lengths = torch.div(lengths - 1, block.stride, rounding_mode="floor") + 1
            # ceil(T / stride) written without negative floor division, which the ONNX exporter gets wrong
            steps = (hidden_states.shape[1] + block.stride - 1) // block.stride
            output_mask = self._frame_mask(lengths, steps, hidden_states)
            hidden_states = block(hidden_states.transpose(1, 2), frame_mask, output_mask).transpose(1, 2)
            frame_mask = output_mask
            if output_hidden_states:
                all_hidden_states += (hidden_states,)

        if lengths is None:
            lengths = torch.full((batch,), hidden_states.shape[1], device=hidden_states.device)
        return CTCEncoderOutput(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states, output_lengths=lengths
        )

    @staticmethod
    def _frame_mask(lengths, steps, like):
        """(B, 1, T) ones on real frames, or None when nothing is padded (no multiplications then). Whether
        anything is padded is only asked on CPU in eager mode: on an accelerator the answer would make the host
        wait, and torch.export, torch.compile and the ONNX tracer cannot follow a branch on it (they mask)."""
        if lengths is None or (like.device.type == "cpu" and not is_tracing(like) and bool((lengths >= steps).all())):
            return None
        return (torch.arange(steps, device=like.device) < lengths[:, None])[:, None, :].to(like.dtype)


class QuartzNetForCTC(CTCGenerationMixin, QuartzNetPreTrainedModel):
    """The encoder and a linear CTC head over the characters and the blank."""

    def __init__(self, config: QuartzNetConfig):
        super().__init__(config)
        self.quartznet = QuartzNetModel(config)
        self.lm_head = CTCHead(config.hidden_size, config.vocab_size)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_features: torch.FloatTensor,
        attention_mask: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> CausalLMOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch, target_length)`, *optional*):
            Character ids of the transcripts, padded with -100.
        """
        outputs = self.quartznet(
            input_features, attention_mask=attention_mask, output_hidden_states=output_hidden_states, return_dict=True
        )
        logits = self.lm_head(outputs.last_hidden_state)
        loss = ctc_loss(logits, outputs.output_lengths, labels, self.config) if labels is not None else None
        return CausalLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)
