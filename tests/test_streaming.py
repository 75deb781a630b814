"""Streaming: the chunk-masked model, its cached chunk-by-chunk step, and the recogniser built on it."""

import pytest
import torch

from modeling_ebranchformer import EBranchformerConfig, EBranchformerForCTC
from modeling_ebranchformer.modeling import EBranchformerStreamingCache, chunk_attention_mask


@pytest.fixture(scope="module")
def streaming_model(tiny_config_values):
    torch.manual_seed(0)
    values = dict(tiny_config_values, causal_convolutions=True, max_position_embeddings=5000)
    model = EBranchformerForCTC(EBranchformerConfig(**values)).eval()
    with torch.no_grad():  # sharper attention than a fresh model's near-uniform one, so which keys it sees shows
        for layer in model.ebranchformer.layers:
            layer.self_attn.qkv_proj.weight.mul_(8.0)
    return model


def stepped(model, features, chunk_size, left_chunks):
    """The logits of `features` fed to `stream_step` a chunk at a time."""
    cache = model.new_cache(features.shape[0], chunk_size, left_chunks)
    frames = chunk_size * model.config.subsampling_stride
    with torch.no_grad():
        return torch.cat(
            [model.stream_step(features[:, s : s + frames], cache) for s in range(0, features.shape[1], frames)], 1
        )


def chunked(model, features, chunk_size, left_chunks, attention_mask=None):
    model.config.streaming_chunk_size, model.config.streaming_left_chunks = chunk_size, left_chunks
    try:
        with torch.no_grad():
            return model(features, attention_mask=attention_mask).logits
    finally:
        model.config.streaming_chunk_size, model.config.streaming_left_chunks = None, -1


@pytest.mark.parametrize("left_chunks", [-1, 2])
@pytest.mark.parametrize("chunk_size", [4, 8, 16])
def test_the_cached_step_equals_the_chunk_masked_forward_over_a_minute(streaming_model, chunk_size, left_chunks):
    features = torch.randn(1, 6001, 64, generator=torch.Generator().manual_seed(chunk_size))  # 60 s
    full = chunked(streaming_model, features, chunk_size, left_chunks)
    assert full.shape[1] == 1501
    torch.testing.assert_close(stepped(streaming_model, features, chunk_size, left_chunks), full, atol=1e-5, rtol=0)


def test_chunks_limit_what_a_frame_sees(streaming_model):
    """Changing the audio after a chunk leaves that chunk's and earlier frames alone; the left context bounds
    how far back a frame looks; full context differs from chunks (the mask is real)."""
    features = torch.randn(1, 400, 64, generator=torch.Generator().manual_seed(0))
    later = features.clone()
    later[:, 160:] += 1.0  # from encoder step 40 = chunk 5 of 8 steps on
    first, changed = chunked(streaming_model, features, 8, -1), chunked(streaming_model, later, 8, -1)
    torch.testing.assert_close(first[:, :40], changed[:, :40], atol=1e-6, rtol=0)
    assert (first[:, 40:] - changed[:, 40:]).abs().max() > 1e-2
    assert (chunked(streaming_model, features, 8, -1) - chunked(streaming_model, features, None, -1)).abs().max() > 1e-3
    mask = chunk_attention_mask(12, 4, 1, "cpu")
    assert mask[11].tolist() == [False] * 4 + [True] * 8 and mask[4].tolist() == [True] * 8 + [False] * 4


def test_padding_does_not_change_chunked_logits(streaming_model):
    features = torch.randn(2, 320, 64, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 320, dtype=torch.long)
    mask[1, 200:] = 0
    batch = chunked(streaming_model, features, 8, 2, mask)
    alone = chunked(streaming_model, features[1:, :200], 8, 2)
    torch.testing.assert_close(batch[1:, :50], alone, atol=1e-5, rtol=0)


def test_streams_batched_at_different_points_equal_each_alone(streaming_model):
    """Two streams, one 3 chunks ahead, stepped together from stacked caches: each gets what it gets alone."""
    a, b = (torch.randn(1, 480, 64, generator=torch.Generator().manual_seed(s)) for s in (2, 3))
    alone_a, alone_b = stepped(streaming_model, a, 8, 2), stepped(streaming_model, b, 8, 2)
    cache_a, cache_b = streaming_model.new_cache(1, 8, 2), streaming_model.new_cache(1, 8, 2)
    with torch.no_grad():
        head = [streaming_model.stream_step(a[:, s : s + 32], cache_a) for s in range(0, 96, 32)]
        together = []
        for s in range(0, 384, 32):
            cache = EBranchformerStreamingCache.stack([cache_a, cache_b])
            logits = streaming_model.stream_step(torch.cat([a[:, 96 + s : 128 + s], b[:, s : s + 32]]), cache)
            cache_a, cache_b = cache.split()
            together.append(logits)
    torch.testing.assert_close(torch.cat(head + [t[:1] for t in together], 1), alone_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat([t[1:] for t in together], 1), alone_b[:, :96], atol=1e-5, rtol=0)


def test_dynamic_chunk_training_draws_full_context_and_chunks(streaming_model, monkeypatch):
    model = EBranchformerForCTC(
        EBranchformerConfig(**{**streaming_model.config.to_diff_dict(), "dynamic_chunk_training": True})
    )
    encoder = model.ebranchformer.train()
    draws = iter([90, 10, 37])
    monkeypatch.setattr(torch, "randint", lambda low, high, size: torch.tensor(next(draws)))
    assert [encoder.attention_chunk(100) for _ in range(3)] == [None, 11, 6]  # 10 % 32 + 1, 37 % 32 + 1
    encoder.eval()
    assert encoder.attention_chunk(100) is None  # evaluation: the config's chunk (none set: full context)


def test_a_model_with_look_ahead_convolutions_cannot_stream(tiny_config):
    with pytest.raises(ValueError, match="causal_convolutions=False"):
        EBranchformerForCTC(tiny_config).new_cache()
    assert not tiny_config.is_streaming
    assert EBranchformerConfig(causal_convolutions=True, dynamic_chunk_training=True).is_streaming


def test_a_stream_longer_than_the_position_table_is_refused(tiny_config_values):
    model = EBranchformerForCTC(EBranchformerConfig(**dict(tiny_config_values, causal_convolutions=True))).eval()
    cache = model.new_cache(1, 8)
    cache.offset += model.config.max_position_embeddings - 4
    with pytest.raises(ValueError, match="position_embedding_type='none'"):
        model.stream_step(torch.zeros(1, 32, 64), cache)
