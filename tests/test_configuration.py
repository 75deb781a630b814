import pytest
import torch
from transformers import AutoConfig, AutoModelForCTC

from modeling_ebranchformer import EBranchformerConfig, EBranchformerForCTC, QuartzNetConfig


def test_defaults_are_the_course_configuration():
    c = EBranchformerConfig()
    assert (c.num_mel_bins, c.subsampling_stride, c.hidden_size, c.num_hidden_layers) == (64, 4, 256, 8)
    assert (c.num_attention_heads, c.cgmlp_intermediate_size, c.cgmlp_conv_kernel_size) == (4, 768, 7)
    assert (c.ffn_intermediate_size, c.merge_conv_kernel_size, c.dropout) == (512, 31, 0.1)
    assert (c.max_position_embeddings, c.vocab_size, c.pad_token_id) == (5000, 34, 33)
    assert c.apply_spec_augment is False
    assert c.inputs_to_logits_ratio == 640


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hidden_size": 250}, "divisible by num_attention_heads"),
        ({"cgmlp_intermediate_size": 767}, "must be even"),
        ({"cgmlp_conv_kernel_size": 6}, "cgmlp_conv_kernel_size \\(6\\) must be odd"),
        ({"merge_conv_kernel_size": 30}, "merge_conv_kernel_size \\(30\\) must be odd"),
        ({"num_hidden_layers": 0}, "num_hidden_layers must be a positive integer"),
        ({"position_embedding_type": "rope"}, "position_embedding_type"),
        ({"ctc_loss_reduction": "max"}, "ctc_loss_reduction"),
        ({"pad_token_id": 34}, "pad_token_id"),
        ({"dropout": 1.5}, "dropout must lie in"),
    ],
)
def test_invalid_values_raise_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EBranchformerConfig(**kwargs)


SMALL = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "cgmlp_intermediate_size": 16,
    "ffn_intermediate_size": 16,
    "merge_conv_kernel_size": 3,
}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        # Each passed validation and then broke the model: at construction, in training or in every output.
        ({"hidden_size": 33, "num_attention_heads": 3}, "hidden_size \\(33\\) must be even with position_embedding"),
        ({"layer_norm_eps": 0.0}, "layer_norm_eps must be a positive number \\(LayerNorm .*\\), got 0.0"),
        ({"layer_norm_eps": -1e-5}, "layer_norm_eps must be a positive number"),
        ({"apply_spec_augment": True, "mask_time_length": 0}, "mask_time_length must be a positive integer, got 0"),
        ({"mask_feature_length": -2}, "mask_feature_length must be a positive integer, got -2"),
        ({"mask_time_min_masks": -1}, "mask_time_min_masks must be an integer >= 0, got -1"),
        ({"mask_feature_min_masks": 1.5}, "mask_feature_min_masks must be an integer >= 0, got 1.5"),
        (
            {"apply_spec_augment": True, "mask_feature_prob": 0.1, "mask_feature_length": 65},
            "mask_feature_length \\(65\\) must be at most num_mel_bins \\(64\\)",
        ),
        ({"initializer_range": 0.0}, "initializer_range must be a positive number"),
        ({"initializer_range": -0.02}, "initializer_range must be a positive number"),
        ({"dropout": "0.1"}, "dropout must lie in \\[0, 1\\], got '0.1'"),
        ({"apply_spec_augment": "false"}, "apply_spec_augment must be True or False, got 'false'"),
        ({"ctc_zero_infinity": 1}, "ctc_zero_infinity must be True or False, got 1"),
        ({"pad_token_id": 34}, "pad_token_id \\(the CTC blank, 34\\)"),
    ],
)
def test_values_that_broke_the_model_raise_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EBranchformerConfig(**{**SMALL, **kwargs})


def test_odd_width_without_sinusoidal_positions_builds():
    # The even-width rule is the sinusoidal table's, not the model's.
    odd = {**SMALL, "hidden_size": 33, "num_attention_heads": 3}
    config = EBranchformerConfig(**odd, position_embedding_type="none")
    assert EBranchformerForCTC(config).eval()(torch.zeros(1, 8, 64)).logits.shape == (1, 2, 34)


