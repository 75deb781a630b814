"""QuartzNetForCTC: configuration checks, output lengths, padding invariance and the CTC loss."""

import pytest
import torch

from modeling_ebranchformer import QuartzNetConfig, QuartzNetForCTC

SMALL = dict(block_channels=[32, 32, 48], block_repeats=[1, 2, 1], block_kernel_sizes=[11, 9, 1],
             block_strides=[4, 1, 1], block_dilations=[1, 2, 1], block_residual=[False, True, False],
             block_separable=[True, True, False])  # fmt: skip


def test_defaults_are_the_course_5x5():
    config = QuartzNetConfig()
    assert config.block_channels == [256, 256, 256, 512, 512, 512, 512, 1024]
    assert config.block_repeats == [1, 5, 5, 5, 5, 5, 1, 1]
    assert config.inputs_to_logits_ratio == 640 and config.hidden_size == 1024 and config.pad_token_id == 33


@pytest.mark.parametrize("change,message", [
    ({"block_kernel_sizes": [11, 8, 1]}, r"block_kernel_sizes\[1\] \(8\) must be odd"),
    ({"block_repeats": [1, 2]}, "block_\\* lists must be non-empty and equally long"),
    ({"block_strides": [4, 0, 1]}, r"block_strides\[1\] must be a positive integer, got 0"),
    ({"pad_token_id": 34}, r"pad_token_id \(34\) must lie in \[0, vocab_size\)"),
])  # fmt: skip
def test_invalid_configurations_are_rejected(change, message):
    with pytest.raises(ValueError, match=message):
        QuartzNetConfig(**{**SMALL, **change})


def test_output_lengths_match_the_logits():
    model = QuartzNetForCTC(QuartzNetConfig(**SMALL)).eval()
    for frames in (1, 4, 5, 101, 400):
        logits = model(torch.randn(1, frames, 64)).logits
        assert logits.shape[1] == model.get_output_lengths(torch.tensor([frames])).item() == (frames - 1) // 4 + 1


def test_padding_does_not_change_the_logits():
    torch.manual_seed(0)
    model = QuartzNetForCTC(QuartzNetConfig(**SMALL))
    model.train()  # a few steps of batch-norm statistics, so that eval is not the identity
    for _ in range(3):
        model(torch.randn(4, 200, 64))
    model.eval()
    lengths = [200, 157, 61, 9]
    features = torch.randn(4, 200, 64)
    mask = (torch.arange(200) < torch.tensor(lengths)[:, None]).long()
    with torch.no_grad():
        batch = model(features, attention_mask=mask).logits
        for i, n in enumerate(lengths):
            alone = model(features[i : i + 1, :n]).logits[0]
            assert (batch[i, : alone.shape[0]] - alone).abs().max() <= 1e-4


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
