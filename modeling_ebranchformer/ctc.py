"""What the CTC models of this package share: the encoder output, the input check, the CTC head, the CTC loss and
greedy decoding (`generate`, as `ParakeetForCTC` has it)."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import BaseModelOutput


@dataclass
class CTCEncoderOutput(BaseModelOutput):
    """`BaseModelOutput` plus `output_lengths`: valid encoder steps per utterance (the rest is padding)."""

    output_lengths: torch.LongTensor | None = None


def check_input_features(input_features: torch.Tensor, num_mel_bins: int):
    if input_features.dim() != 3 or input_features.shape[-1] != num_mel_bins:
        raise ValueError(
            f"input_features must have shape (batch, frames, {num_mel_bins}), got {tuple(input_features.shape)}"
        )


class Float32Linear(nn.Linear):
    """A linear layer that multiplies in its weights' dtype under autocast: float32 on float32 weights, while a model
    cast to bf16 whole stays bf16. For the few products at the model's two ends whose rounding to bf16 everything
    after them would carry (`CTCHead`, the E-Branchformer's subsampling). Devices torch has no autocast for (meta;
    MPS before torch 2.5) take the plain path."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        device = hidden_states.device.type
        if not torch.amp.is_autocast_available(device) or not torch.is_autocast_enabled(device):
            return super().forward(hidden_states)
        with torch.autocast(device, enabled=False):
            return super().forward(hidden_states.to(self.weight.dtype))


class CTCHead(Float32Linear):
    """The linear layer from the encoder's output to the CTC logits, in float32 under autocast (`Float32Linear`).
    In bf16 a trained model's best logits, near 10, would be rounded to steps of 1/32-1/16: a rounding of what the
    log-softmax, the CTC loss and every decoder compare, and the largest single part of bf16 inference's difference
    from float32 (docs/precision.md). The head is about 0.1 % of the model's multiply-adds. Whatever runs the model
    under autocast gets it: training, evaluation, the inference backends."""


def ctc_loss(logits, output_lengths, labels, config):
    """CTC loss as `Wav2Vec2ForCTC` computes it: labels padded at the end with -100, log-softmax in float32,
    the blank `config.pad_token_id`, `config.ctc_loss_reduction` and `config.ctc_zero_infinity`.

    Labels are not checked here: a check would make the host wait for the device on every step. They are
    checked once where they are made (`EBranchformerProcessor.labels`, `DataCollatorCTC`)."""
    label_mask = labels >= 0
    label_lengths = label_mask.sum(-1)
    # Padded (batch, max_length) targets rather than Wav2Vec2's `masked_select` to one flat sequence: the
    # flat form has a data-dependent size, which would make the host wait for the device every step.
    targets = labels.masked_fill(~label_mask, 0)
    log_probs = F.log_softmax(logits, dim=-1, dtype=torch.float32).transpose(0, 1)
    # cuDNN's CTC kernel needs int32 lengths on the CPU and other constraints; the native one is as fast here.
    with torch.backends.cudnn.flags(enabled=False):
        return F.ctc_loss(
            log_probs,
            targets,
            output_lengths,
            label_lengths,
            blank=config.pad_token_id,
            reduction=config.ctc_loss_reduction,
            zero_infinity=config.ctc_zero_infinity,
        )


class CTCGenerationMixin:
    """Greedy CTC decoding for a `...ForCTC` model with `get_output_lengths`."""

    @torch.no_grad()
    def generate(self, input_features: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        """The most likely class of every output frame, (batch, frames); frames that are padding hold the
        blank (`config.pad_token_id`), so `processor.batch_decode(ids)` gives the transcripts. Padded frames
        must be blanked: their logits are not trained and would otherwise add junk characters."""
        logits = self(input_features, attention_mask=attention_mask, return_dict=True, **kwargs).logits
        return self.greedy_ids(logits, attention_mask)

    def greedy_ids(self, logits: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.LongTensor:
        """`generate`'s result from logits already computed (the Trainer's evaluation has them)."""
        ids = logits.argmax(-1)
        if attention_mask is None:
            return ids
        lengths = self.get_output_lengths(attention_mask.sum(-1))
        padding = torch.arange(ids.shape[1], device=ids.device) >= lengths[:, None]
        return ids.masked_fill(padding, self.config.pad_token_id)


def output_frames(model, feature_extractor, durations) -> list[int]:
    """CTC frames that `model` gives for audio of each duration (seconds), counted the way the features and
    the model count them: the one place where seconds become frames."""
    samples = [round(d * feature_extractor.sampling_rate) for d in durations]
    frames = torch.tensor([feature_extractor.num_frames(n) for n in samples], dtype=torch.long)
    return model.get_output_lengths(frames).tolist()