def test_values_given_to_from_pretrained_or_set_before_saving_are_checked(tmp_path):
    EBranchformerConfig(**SMALL).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="layer_norm_eps must be a positive number"):
        EBranchformerConfig.from_pretrained(tmp_path, layer_norm_eps=0.0)
    with pytest.raises(ValueError, match="layer_norm_eps must be a positive number"):
        EBranchformerForCTC.from_pretrained(tmp_path, layer_norm_eps=0.0)
    config = EBranchformerConfig(**SMALL)
    config.mask_time_length = 0
    with pytest.raises(ValueError, match="mask_time_length must be a positive integer"):
        config.save_pretrained(tmp_path / "changed")


QUARTZNET_SMALL = dict(
    block_channels=[32, 48],
    block_repeats=[1, 1],
    block_kernel_sizes=[11, 1],
    block_strides=[4, 1],
    block_dilations=[1, 1],
    block_residual=[False, False],
    block_separable=[True, False],
)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_norm_eps": 0.0}, "batch_norm_eps must be a positive number"),
        ({"batch_norm_eps": -1e-3}, "batch_norm_eps must be a positive number"),
        ({"initializer_range": 0}, "initializer_range must be a positive number"),
        ({"vocab_size": 0, "pad_token_id": 0}, "vocab_size must be a positive integer, got 0"),
        ({"num_mel_bins": 64.0}, "num_mel_bins must be a positive integer, got 64.0"),
        ({"dropout": "0.2"}, "dropout must lie in \\[0, 1\\], got '0.2'"),
        ({"block_residual": ["false", False]}, "block_residual\\[0\\] must be True or False, got 'false'"),
        ({"conv_bias": "no"}, "conv_bias must be True or False, got 'no'"),
        ({"vocab_size": 12, "pad_token_id": 12}, "pad_token_id \\(12\\) must lie in \\[0, vocab_size\\)"),
    ],
)
def test_quartznet_values_that_broke_the_model_raise_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuartzNetConfig(**{**QUARTZNET_SMALL, **kwargs})


def test_quartznet_values_given_to_from_pretrained_are_checked(tmp_path):
    config = QuartzNetConfig(**{**QUARTZNET_SMALL, "block_residual": [0, 1], "block_separable": [1, 0]})
    assert config.block_residual == [False, True] and config.block_separable == [True, False]  # bits still work
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="batch_norm_eps must be a positive number"):
        QuartzNetConfig.from_pretrained(tmp_path, batch_norm_eps=0.0)


def test_round_trip(tmp_path):
    EBranchformerConfig(hidden_size=128, num_attention_heads=2).save_pretrained(tmp_path)
    loaded = EBranchformerConfig.from_pretrained(tmp_path)
    assert (loaded.hidden_size, loaded.num_attention_heads) == (128, 2)


@pytest.mark.parametrize("config_class", [EBranchformerConfig, QuartzNetConfig])
def test_the_blank_follows_the_vocabulary_unless_given(config_class, tmp_path):
    """Issue #23 (1): `Config(vocab_size=12)` builds from the other defaults (Transformers' ConfigTester does
    this): the blank is the last class, as the course's is. A given blank is kept; an inconsistent one raises,
    at construction and when set before saving."""
    small = SMALL if config_class is EBranchformerConfig else QUARTZNET_SMALL
    assert config_class().pad_token_id == 33  # the course: 33 characters, then the blank
    assert config_class(vocab_size=12).pad_token_id == 11
    assert config_class(vocab_size=12, pad_token_id=None).pad_token_id == 11
    assert config_class(vocab_size=12, pad_token_id=0).pad_token_id == 0
    config = config_class(**small, vocab_size=12)
    assert config.pad_token_id == 11

    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is config_class
    assert {**loaded.to_dict(), "_name_or_path": ""} == {**config.to_dict(), "_name_or_path": ""}
    assert (loaded.vocab_size, loaded.pad_token_id) == (12, 11)
    model = AutoModelForCTC.from_config(loaded).eval()
    labels = torch.tensor([[1, 10, 2]])
    out = model(torch.randn(1, 64, 64), labels=labels)
    assert out.logits.shape[-1] == 12 and torch.isfinite(out.loss)

    with pytest.raises(ValueError, match="pad_token_id"):
        config_class(vocab_size=12, pad_token_id=33)
    for value in (12, None):
        config.pad_token_id = value
        with pytest.raises(ValueError, match="pad_token_id"):
            config.save_pretrained(tmp_path / "changed")
