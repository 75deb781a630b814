"""QuartzNetForCTC: configuration checks, output lengths, padding invariance and the CTC loss."""

import re

import pytest
import torch
from course_modules import CourseQuartzNetEncoder, realistic_weights
from small_models import QUARTZNET_SMALL as SMALL

from modeling_ebranchformer import QuartzNetConfig, QuartzNetForCTC


def test_defaults_are_the_course_5x5():
    config = QuartzNetConfig()
    assert config.block_channels == [256, 256, 256, 512, 512, 512, 512, 1024]
    assert config.block_repeats == [1, 5, 5, 5, 5, 5, 1, 1]
    assert config.inputs_to_logits_ratio == 640 and config.hidden_size == 1024 and config.pad_token_id == 33


@pytest.mark.parametrize(
    "change,message",
    [
        ({"block_kernel_sizes": [11, 8, 1]}, r"block_kernel_sizes\[1\] \(8\) must be odd"),
        ({"block_repeats": [1, 2]}, "block_\\* lists must be non-empty and equally long"),
        ({"block_strides": [4, 0, 1]}, r"block_strides\[1\] must be a positive integer, got 0"),
        ({"pad_token_id": 34}, r"pad_token_id \(34\) must lie in \[0, vocab_size\)"),
    ],
)
def test_invalid_configurations_are_rejected(change, message):
    with pytest.raises(ValueError, match=message):
        QuartzNetConfig(**{**SMALL, **change})


def test_output_lengths_match_the_logits():
    model = QuartzNetForCTC(QuartzNetConfig(**SMALL)).eval()
    for frames in (1, 4, 5, 101, 400):
        logits = model(torch.randn(1, frames, 64)).logits
        assert logits.shape[1] == model.get_output_lengths(torch.tensor([frames])).item() == (frames - 1) // 4 + 1


def test_the_ctc_head_runs_in_float32_under_autocast():
    """Under bf16 autocast the encoder computes in bf16 and the CTC head (`CTCHead`) gives the float32 product of the
    encoder's output and its float32 weights, exactly, as E-Branchformer's (tests/test_precision.py)."""
    model = realistic_weights(QuartzNetForCTC(QuartzNetConfig(**SMALL))).eval()
    features = torch.randn(2, 120, 64)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        hidden = model.quartznet(features).last_hidden_state
        logits = model(features).logits
    assert hidden.dtype == torch.bfloat16 and logits.dtype == torch.float32
    expected = torch.nn.functional.linear(hidden.float(), model.lm_head.weight, model.lm_head.bias)
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)


def test_padding_does_not_change_the_logits():
    """Each utterance gives the same logits alone as in the padded batch, whatever the padding holds. With
    weights of realistic scale (logits ~1) a padded frame leaking into a convolution moves them by >1e-2."""
    model = realistic_weights(QuartzNetForCTC(QuartzNetConfig(**SMALL))).eval()
    lengths = [200, 157, 61, 9]
    features = torch.randn(4, 200, 64, generator=torch.Generator().manual_seed(0))
    mask = (torch.arange(200) < torch.tensor(lengths)[:, None]).long()
    with torch.no_grad():
        batch = model(features, attention_mask=mask).logits
        for i, n in enumerate(lengths):
            alone = model(features[i : i + 1, :n]).logits[0]
            assert alone.shape[0] == (n - 1) // 4 + 1
            assert alone.abs().mean() > 0.1  # logits of a realistic size, so 1e-4 is a relative bound too
            difference = (batch[i, : alone.shape[0]] - alone).abs().max().item()
            assert difference <= 1e-4, f"utterance {i}: max difference {difference}"


def course_quartznet_weights_to_ours(course: CourseQuartzNetEncoder, config: QuartzNetConfig) -> dict:
    """Course names (nested sub-blocks: depthwise, pointwise, batch norm) -> this package's QuartzNetModel's."""
    out = {}
    for name, tensor in course.state_dict().items():
        block, rest = re.fullmatch(r"layers\.(\d+)\.(.*)", name).groups()
        if rest.startswith("res.0."):
            index, field = rest[len("res.0.") :].split(".", 1)
            out[f"blocks.{block}.residual.{['conv', 'norm'][int(index)]}.{field}"] = tensor
            continue
        sub_block, index, field = re.fullmatch(r"conv\.(\d+)\.(\d+)\.(.*)", rest).groups()
        parts = ["depthwise_conv", "pointwise_conv", "norm"] if config.block_separable[int(block)] else ["conv", "norm"]
        out[f"blocks.{block}.sub_blocks.{sub_block}.{parts[int(index)]}.{field}"] = tensor
    return out


def test_encoder_equals_the_course_quartznet_on_the_same_weights():
    """Blocks, residual connections, strides and dilations as the course's NeMo-style encoder computes them."""
    config = QuartzNetConfig(**SMALL)
    course_blocks = list(
        zip(
            config.block_channels,
            config.block_repeats,
            config.block_kernel_sizes,
            config.block_strides,
            config.block_dilations,
            config.block_residual,
            config.block_separable,
        )
    )
    course = realistic_weights(CourseQuartzNetEncoder(blocks=course_blocks, nested=True)).eval()
    ours = QuartzNetForCTC(config).quartznet.eval()
    ours.load_state_dict(course_quartznet_weights_to_ours(course, config))
    features = torch.randn(2, 101, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = course(features)
        got = ours(features).last_hidden_state
    assert got.shape == expected.shape == (2, 26, 48)
    assert expected.abs().mean() > 0.1  # a real computation, not zeros
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_ctc_loss_is_torch_ctc_loss_over_the_valid_frames():
    torch.manual_seed(0)
    model = QuartzNetForCTC(QuartzNetConfig(**SMALL))
    labels = torch.tensor([[1, 2, 3, -100], [4, 0, 5, 6]])
    out = model(torch.randn(2, 120, 64), attention_mask=torch.ones(2, 120, dtype=torch.long), labels=labels)
    log_probs = out.logits.log_softmax(-1).transpose(0, 1)
    targets = torch.tensor([1, 2, 3, 4, 0, 5, 6])
    expected = torch.nn.CTCLoss(blank=33)(log_probs, targets, torch.tensor([30, 30]), torch.tensor([3, 4]))
    assert torch.isfinite(out.loss) and torch.allclose(out.loss, expected, rtol=1e-6)
    out.loss.backward()
    assert model.lm_head.weight.grad.abs().sum() > 0


def test_hidden_states_are_on_the_autograd_path():
    """Issue #23 (2), Transformers' test_retain_grad_hidden_states_attentions: each returned hidden state is
    the tensor the next block reads, so a retained gradient is filled (and equals autograd.grad's), not a copy
    made for the output whose .grad stays None."""
    torch.manual_seed(0)
    model = QuartzNetForCTC(QuartzNetConfig(**SMALL)).train()
    mask = (torch.arange(48) < torch.tensor([48, 30])[:, None]).long()
    out = model(torch.randn(2, 48, 64), attention_mask=mask, output_hidden_states=True)
    assert len(out.hidden_states) == len(SMALL["block_channels"])
    assert [h.shape for h in out.hidden_states] == [(2, 12, 32), (2, 12, 32), (2, 12, 48)]
    loss = out.logits.square().sum()
    expected = torch.autograd.grad(loss, out.hidden_states, retain_graph=True)
    for hidden in out.hidden_states:
        hidden.retain_grad()
    loss.backward()
    for hidden, grad in zip(out.hidden_states, expected):
        assert hidden.grad is not None and hidden.grad.abs().sum() > 0
        assert torch.allclose(hidden.grad, grad)
