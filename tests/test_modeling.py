import pytest
import torch
import torch.nn.functional as F
from course_modules import CourseEBranchformerLayer, realistic_weights

from modeling_ebranchformer import EBranchformerConfig, EBranchformerFeatureExtractor, EBranchformerForCTC
from modeling_ebranchformer.modeling import EBranchformerCSGU, EBranchformerDropout, EBranchformerLayer


@pytest.fixture
def features(speech_like):
    """Log-mel features of three speech-like signals of different lengths, padded to a batch."""
    fe = EBranchformerFeatureExtractor()
    waves = [speech_like(1.31, 0), speech_like(0.73, 1), speech_like(1.02, 2)]
    return fe(waves, sampling_rate=16000, return_tensors="pt")


def course_layer_weights_to_ours(course: CourseEBranchformerLayer) -> dict:
    """The course's parameter names (REFERENCE.md) -> this package's, tensors unchanged."""
    renames = {
        "attn.in_proj_": "self_attn.qkv_proj.",
        "attn.out_proj.": "self_attn.out_proj.",
        "feed_forward1.": "ffn1.",
        "feed_forward2.": "ffn2.",
        "depthwise_conv_fusion.": "merge.depthwise_conv.",
        "merge_proj.": "merge.proj.",
    }
    out = {}
    for name, tensor in course.state_dict().items():
        for old, new in renames.items():
            if name.startswith(old):
                name = new + name[len(old) :]
        out[name] = tensor
    return out


def test_layer_equals_the_course_layer_built_on_torch_multihead_attention(features):
    """The same weights in the course layout (nn.MultiheadAttention, written from REFERENCE.md) and in
    ours give the same output on real log-mel inputs projected to the model width."""
    torch.manual_seed(0)
    config = EBranchformerConfig()
    course = CourseEBranchformerLayer().eval()
    for name, p in course.named_parameters():  # non-trivial values everywhere, LayerNorm affine and biases too
        torch.nn.init.normal_(p, mean=1.0 if "norm" in name and name.endswith("weight") else 0.0, std=0.05)
    ours = EBranchformerLayer(config).eval()
    ours.load_state_dict(course_layer_weights_to_ours(course))
    x = torch.nn.Linear(64 * 4, 256)(features.input_features[:1, :132].reshape(1, 33, 256)).detach()
    with torch.no_grad():
        expected = course(x)
        got, _ = ours(x)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    assert expected.abs().mean() > 0.1  # a real computation, not zeros


def test_padding_does_not_change_logits(tiny_config, features):
    """Each utterance gives the same logits alone as in the padded batch. With weights of realistic scale
    (logits ~1) a padded frame leaking through any convolution or attention moves them by >1e-2."""
    model = realistic_weights(EBranchformerForCTC(tiny_config)).eval()
    lengths = features.attention_mask.sum(-1)
    assert lengths.tolist() == [132, 74, 103]  # two utterances padded, neither to a multiple of the stride
    with torch.no_grad():
        batched = model(**features).logits
        for i, n in enumerate(lengths.tolist()):
            alone = model(features.input_features[i : i + 1, :n]).logits[0]
            steps = alone.shape[0]
            assert steps == model.get_output_lengths(lengths)[i]
            assert alone.abs().mean() > 0.3  # logits of a realistic size, so 1e-4 is a relative bound too
            difference = (batched[i, :steps] - alone).abs().max().item()
            assert difference <= 1e-4, f"utterance {i}: max difference {difference}"


def test_output_lengths_are_the_number_of_logit_frames(tiny_config):
    """ceil(frames / 4): the stacking subsampling pads the last incomplete group of frames."""
    model = EBranchformerForCTC(tiny_config).eval()
    frames = torch.arange(1, 10)
    expected = [1, 1, 1, 1, 2, 2, 2, 2, 3]
    assert model.get_output_lengths(frames).tolist() == expected
    with torch.no_grad():
        assert [model(torch.zeros(1, n, 64)).logits.shape[1] for n in frames.tolist()] == expected


def test_padding_values_do_not_leak(tiny_config, features):
    model = EBranchformerForCTC(tiny_config).eval()
    garbage = features.input_features.clone()
    garbage[features.attention_mask == 0] = 1e3
    with torch.no_grad():
        clean = model(**features).logits
        dirty = model(input_features=garbage, attention_mask=features.attention_mask).logits
    assert torch.equal(clean, dirty)


