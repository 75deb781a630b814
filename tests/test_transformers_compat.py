"""What Transformers' shared test suites (ModelTesterMixin and the slow torch.export tests) check of a model
inside Transformers, for both models of the package (issue #23): attention implementations chosen at load
time and at run time through Transformers' attention functions, torch.export with dynamic batch and time,
torch.compile. The other items of the issue are tested next to the code they concern: configs built from
their defaults with another vocabulary (test_configuration.py), gradients of hidden states
(test_modeling*.py), added tokens (test_tokenization.py).

Weights are realistic (course_modules.realistic_weights), so a mask or an attention function that is not
applied moves the logits far beyond the tolerances."""

import pytest
import torch
from course_modules import realistic_weights
from small_models import QUARTZNET_SMALL
from transformers import AttentionInterface, AutoModelForCTC
from transformers.integrations.sdpa_attention import sdpa_attention_forward

import modeling_ebranchformer.modeling as ebranchformer_modeling
from modeling_ebranchformer import EBranchformerConfig, EBranchformerForCTC, QuartzNetConfig, QuartzNetForCTC


@pytest.fixture(scope="module")
def make_model(tiny_config_values):
    """make_model(name): the tiny E-Branchformer or a small QuartzNet with realistic weights, in eval mode."""

    def make(name):
        if name == "ebranchformer":
            return realistic_weights(EBranchformerForCTC(EBranchformerConfig(**tiny_config_values))).eval()
        return realistic_weights(QuartzNetForCTC(QuartzNetConfig(**QUARTZNET_SMALL))).eval()

    return make


def batch(lengths, seed=0):
    """Random features for utterances of `lengths` frames, padded with garbage, and their attention mask."""
    frames = max(lengths)
    features = torch.randn(len(lengths), frames, 64, generator=torch.Generator().manual_seed(seed))
    mask = (torch.arange(frames) < torch.tensor(lengths)[:, None]).long()
    return {"input_features": features.masked_fill(mask[..., None] == 0, 100.0), "attention_mask": mask}


PADDED = [101, 70, 33]
# Other batch sizes and lengths, padded and not, to run an exported or compiled model on.
OTHER_SHAPES = [[57, 57], [13], [203, 160, 90, 9, 203]]


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def test_attn_implementation_at_load_time_and_at_run_time(tmp_path, monkeypatch, make_model, tiny_config_values):
    """Transformers' test_can_set_attention_dynamically and test_eager_matches_sdpa_inference: the choice
    reaches the config and the attention layers, and eager and SDPA give the same logits on a padded batch.
    (set_attn_implementation used to keep "sdpa" with a warning: the attention did not use the interface.)"""
    model = make_model("ebranchformer")
    model.save_pretrained(tmp_path)
    inputs = batch(PADDED)
    reference = logits(model, inputs)
    assert model.config._attn_implementation == "sdpa" and reference.abs().mean() > 0.3

    eager_calls = []

    def counting_eager(*args, **kwargs):
        eager_calls.append(1)
        return eager_attention_forward(*args, **kwargs)

    eager_attention_forward = ebranchformer_modeling.eager_attention_forward
    monkeypatch.setattr(ebranchformer_modeling, "eager_attention_forward", counting_eager)
    layers = tiny_config_values["num_hidden_layers"]
    for implementation in ("eager", "sdpa"):
        loaded = AutoModelForCTC.from_pretrained(tmp_path, attn_implementation=implementation).eval()
        assert loaded.config._attn_implementation == implementation
        eager_calls.clear()
        assert torch.allclose(logits(loaded, inputs), reference, atol=1e-5)
        assert len(eager_calls) == (layers if implementation == "eager" else 0)
    for implementation in ("eager", "sdpa", "eager"):
        model.set_attn_implementation(implementation)
        assert model.config._attn_implementation == implementation
        assert model.ebranchformer.config._attn_implementation == implementation
        eager_calls.clear()
        assert torch.allclose(logits(model, inputs), reference, atol=1e-5)
        assert len(eager_calls) == (layers if implementation == "eager" else 0)
    # output_attentions needs the probabilities: eager computes them whatever the implementation.
    model.set_attn_implementation("sdpa")
    eager_calls.clear()
    with torch.no_grad():
        attentions = model(**inputs, output_attentions=True).attentions
    assert len(eager_calls) == layers and attentions[0].shape == (3, 2, 26, 26)


