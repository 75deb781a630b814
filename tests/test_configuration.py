import pytest

from modeling_ebranchformer import EBranchformerConfig


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


def test_round_trip(tmp_path):
    EBranchformerConfig(hidden_size=128, num_attention_heads=2).save_pretrained(tmp_path)
    loaded = EBranchformerConfig.from_pretrained(tmp_path)
    assert (loaded.hidden_size, loaded.num_attention_heads) == (128, 2)