def test_sdpa_and_eager_agree_and_attentions_are_returned(tiny_config, features):
    """Realistic weights make attention scores ~1, so a missing 1/sqrt(head_dim) or a wrong key mask shows."""
    sdpa = realistic_weights(EBranchformerForCTC(tiny_config)).eval()
    assert sdpa.config._attn_implementation == "sdpa"
    eager = EBranchformerForCTC.from_pretrained(
        None, config=tiny_config, state_dict=sdpa.state_dict(), attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        a = sdpa(**features, output_hidden_states=True)
        b = eager(**features, output_attentions=True)
    assert a.logits.abs().mean() > 0.3
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    assert len(a.hidden_states) == tiny_config.num_hidden_layers + 1
    steps = a.logits.shape[1]
    assert len(b.attentions) == tiny_config.num_hidden_layers
    assert b.attentions[0].shape == (3, tiny_config.num_attention_heads, steps, steps)
    # Probabilities over real keys only: rows sum to 1 and padded keys get nothing.
    lengths = sdpa.get_output_lengths(features.attention_mask.sum(-1))
    assert torch.allclose(b.attentions[0].sum(-1), torch.ones(()), atol=1e-5)
    assert b.attentions[0][1, :, :, lengths[1] :].abs().max() == 0


def test_ctc_loss_matches_per_utterance_torch_ctc(tiny_config, features):
    torch.manual_seed(0)
    model = EBranchformerForCTC(tiny_config).eval()
    labels = torch.tensor([[5, 6, 0, 7], [3, 3, -100, -100], [9, -100, -100, -100]])
    with torch.no_grad():
        out = model(**features, labels=labels)
    lengths = model.get_output_lengths(features.attention_mask.sum(-1))
    per_utterance = []
    for i in range(3):
        target = labels[i][labels[i] >= 0]
        log_probs = out.logits[i : i + 1, : lengths[i]].log_softmax(-1).transpose(0, 1)
        loss = F.ctc_loss(log_probs, target[None], lengths[i : i + 1], torch.tensor([len(target)]), blank=33)
        per_utterance.append(loss)  # reduction='mean' divides by the target length
    assert torch.allclose(out.loss, torch.stack(per_utterance).mean(), atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_config, features):
    tiny_config.dropout = 0.0
    model = realistic_weights(EBranchformerForCTC(tiny_config)).train()
    labels = torch.tensor([[5, 6, 0, 7], [3, 4, -100, -100], [9, -100, -100, -100]])
    model(**features, labels=labels).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable()
    flags = [layer.gradient_checkpointing for layer in model.ebranchformer.layers]
    assert flags == [True] * tiny_config.num_hidden_layers
    model(**features, labels=labels).loss.backward()
    parameters = dict(model.named_parameters())
    assert parameters.keys() == plain.keys() and len(plain) > 50
    for name, p in parameters.items():
        assert plain[name].abs().max() > 0, name  # every parameter gets a gradient to compare
        assert torch.allclose(p.grad, plain[name], rtol=1e-4, atol=1e-6), name


def test_a_few_adam_steps_fit_the_ctc_loss(tiny_config, features):
    """The loss trains: 10 Adam steps on three utterances cut the CTC loss to under a third."""
    tiny_config.dropout = 0.0
    torch.manual_seed(0)
    model = EBranchformerForCTC(tiny_config).train()
    labels = torch.tensor([[5, 6, 0, 7], [3, 4, -100, -100], [9, -100, -100, -100]])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        loss = model(**features, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 3, losses


def test_wrong_feature_shape_raises(tiny_config):
    with pytest.raises(ValueError, match=r"\(batch, frames, 64\)"):
        EBranchformerForCTC(tiny_config)(torch.zeros(2, 100, 80))


def test_spec_augment_masks_only_in_training(tiny_config, features):
    tiny_config.update(
        {
            "apply_spec_augment": True,
            "mask_time_prob": 0.3,
            "mask_feature_prob": 0.3,
            "mask_feature_length": 5,
            "dropout": 0.0,
        }
    )
    model = EBranchformerForCTC(tiny_config)
    encoder = model.ebranchformer
    x, mask = features.input_features, features.attention_mask
    encoder.train()
    masked = encoder._spec_augment(x, mask)
    changed = masked != x
    assert changed.any()
    whole_frames = changed.all(-1) & (mask == 1)  # time masks cover whole frames
    whole_bins = changed.all(1)  # frequency masks cover whole bins
    assert whole_frames.any() and whole_bins.any()
    encoder.eval()
    assert torch.equal(encoder._spec_augment(x, mask), x)
    model.config.apply_spec_augment = False
    encoder.train()
    assert torch.equal(encoder._spec_augment(x, mask), x)


def test_positions_beyond_the_table_raise(tiny_config):
    tiny_config.max_position_embeddings = 10
    with pytest.raises(ValueError, match="max_position_embeddings"):
        EBranchformerForCTC(tiny_config)(torch.zeros(1, 4 * 11, 64))


def test_dropout_zeroes_a_fraction_p_and_keeps_the_expected_value():
    """Kept values are scaled by 1/(1-p), so the mean is unchanged in training; eval is the identity."""
    torch.manual_seed(0)
    dropout = EBranchformerDropout(0.3).train()
    x = torch.full((4, 50_000), 2.0)
    y = dropout(x)
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(0.7, abs=0.005)
    assert torch.allclose(y[kept], torch.tensor(2.0 / 0.7))
    assert y.mean().item() == pytest.approx(2.0, rel=0.01)
    assert not torch.equal(dropout(x), y)  # a fresh mask each call
    assert torch.equal(dropout.eval()(x), x)


def test_fresh_csgu_gate_is_one_so_the_cgmlp_starts_as_a_plain_mlp(tiny_config):
    """ESPnet's initialisation: depthwise conv weights ~N(0, 1e-6) and bias 1, so the gate is ~1 and the
    CSGU passes its value half through unchanged."""
    model = EBranchformerForCTC(tiny_config)
    csgus = [m for m in model.modules() if isinstance(m, EBranchformerCSGU)]
    assert len(csgus) == tiny_config.num_hidden_layers
    for csgu in csgus:
        assert torch.equal(csgu.conv.bias, torch.ones_like(csgu.conv.bias))
        assert 0.7e-6 < csgu.conv.weight.std().item() < 1.3e-6
        assert csgu.conv.weight.mean().abs().item() < 1e-7
    x = 3 * torch.randn(2, 20, tiny_config.cgmlp_intermediate_size)
    value_half = x[..., : tiny_config.cgmlp_intermediate_size // 2]
    with torch.no_grad():
        assert torch.allclose(csgus[0].eval()(x, None), value_half, atol=1e-4)


def test_return_dict_false_gives_the_same_values_as_a_tuple(tiny_config, features):
    from modeling_ebranchformer import QuartzNetConfig, QuartzNetForCTC

    labels = torch.tensor([[1, 2], [3, -100], [4, 5]])
    for model in (EBranchformerForCTC(tiny_config).eval(), QuartzNetForCTC(QuartzNetConfig()).eval()):
        named = model(**features, labels=labels, output_hidden_states=True)
        as_tuple = model(**features, labels=labels, output_hidden_states=True, return_dict=False)
        assert len(as_tuple) == 3 and torch.equal(as_tuple[0], named.loss) and torch.equal(as_tuple[1], named.logits)
        assert len(as_tuple[2]) == len(named.hidden_states) > 1
        model.config.return_dict = False  # the config's choice holds too, and generate() still works
        assert torch.equal(model(**features)[0], named.logits)
        assert model.generate(**features).shape == named.logits.shape[:2]


def test_hidden_states_and_attentions_are_on_the_autograd_path(tiny_config, features):
    """Transformers' test_retain_grad_hidden_states_attentions: retained gradients of the returned hidden
    states and attention probabilities are filled, for probing and attribution."""
    model = EBranchformerForCTC(tiny_config).train()
    out = model(**features, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == tiny_config.num_hidden_layers + 1
    tensors = [*out.hidden_states, *out.attentions]
    for tensor in tensors:
        tensor.retain_grad()
    out.logits.square().sum().backward()
    for tensor in tensors:
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0