def test_a_registered_attention_function_is_chosen_at_load_time_and_at_run_time(
    tmp_path, make_model, tiny_config_values
):
    """A kernel registered with AttentionInterface (Transformers' attention backends) runs in every layer and
    gets the key-padding mask as SDPA does: booleans (batch, 1, 1, steps), True on real frames."""
    masks = []

    def recording_sdpa(module, query, key, value, attention_mask, **kwargs):
        masks.append(attention_mask)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("recording_sdpa", recording_sdpa)
    try:
        model = make_model("ebranchformer")
        inputs = batch(PADDED)
        reference = logits(model, inputs)
        model.set_attn_implementation("recording_sdpa")
        assert model.config._attn_implementation == "recording_sdpa"
        assert torch.allclose(logits(model, inputs), reference, atol=1e-5)
        assert len(masks) == tiny_config_values["num_hidden_layers"]
        steps = model.get_output_lengths(inputs["attention_mask"].sum(-1))
        assert torch.equal(masks[0], (torch.arange(26) < steps[:, None])[:, None, None, :])

        model.save_pretrained(tmp_path)
        masks.clear()
        loaded = AutoModelForCTC.from_pretrained(tmp_path, attn_implementation="recording_sdpa").eval()
        assert torch.allclose(logits(loaded, inputs), reference, atol=1e-5) and len(masks) == 2
    finally:
        del AttentionInterface._global_mapping["recording_sdpa"]


def test_flex_attention_matches_sdpa(make_model):
    """flex_attention gets Transformers' BlockMask of the padding (compiled by PyTorch on first use)."""
    model = make_model("ebranchformer")
    inputs = batch(PADDED)
    reference = logits(model, inputs)
    model.set_attn_implementation("flex_attention")
    assert model.config._attn_implementation == "flex_attention"
    assert torch.allclose(logits(model, inputs), reference, atol=1e-5)


@pytest.mark.parametrize("name", ["ebranchformer", "quartznet"])
def test_torch_export_with_dynamic_batch_and_time(name, make_model):
    """Transformers' slow torch.export tests, with dynamic shapes: one program for any batch and length
    equals eager within 1e-5. The CPU shortcut that skips the masks when nothing is padded asked the data
    (bool(...)), which export cannot follow (GuardOnDataDependentSymNode); traced graphs now always mask."""
    model = make_model(name)
    dynamic = {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC}
    program = torch.export.export(
        model, args=(), kwargs=batch(PADDED), dynamic_shapes={"input_features": dynamic, "attention_mask": dynamic}
    )
    exported = program.module()
    for seed, lengths in enumerate([PADDED, *OTHER_SHAPES]):
        inputs = batch(lengths, seed)
        expected = logits(model, inputs)
        assert expected.abs().mean() > 0.1
        assert torch.allclose(logits(exported, inputs), expected, atol=1e-5), lengths


@pytest.mark.parametrize("name", ["ebranchformer", "quartznet"])
def test_torch_compile_matches_eager(name, make_model):
    """torch.compile with fullgraph=True (no graph break: the data-dependent shortcut is skipped while
    compiling) and dynamic shapes; inductor on CPU compiles C++, a few seconds to a minute."""
    model = make_model(name)
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    for seed, lengths in enumerate([PADDED, [57, 57]]):
        inputs = batch(lengths, seed)
        assert torch.allclose(logits(compiled, inputs), logits(model, inputs), atol=1e-5), lengths
