"""Streaming: the chunk-masked model, its cached chunk-by-chunk step, and the recogniser built on it."""

import copy
import itertools
import json

import numpy as np
import pytest
import torch

from ebranchformer_ru.golos import EMBEDDED_CORPUS
from modeling_ebranchformer import EBranchformerConfig, EBranchformerForCTC
from modeling_ebranchformer.modeling import EBranchformerStreamingCache, chunk_attention_mask

CROWD = EMBEDDED_CORPUS / "test_opus" / "crowd"


def made_streaming(tiny_config_values, **fields):
    torch.manual_seed(0)
    values = dict(tiny_config_values, max_position_embeddings=5000, **fields)
    model = EBranchformerForCTC(EBranchformerConfig(**values)).eval()
    with torch.no_grad():  # sharper attention than a fresh model's near-uniform one, so which keys it sees shows
        for layer in model.ebranchformer.layers:
            layer.self_attn.qkv_proj.weight.mul_(8.0)
    return model


@pytest.fixture(scope="module")
def streaming_model(tiny_config_values):
    return made_streaming(tiny_config_values, causal_convolutions=True)


@pytest.fixture(scope="module", params=["causal_convolutions", "chunk_convolutions"])
def stepping_model(request, tiny_config_values, streaming_model):
    """Each way a model streams: causal convolutions, or chunk convolutions (which see ahead to their chunk's end)."""
    if request.param == "causal_convolutions":
        return streaming_model
    return made_streaming(tiny_config_values, chunk_convolutions=True)


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
def test_the_cached_step_equals_the_chunk_masked_forward_over_a_minute(stepping_model, chunk_size, left_chunks):
    features = torch.randn(1, 6001, 64, generator=torch.Generator().manual_seed(chunk_size))  # 60 s
    full = chunked(stepping_model, features, chunk_size, left_chunks)
    assert full.shape[1] == 1501
    torch.testing.assert_close(stepped(stepping_model, features, chunk_size, left_chunks), full, atol=1e-5, rtol=0)


def test_chunk_convolutions_at_full_context_are_the_course_convolutions(tiny_config_values):
    """The same weights without chunk_convolutions give the same logits at full context: one model serves both."""
    chunk = made_streaming(tiny_config_values, chunk_convolutions=True)
    with torch.no_grad():  # convolutions that matter more than a fresh model's, so that what they see shows
        for layer in chunk.ebranchformer.layers:
            layer.merge.depthwise_conv.weight.mul_(10.0)
            layer.cgmlp.csgu.conv.weight.mul_(10.0)
    plain = EBranchformerForCTC(EBranchformerConfig(**dict(chunk.config.to_dict(), chunk_convolutions=False))).eval()
    plain.load_state_dict(chunk.state_dict())
    features = torch.randn(2, 300, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(chunk(features).logits, plain(features).logits, atol=1e-6, rtol=0)
    assert (chunked(chunk, features, 8, -1) - chunked(plain, features, 8, -1)).abs().max() > 1e-4  # chunks differ
    with pytest.raises(ValueError, match="two ways to stream; set one"):
        EBranchformerConfig(causal_convolutions=True, chunk_convolutions=True)


def test_chunks_limit_what_a_frame_sees(stepping_model):
    """Changing the audio after a chunk leaves that chunk's and earlier frames alone; the left context bounds
    how far back a frame looks; full context differs from chunks (the mask is real)."""
    features = torch.randn(1, 400, 64, generator=torch.Generator().manual_seed(0))
    later = features.clone()
    later[:, 160:] += 1.0  # from encoder step 40 = chunk 5 of 8 steps on
    first, changed = chunked(stepping_model, features, 8, -1), chunked(stepping_model, later, 8, -1)
    torch.testing.assert_close(first[:, :40], changed[:, :40], atol=1e-6, rtol=0)
    assert (first[:, 40:] - changed[:, 40:]).abs().max() > 1e-2
    assert (chunked(stepping_model, features, 8, -1) - chunked(stepping_model, features, None, -1)).abs().max() > 1e-3
    mask = chunk_attention_mask(12, 4, 1, "cpu")
    assert mask[11].tolist() == [False] * 4 + [True] * 8 and mask[4].tolist() == [True] * 8 + [False] * 4


def test_padding_does_not_change_chunked_logits(stepping_model):
    features = torch.randn(2, 320, 64, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 320, dtype=torch.long)
    mask[1, 200:] = 0
    batch = chunked(stepping_model, features, 8, 2, mask)
    alone = chunked(stepping_model, features[1:, :200], 8, 2)
    torch.testing.assert_close(batch[1:, :50], alone, atol=1e-5, rtol=0)


def test_streams_batched_at_different_points_equal_each_alone(stepping_model):
    """Two streams, one 3 chunks ahead, stepped together from stacked caches: each gets what it gets alone."""
    a, b = (torch.randn(1, 480, 64, generator=torch.Generator().manual_seed(s)) for s in (2, 3))
    alone_a, alone_b = stepped(stepping_model, a, 8, 2), stepped(stepping_model, b, 8, 2)
    cache_a, cache_b = stepping_model.new_cache(1, 8, 2), stepping_model.new_cache(1, 8, 2)
    with torch.no_grad():
        head = [stepping_model.stream_step(a[:, s : s + 32], cache_a) for s in range(0, 96, 32)]
        together = []
        for s in range(0, 384, 32):
            cache = EBranchformerStreamingCache.stack([cache_a, cache_b])
            logits = stepping_model.stream_step(torch.cat([a[:, 96 + s : 128 + s], b[:, s : s + 32]]), cache)
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


@pytest.mark.slow
def test_dynamic_chunk_training_trains_a_model_that_streams(train_args, tmp_path):
    """train_ctc.py with the streaming fields: the losses fall, and the saved folder streams (the cached step of the
    trained weights equals their chunk-masked forward)."""
    from ebranchformer_ru import training

    args = train_args(tmp_path, "--max_steps", "12", "--learning_rate", "3e-3", "--warmup_steps", "0")
    at = args.index("--config_overrides") + 1
    args[at] += ",causal_convolutions=true,dynamic_chunk_training=true,streaming_chunk_size=4,streaming_left_chunks=2"
    trainer, metrics = training.run(args)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert metrics["nonfinite_losses"] == 0 and sum(losses[-3:]) < sum(losses[:3])
    model = EBranchformerForCTC.from_pretrained(tmp_path / "out").eval()
    assert model.config.is_streaming and model.config.streaming_chunk_size == 4
    features = torch.randn(1, 800, 64, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(stepped(model, features, 4, 2), chunked(model, features, 4, 2), atol=1e-5, rtol=0)


def test_a_model_with_look_ahead_convolutions_cannot_stream(tiny_config):
    with pytest.raises(ValueError, match="convolutions look ahead"):
        EBranchformerForCTC(tiny_config).new_cache()
    assert not tiny_config.is_streaming
    assert EBranchformerConfig(causal_convolutions=True, dynamic_chunk_training=True).is_streaming
    assert EBranchformerConfig(chunk_convolutions=True, streaming_chunk_size=8).is_streaming


def test_a_stream_longer_than_the_position_table_is_refused(tiny_config_values):
    model = EBranchformerForCTC(EBranchformerConfig(**dict(tiny_config_values, causal_convolutions=True))).eval()
    cache = model.new_cache(1, 8)
    cache.offset += model.config.max_position_embeddings - 4
    with pytest.raises(ValueError, match="position_embedding_type='none'"):
        model.stream_step(torch.zeros(1, 32, 64), cache)


# ---------------------------------------------------------------------------------------------- the recogniser


@pytest.fixture(scope="module")
def waveforms():
    from ebranchformer_ru.audio import read_audio

    return [read_audio(p) for p in sorted((CROWD / "files").glob("*.opus"))[:2]]


@pytest.fixture(scope="module")
def streaming_folder(tmp_path_factory, streaming_model):
    from modeling_ebranchformer import EBranchformerProcessor

    folder = tmp_path_factory.mktemp("streaming_model")
    config = streaming_model.config  # the folder streams in 320 ms chunks with 2 of left context by default
    config.streaming_chunk_size, config.streaming_left_chunks = 8, 2
    streaming_model.save_pretrained(folder)
    config.streaming_chunk_size, config.streaming_left_chunks = None, -1
    EBranchformerProcessor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def chunk_model(streaming_folder):
    from ebranchformer_ru.inference import TorchBackend
    from ebranchformer_ru.streaming import ChunkModel

    return ChunkModel(TorchBackend.from_folder(str(streaming_folder)))


def test_streaming_features_equal_the_whole_recordings(waveforms):
    from ebranchformer_ru.onnx_runtime import LogMelFeatures
    from ebranchformer_ru.streaming import StreamingFeatures

    features, rng = LogMelFeatures(), np.random.default_rng(0)
    for samples in [waveforms[0], waveforms[0][:150], waveforms[0][:201], waveforms[1][:16123]]:
        stream, pieces, at = StreamingFeatures(features), [], 0
        while at < len(samples):
            size = int(rng.integers(1, 900))
            pieces.append(stream.accept(samples[at : at + size]))
            at += size
        pieces.append(stream.finish())
        np.testing.assert_allclose(np.concatenate(pieces), features(samples), atol=1e-5, rtol=0)


def test_streams_fed_together_get_the_features_each_gets_alone(waveforms):
    """`accept_together` (a live round's streams framed in one FFT and one mel product) gives every stream the
    frames of its whole recording, whatever the other streams bring: pieces of any size, nothing, a stream too
    short to start, streams that have run out of audio."""
    from ebranchformer_ru.onnx_runtime import LogMelFeatures
    from ebranchformer_ru.streaming import StreamingFeatures, accept_together

    features, rng = LogMelFeatures(), np.random.default_rng(1)
    recordings = [waveforms[0], waveforms[0][:150], waveforms[0][:201], waveforms[1][:16123]]
    streams, pieces, at = [StreamingFeatures(features) for _ in recordings], [[] for _ in recordings], [0] * 4
    while any(a < len(r) for a, r in zip(at, recordings)):
        sizes = [int(rng.choice([0, 1, 150, 1600, 4000])) for _ in recordings]
        pairs = [(s, r[a : a + n]) for s, r, a, n in zip(streams, recordings, at, sizes)]
        for frames, piece in zip(accept_together(pairs), pieces):
            piece.append(frames)
        at = [a + n for a, n in zip(at, sizes)]
    for stream, piece, samples in zip(streams, pieces, recordings):
        piece.append(stream.finish())
        np.testing.assert_allclose(np.concatenate(piece), features(samples), atol=1e-5, rtol=0)


def fed(chunk_model, samples, piece=1600):
    """The log-probabilities a stream gets for `samples` arriving `piece` samples at a time."""
    from ebranchformer_ru.streaming import Endpointing, recognize

    stream, seen, step = chunk_model.stream(Endpointing()), [], chunk_model.step

    def spy(chunks, states):
        log_probs, states = step(chunks, states)
        seen.extend(log_probs)
        return log_probs, states

    chunk_model.step = spy
    try:
        for at in range(0, len(samples), piece):
            stream.accept(samples[at : at + piece])
            recognize(chunk_model, [stream])
        stream.end()
        recognize(chunk_model, [stream])
    finally:
        del chunk_model.step
    return np.concatenate(seen)


def test_a_stream_fed_as_it_arrives_equals_the_chunk_masked_forward(chunk_model, waveforms):
    """Audio in 0.1 s pieces, features as their windows fill, one model step per 320 ms: the log-probabilities of the
    whole recording's chunk-masked forward (the folder's config streams in chunks of 8 steps)."""
    samples = np.concatenate([waveforms[0], waveforms[1], waveforms[0]])
    whole = chunk_model.backend([samples])[0]
    np.testing.assert_allclose(fed(chunk_model, samples), whole, atol=1e-4, rtol=0)


def test_a_bfloat16_stream_keeps_its_cache_in_bfloat16_and_steps_as_autocast_does(streaming_folder, waveforms):
    """Under bf16 the cached keys, values and convolution inputs are computed in bfloat16: a bfloat16 cache holds the
    same values as a float32 one, and the step gives the same log-probabilities, bit for bit."""
    from ebranchformer_ru.inference import TorchBackend
    from ebranchformer_ru.streaming import ChunkModel

    half = ChunkModel(TorchBackend.from_folder(str(streaming_folder), dtype="bfloat16"))
    model = EBranchformerForCTC.from_pretrained(streaming_folder).eval()
    reference = ChunkModel(TorchBackend(model, half.backend.processor, "cpu", "bfloat16"))
    steps = reference.steps
    reference.steps.new_state = lambda: model.new_cache(1, steps.chunk_size, steps.left_chunks)  # float32
    assert reference.steps.new_state().layers[0].keys.dtype == torch.float32
    bins = half.backend.model.config.num_mel_bins
    _, (stepped,) = half.step([np.zeros((half.chunk_frames, bins), np.float32)], [half.steps.new_state()])
    for layer in stepped.layers:  # and stays so, whatever dtype autocast gives the chunk's parts
        assert {t.dtype for t in (layer.keys, layer.values, layer.gate, layer.merge)} == {torch.bfloat16}
    samples = np.concatenate([waveforms[0], waveforms[1]])
    np.testing.assert_array_equal(fed(half, samples), fed(reference, samples))


def test_bfloat16_streams_stepped_together_get_what_each_gets_alone(streaming_folder, waveforms):
    """bf16 caches stack and split as float32 ones do: two streams, one 1 s ahead, stepped in the same batches, each
    within bf16's rounding of what it gets alone (a batch's matrix products round differently from one stream's)."""
    from ebranchformer_ru.inference import TorchBackend
    from ebranchformer_ru.streaming import ChunkModel, Endpointing, recognize

    half = ChunkModel(TorchBackend.from_folder(str(streaming_folder), dtype="bfloat16"))
    a, b = waveforms[0], waveforms[1]
    alone = {"a": fed(half, a), "b": fed(half, b)}
    streams, seen, sizes, step = {"a": half.stream(Endpointing()), "b": half.stream(Endpointing())}, {}, [], half.step

    def spy(chunks, states):
        names = [next(n for n, stream in streams.items() if stream.state is state) for state in states]
        log_probs, states = step(chunks, states)
        for name, frames in zip(names, log_probs):
            seen.setdefault(name, []).append(frames)
        sizes.append(len(chunks))
        return log_probs, states

    half.step = spy
    try:
        streams["a"].accept(a[:16000])
        for at in range(0, max(len(a) - 16000, len(b)), 1600):
            streams["a"].accept(a[16000 + at : 17600 + at])
            streams["b"].accept(b[at : at + 1600])
            recognize(half, list(streams.values()))
        for stream in streams.values():
            stream.end()
        recognize(half, list(streams.values()))
    finally:
        del half.step
    assert max(sizes) == 2  # they did step together
    for name in ("a", "b"):
        np.testing.assert_allclose(np.concatenate(seen[name]), alone[name], atol=0.05, rtol=0)


def rows(labels, vocabulary_size=34):
    """Log-probabilities whose argmax is each label."""
    log_probs = np.full((len(labels), vocabulary_size), -10.0, np.float32)
    log_probs[np.arange(len(labels)), labels] = -0.01
    return log_probs


def test_endpoints_fall_where_the_rules_say(chunk_model):
    from ebranchformer_ru.streaming import Endpointing, StreamDecoder

    vocabulary = chunk_model.backend.vocabulary
    blank, a, b = vocabulary.blank_id, *vocabulary.ids("аб")
    rules = Endpointing(silence_after_speech_s=0.4, silence_without_speech_s=1.0, max_segment_s=2.0)
    decoder = StreamDecoder(vocabulary, 0.04, rules)
    # 5 frames of speech, 9 blank (0.36 s: no endpoint), then 1 more: 0.4 s after speech ends the segment.
    assert decoder.push(rows([a] * 5 + [blank] * 9)) == []
    assert decoder.partial() == {"start": 0.0, "text": "а"}
    (final,) = decoder.push(rows([blank]))
    assert (final["start"], final["end"], final["text"]) == (0.0, 0.2, "а")
    assert final["words"][0]["word"] == "а" and 0 < final["words"][0]["confidence"] <= 1
    # 25 blank frames (1.0 s) without speech: the segment restarts, nothing final; speech then starts at 1.6 s.
    assert decoder.push(rows([blank] * 25)) == [] and decoder.partial()["start"] == 1.6
    # 50 frames of speech reach max_segment_s (2.0 s): cut there, with the words on the stream's time line.
    (final,) = decoder.push(rows([b, blank] * 25))
    assert (final["start"], final["text"]) == (1.6, "б" * 25)
    assert decoder.partial() == {"start": 3.6, "text": ""}
    assert decoder.push(rows([a, a, blank])) == [] and decoder.finish()[0]["start"] == 3.6


def test_a_look_ahead_ends_a_segment_before_its_chunk_is_complete(chunk_model):
    """Frames of audio not yet in a complete chunk that finish the silence after speech end the segment at once, at
    the frame the rules say; the chunk's own frames then take their place: where they are silent too, the stream
    goes on as if the segment had ended with them, and where they hold speech the next segment starts at the first
    that does, with it (before the endpoint of the segment already ended). The longest segment's rule is read the
    same way."""
    from ebranchformer_ru.streaming import Endpointing, StreamDecoder

    vocabulary = chunk_model.backend.vocabulary
    blank, a = vocabulary.blank_id, vocabulary.ids("а")[0]
    rules = Endpointing(silence_after_speech_s=0.4, silence_without_speech_s=1.0, max_segment_s=20.0)
    for chunk, start in (([blank] * 7 + [a], 0.6), ([blank, blank, a] + [blank] * 5, 0.4)):
        decoder = StreamDecoder(vocabulary, 0.04, rules)
        assert decoder.push(rows([a] * 5 + [blank] * 3)) == []  # a chunk of 8 frames: 0.12 s of silence after speech
        assert decoder.frames_to_end(6) is None and decoder.frames_to_end(8) == 7  # 10 frames are 0.4 s
        (final,) = decoder.look_ahead(rows([blank] * 8))
        assert (final["start"], final["end"], final["endpoint"], final["text"]) == (0.0, 0.2, 0.6, "а")
        assert decoder.frames == 15 and decoder.frames_to_end(8) is None  # a new segment, without speech yet
        assert decoder.push(rows(chunk)) == [] and decoder.frames == 16
        assert decoder.partial() == {"start": start, "text": "а"}
    # A look ahead that finds speech takes nothing, and none follows until the chunk's own frames have come.
    decoder = StreamDecoder(vocabulary, 0.04, rules)
    decoder.push(rows([a] * 5 + [blank] * 3))
    assert decoder.look_ahead(rows([blank] * 5 + [a, blank, blank])) == [] and decoder.frames == 8
    assert decoder.frames_to_end(8) is None
    assert decoder.push(rows([blank] * 4)) == []  # 0.28 s of silence
    assert decoder.frames_to_end(3) == 3 and decoder.look_ahead(rows([blank] * 3))[0]["endpoint"] == 0.6
    # A segment that reaches max_segment_s inside the frames looked at ends there.
    decoder = StreamDecoder(vocabulary, 0.04, Endpointing(silence_after_speech_s=0.4, max_segment_s=0.44))
    decoder.push(rows([a] * 8))
    assert decoder.frames_to_end(8) == 3
    (final,) = decoder.look_ahead(rows([blank] * 8))
    assert (final["end"], final["endpoint"], decoder.frames) == (0.32, 0.44, 11)
    assert decoder.push(rows([blank] * 8)) == [] and decoder.frames == 16 and decoder.partial()["start"] == 0.44


def test_streams_look_ahead_in_few_batches():
    """Streams whose chunks under way need between `needed` and `available` steps are looked at in batches of one
    length each, a length every stream of its batch can take, and no more batches than the disjoint needs ask."""
    from ebranchformer_ru.streaming import _common_lengths

    rng = np.random.default_rng(0)
    for _ in range(200):
        needed = rng.integers(1, 16, size=int(rng.integers(1, 7)))
        wanted = [(i, int(n), int(n + rng.integers(0, 16 - n + 1))) for i, n in enumerate(needed)]
        batches = dict(_common_lengths(wanted))
        assert sorted(i for streams in batches.values() for i in streams) == list(range(len(wanted)))
        for steps, streams in batches.items():
            assert all(wanted[i][1] <= steps <= wanted[i][2] for i in streams)
        fewer = itertools.combinations(range(1, 17), len(batches) - 1)  # no fewer lengths serve every stream
        assert not any(all(any(low <= n <= high for n in lengths) for _, low, high in wanted) for lengths in fewer)
    assert dict(_common_lengths([("a", 3, 16), ("b", 10, 12), ("c", 5, 16)])) == {12: ["b", "a", "c"]}


def fed_live(model, recordings):
    """Recordings fed side by side, 0.1 s a round, as live streams: each one's final segments, and each segment's
    delay: the audio received when it ended, less its endpoint."""
    from ebranchformer_ru.streaming import Endpointing, accept_audio, recognize

    streams = [model.stream(Endpointing()) for _ in recordings]
    finals, delays = [[] for _ in recordings], []
    for at in range(0, max(len(r) for r in recordings), 1600):
        accept_audio([(stream, r[at : at + 1600]) for stream, r in zip(streams, recordings)])
        for stream, found in recognize(model, streams):
            finals[streams.index(stream)] += found
            delays += [(at + 1600) / 16000 - final["endpoint"] for final in found]
    for stream in streams:
        stream.end()
    for stream, found in recognize(model, streams):
        finals[streams.index(stream)] += found
    assert all(stream.failure is None for stream in streams)
    return finals, delays


@pytest.fixture
def spoken(waveforms):
    """Three recordings of three utterances with 3 s of silence after each, the second and third 0.2 and 0.4 s later
    (their chunks under way at a round differ)."""
    silence = np.zeros(48000, np.float32)
    speech = np.concatenate([waveforms[0], silence, waveforms[1], silence, waveforms[0], silence])
    return [np.concatenate([np.zeros(3200 * i, np.float32), speech]) for i in range(3)]


def test_live_streams_get_each_segment_as_soon_as_the_audio_shows_its_endpoint(streaming_folder, spoken, voice_steps):
    """Audio in 0.1 s pieces to a model of 640 ms chunks, with the default 0.8 s of silence after speech: each segment
    ends in the round whose audio first covers its endpoint (the frames' windows and their 0.1 s piece), not when the
    chunk holding the endpoint is complete (up to 640 ms later); the segments are those of the whole recordings."""
    from ebranchformer_ru.inference import TorchBackend
    from ebranchformer_ru.streaming import ChunkModel, Endpointing, transcribe_files

    model = ChunkModel(TorchBackend.from_folder(str(streaming_folder)), chunk_ms=640)
    finals, delays = fed_live(model, spoken)
    assert len(delays) == 9 and all(0 <= delay <= 0.15 for delay in delays), delays
    for final, whole in zip(finals, transcribe_files(model, spoken, Endpointing())):
        assert [{k: f[k] for k in ("start", "end", "text")} for f in final] == whole["segments"]


def test_a_look_ahead_that_fails_only_leaves_the_segment_to_its_chunk(
    streaming_folder, spoken, voice_steps, monkeypatch, caplog
):
    """The model failing on a look ahead fails no stream: it is logged, the segment ends with its chunk, and the
    chunk is not looked at again."""
    from ebranchformer_ru.inference import TorchBackend
    from ebranchformer_ru.streaming import ChunkModel, Endpointing, transcribe_files

    calls = []

    def fail(self, chunks, states):
        calls.append(len(chunks))
        raise RuntimeError("out of memory")

    model = ChunkModel(TorchBackend.from_folder(str(streaming_folder)), chunk_ms=640)
    monkeypatch.setattr(ChunkModel, "look_ahead", fail)
    finals, delays = fed_live(model, spoken[:1])
    assert [{k: f[k] for k in ("start", "end", "text")} for f in finals[0]] == transcribe_files(
        model, spoken[:1], Endpointing()
    )[0]["segments"]
    assert max(delays) > 0.3 and "a look ahead of 1 live streams failed: RuntimeError: out of memory" in caplog.text
    assert len(calls) == len(finals[0]) == 3  # once in each endpoint's chunk, not again in every round after


class Posted:
    """An event loop to which the server's model thread posts: each event is sent at once, in order."""

    def call_soon_threadsafe(self, send, event):
        send(event)


def test_a_live_round_sends_each_segment_as_soon_as_a_look_ahead_ends_it(streaming_folder, spoken, voice_steps):
    """The server's rounds (`LiveStreams.round`), 0.1 s of each of three streams a round: a segment comes in the round
    whose audio covers its endpoint, after the round's partials, and the partial after it covers the audio to its
    endpoint; the segments are those of the whole recordings. A decoder that fails in a look ahead fails its
    stream alone, with one error."""
    from ebranchformer_ru.inference import TorchBackend
    from ebranchformer_ru.serving import LiveEntry, LiveStreams
    from ebranchformer_ru.streaming import ChunkModel, Endpointing, StreamDecoder, transcribe_files

    model = ChunkModel(TorchBackend.from_folder(str(streaming_folder)), chunk_ms=640)
    live, loop = LiveStreams(model, Endpointing(), batcher=None), Posted()
    events = [[] for _ in spoken]
    entries = [LiveEntry(model.stream(Endpointing()), loop, events[i].append) for i in range(len(spoken))]
    live.entries.update(entries)
    for at in range(0, max(len(r) for r in spoken), 1600):
        for entry, recording, received in zip(entries, spoken, events):
            entry.inbox.append(recording[at : at + 1600])
            received.append({"type": "round", "audio": (at + 1600) / 16000})
        live.round()
    firsts = 0  # segments after a partial of the same round: a chunk's, sent before the look ahead
    for stream_events, recording in zip(events, spoken):
        segments = [e for e in stream_events if e["type"] == "segment"]
        whole = transcribe_files(model, [recording], Endpointing())[0]["segments"]
        assert len(segments) == 3 and [{k: s[k] for k in ("start", "end", "text")} for s in segments] == whole
        for segment in segments:
            at = stream_events.index(segment)
            after, audio = stream_events[at + 1], max(e["audio"] for e in stream_events[:at] if e["type"] == "round")
            assert after["type"] == "partial" and after["duration"] == segment["endpoint"]
            assert audio - segment["endpoint"] <= 0.15
            firsts += stream_events[at - 1]["type"] == "partial"
    assert firsts > 0
    # a decoder failing in a look ahead: its stream gets one error, the others go on
    broken = model.stream(Endpointing())

    def fail(self, frames):
        raise RuntimeError("the language model failed")

    broken.decoder.look_ahead = fail.__get__(broken.decoder, StreamDecoder)
    received = []
    live.entries = {LiveEntry(broken, loop, received.append)}
    for at in range(0, len(spoken[0]), 1600):
        next(iter(live.entries)).inbox.append(spoken[0][at : at + 1600])
        live.round()
    errors = [e for e in received if e["type"] == "error"]
    assert len(errors) == 1 and "the language model failed" in errors[0]["error"]["message"] and broken.finished


def test_transcribe_streaming_writes_segments_on_the_time_line(streaming_folder, waveforms, tmp_path, voice_steps):
    """Two recordings with 3 s of silence between their speech: `transcribe.py --streaming` cuts them at the
    endpoints and gives words on the recording's time line, the same as a stream fed as the audio arrives."""
    import soundfile as sf

    from ebranchformer_ru.commands import transcribe as command
    from ebranchformer_ru.streaming import Endpointing, recognize

    silence = np.zeros(48000, np.float32)
    recording = np.concatenate([waveforms[0], silence, waveforms[1]])
    sf.write(tmp_path / "a.wav", recording, 16000)
    sf.write(tmp_path / "b.wav", waveforms[1], 16000)
    output = tmp_path / "out.jsonl"
    args = [str(streaming_folder), str(tmp_path / "a.wav"), str(tmp_path / "b.wav"), "--streaming"]
    assert command.main([*args, "--timestamps", "--output", str(output), "--no_progress"]) == 0
    first = json.loads(output.read_text().splitlines()[0])
    assert len(first["segments"]) == 2 and first["segments"][1]["start"] > len(waveforms[0]) / 16000
    assert first["text"] == " ".join(s["text"] for s in first["segments"] if s["text"])
    assert all(0 < w["confidence"] <= 1 for w in first["words"])
    assert [w["start"] for w in first["words"]] == sorted(w["start"] for w in first["words"])
    from ebranchformer_ru.inference import TorchBackend
    from ebranchformer_ru.streaming import ChunkModel

    model = ChunkModel(TorchBackend.from_folder(str(streaming_folder)))
    stream, finals = model.stream(Endpointing()), []
    for at in range(0, len(recording), 1600):
        stream.accept(recording[at : at + 1600])
        finals += [f for _, found in recognize(model, [stream]) for f in found]
    stream.end()
    finals += [f for _, found in recognize(model, [stream]) for f in found]
    assert [(f["start"], f["end"], f["text"]) for f in finals] == [
        (s["start"], s["end"], s["text"]) for s in first["segments"]
    ]


def test_streaming_options_are_checked(streaming_folder, tiny_model, waveforms, tmp_path, capsys):
    import soundfile as sf

    from ebranchformer_ru.commands import transcribe as command

    sf.write(tmp_path / "a.wav", waveforms[0], 16000)
    audio = str(tmp_path / "a.wav")
    with pytest.raises(SystemExit) as usage:
        command.main([str(streaming_folder), audio, "--streaming", "--vad"])
    assert usage.value.code == 2 and "leave out --vad" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        command.main([str(streaming_folder), audio, "--streaming", "--max_segment_s", "0"])
    assert usage.value.code == 2
    assert command.main([str(tiny_model), audio, "--streaming", "--no_progress"]) == 1
    assert "cannot stream" in capsys.readouterr().err
    assert command.main([str(streaming_folder), audio, "--streaming", "--chunk_ms", "100", "--no_progress"]) == 1
    assert "multiple of the model's 40 ms frame" in capsys.readouterr().err


def test_the_streaming_preset_is_the_main_jobs_model_made_streaming():
    """`--preset streaming`: the mini preset's model and schedule, with chunk convolutions, dynamic chunks and a
    bounded left context; overrides set fields whose default is None (Transformers' update_from_string cannot)."""
    from ebranchformer_ru.training import load_preset, parse_overrides

    preset, mini = load_preset("streaming"), load_preset("mini")
    assert {k: v for k, v in preset.items() if k not in ("output_dir", "config_overrides")} == {
        k: v for k, v in mini.items() if k != "output_dir"
    }
    config = EBranchformerConfig(**parse_overrides(preset["config_overrides"]))
    assert config.is_streaming and config.streaming_chunk_size == 16 and config.streaming_left_chunks == 8
    assert config.convolution_context == "chunk"
    assert parse_overrides("position_embedding_type=none") == {"position_embedding_type": "none"}  # a string field
    streaming, course = EBranchformerForCTC(config), EBranchformerForCTC(EBranchformerConfig())
    assert streaming.num_parameters() == course.num_parameters()  # the same weights, used chunk by chunk
    assert parse_overrides("streaming_chunk_size=none,dropout=0.05") == {"streaming_chunk_size": None, "dropout": 0.05}
    with pytest.raises(ValueError, match="'chunk=4' is not field=value of a field"):
        parse_overrides("chunk=4")


# ---------------------------------------------------------------------------------------------- the live endpoint


@pytest.fixture
def voice_steps(monkeypatch):
    """`ChunkModel.step` made to spell "а" on every 40 ms frame with speech energy and blank elsewhere, so that where
    the endpoints fall is known from the audio (a random model never says blank). The model's step itself is
    proven equal to the full forward above."""
    from ebranchformer_ru.streaming import ChunkModel

    def step(self, chunks, states):
        log_probs = []
        for chunk in chunks:
            steps = -(-len(chunk) // 4)
            loud = np.pad(chunk.mean(-1), (0, steps * 4 - len(chunk)), constant_values=-20).reshape(steps, 4).max(-1)
            labels = np.where(loud > -9.0, self.backend.vocabulary.ids("а")[0], self.backend.vocabulary.blank_id)
            log_probs.append(rows(labels))
        return log_probs, states

    monkeypatch.setattr(ChunkModel, "step", step)


def test_the_live_endpoint_streams_segments_equal_to_transcribe_streaming(
    streaming_folder, waveforms, tmp_path, voice_steps
):
    """serve.py --streaming: partials as the audio arrives, a `segment` at every endpoint, and a final made of them;
    the segments are those `transcribe.py --streaming` writes for the same audio."""
    pytest.importorskip("starlette")
    pytest.importorskip("websockets")
    import requests
    import soundfile as sf
    from served import Running, stream

    from ebranchformer_ru.commands import transcribe as command

    recording = np.concatenate([waveforms[0], np.zeros(48000, np.float32), waveforms[1]])
    pcm = np.clip(np.round(recording * 32768), -32768, 32767).astype(np.int16)
    sf.write(tmp_path / "a.wav", pcm, 16000, subtype="PCM_16")
    output = tmp_path / "a.jsonl"
    args = [str(streaming_folder), str(tmp_path / "a.wav"), "--streaming", "--timestamps", "--no_progress"]
    assert command.main([*args, "--output", str(output)]) == 0
    record = json.loads(output.read_text())
    with Running(streaming_folder, "--streaming") as running:
        health = requests.get(running.url + "/health", timeout=10).json()
        messages = stream(running.url, pcm.astype(np.float32) / 32768, pause_s=0.01)
    partials = [m for m in messages if m["type"] == "partial"]
    segments = [m for m in messages if m["type"] == "segment"]
    assert len(partials) >= 5 and [m["duration"] for m in partials] == sorted(m["duration"] for m in partials)
    assert [{k: s[k] for k in ("start", "end", "text")} for s in segments] == record["segments"]
    first = len(waveforms[0]) / 16000  # the first utterance's end: 3 s of silence follow
    assert len(segments) == 2 and segments[0]["end"] <= first + 0.1 and segments[1]["end"] > first + 3
    assert messages[-1]["type"] == "final" and messages[-1]["text"] == record["text"]
    assert messages[-1]["words"] == record["words"] and messages[-1]["duration"] == record["duration"]
    assert health["streaming"] == {"chunk_ms": 320}


def test_serve_streaming_refuses_a_model_that_cannot_stream_or_an_unbounded_left_context(tiny_model, streaming_folder):
    pytest.importorskip("starlette")
    from served import Running

    from ebranchformer_ru.inference import InferenceError

    with pytest.raises(InferenceError, match="--streaming: .*cannot stream"):
        Running(tiny_model, "--streaming")
    with pytest.raises(InferenceError, match="needs a bounded left context"):  # a step's cost would grow forever
        Running(streaming_folder, "--streaming", "--left_chunks", "-1")


# ---------------------------------------------------------------------------------------------- ONNX


def exported(place, streaming_model, chunk_size, left_chunks):
    """The streaming model saved to `place`/model to stream in chunks of `chunk_size` with `left_chunks` of left
    context, and its export with the chunk step in `place`/onnx."""
    from ebranchformer_ru.onnx_export import export
    from modeling_ebranchformer import EBranchformerProcessor

    folder = place / "model"
    streaming_model.config.streaming_chunk_size, streaming_model.config.streaming_left_chunks = chunk_size, left_chunks
    try:
        streaming_model.save_pretrained(folder)
    finally:
        streaming_model.config.streaming_chunk_size, streaming_model.config.streaming_left_chunks = None, -1
    EBranchformerProcessor().save_pretrained(folder)
    info = export(folder, place / "onnx", wer_sets={}, log=lambda *_: None)
    return folder, place / "onnx", info


@pytest.fixture(scope="module")
def streaming_export(tmp_path_factory, streaming_model):
    """The streaming model in chunks of 8 steps with 2 of left context, and its export."""
    return exported(tmp_path_factory.mktemp("bounded"), streaming_model, 8, 2)


def test_the_onnx_chunk_step_equals_pytorchs_over_a_minute(streaming_export, waveforms):
    """The exported step with its caches as inputs and outputs, under ONNX Runtime: the log-probabilities of PyTorch's
    step for streams stepped side by side (the export's own check), and over 60 s of one stream."""
    from ebranchformer_ru.inference import OnnxBackend, TorchBackend
    from ebranchformer_ru.onnx_export import Recorded
    from ebranchformer_ru.streaming import ChunkModel, Endpointing, transcribe_files

    folder, onnx, info = streaming_export
    assert info["streaming"]["chunk_size"] == 8 and info["check"]["max_abs_diff_chunk_step"] <= 1e-5
    minute = np.tile(np.concatenate(waveforms), 10)[: 60 * 16000]
    outputs = []
    for model in (ChunkModel(TorchBackend.from_folder(str(folder))), ChunkModel(OnnxBackend(onnx))):
        model.steps = Recorded(model.steps)
        transcribe_files(model, [minute, waveforms[1]], Endpointing())
        outputs.append(np.concatenate(model.steps.log_probs))
    assert len(outputs[0]) == 1501 + len(waveforms[1]) // 640 + 1
    np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-5, rtol=0)


def test_a_look_ahead_leaves_the_streams_state_as_it_was(streaming_export, waveforms):
    """Stepping a chunk not yet complete for a look ahead, with PyTorch (float32 and bf16) and with ONNX Runtime, alone
    or beside another stream, does not move a stream's state on, as a server's round leaves it (split from a batch):
    the complete chunk then gets what it gets without the look ahead, bit for bit."""
    from ebranchformer_ru.inference import OnnxBackend, TorchBackend
    from ebranchformer_ru.streaming import ChunkModel

    folder, onnx, _ = streaming_export
    for backend in (TorchBackend.from_folder(str(folder)), TorchBackend.from_folder(str(folder), dtype="bfloat16")):
        check_look_ahead(ChunkModel(backend), waveforms)
    check_look_ahead(ChunkModel(OnnxBackend(onnx)), waveforms)


def check_look_ahead(model, waveforms):
    features = [model.features(samples) for samples in waveforms]
    size = model.chunk_frames
    _, (state, other) = model.step([f[:size] for f in features], [model.steps.new_state()] * 2)
    expected, _ = model.step([features[0][size : 2 * size]], [copy.deepcopy(state)])
    model.look_ahead([features[0][size : size + 12]], [state])
    model.look_ahead([features[0][size : size + 8], features[1][size : size + 8]], [state, other])
    np.testing.assert_array_equal(model.step([features[0][size : 2 * size]], [state])[0][0], expected[0])


@pytest.mark.slow
@pytest.mark.parametrize(
    "chunk_size, left_chunks, convolutions",
    [(c, left, "causal") for c in (4, 8, 16) for left in (1, 3)] + [(8, 2, "chunk")],
)
def test_the_onnx_chunk_step_equals_the_chunk_masked_forward(
    streaming_model, tiny_config_values, tmp_path, chunk_size, left_chunks, convolutions
):
    """For three chunk sizes and two left contexts (and a model with chunk convolutions): ONNX Runtime stepping 60 s
    of features through the exported step gives PyTorch's chunk-masked forward of the whole."""
    import onnxruntime as ort

    from ebranchformer_ru.onnx_export import STATE

    if convolutions == "chunk":
        streaming_model = made_streaming(tiny_config_values, chunk_convolutions=True)
    _, onnx, info = exported(tmp_path, streaming_model, chunk_size, left_chunks)
    session = ort.InferenceSession(str(onnx / "model.step.onnx"))
    state = {name: np.zeros(shape, dtype) for name, (shape, dtype) in info["streaming"]["state"].items()}
    features = torch.randn(1, 6001, 64, generator=torch.Generator().manual_seed(chunk_size + left_chunks))
    frames, outputs = chunk_size * 4, []
    for start in range(0, features.shape[1], frames):
        log_probs, *rest = session.run(None, {"input_features": features[:, start : start + frames].numpy(), **state})
        state = dict(zip(STATE, rest))
        outputs.append(log_probs)
    whole = torch.log_softmax(chunked(streaming_model, features, chunk_size, left_chunks), -1).numpy()
    np.testing.assert_allclose(np.concatenate(outputs, 1), whole, atol=1e-5, rtol=0)


def test_an_export_streams_without_torch(streaming_export, waveforms, tmp_path):
    """transcribe.py --streaming on the export folder where torch cannot be imported: what PyTorch's gives."""
    import os
    import subprocess
    import sys

    import soundfile as sf
    from project import ROOT

    from ebranchformer_ru.commands import transcribe as command

    folder, onnx, _ = streaming_export
    sf.write(tmp_path / "a.wav", np.concatenate([waveforms[0], np.zeros(48000, np.float32), waveforms[1]]), 16000)
    blocker = tmp_path / "blocker"
    for name in ("torch", "transformers"):
        (blocker / name).mkdir(parents=True)
        (blocker / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked in this test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT)])}
    code = (
        "import sys; from ebranchformer_ru.commands.transcribe import main; status = main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(status)"
    )
    args = [str(tmp_path / "a.wav"), "--streaming", "--timestamps", "--no_progress", "--output"]
    result = subprocess.run(
        [sys.executable, "-c", code, str(onnx), *args, str(tmp_path / "onnx.jsonl")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert command.main([str(folder), *args, str(tmp_path / "torch.jsonl")]) == 0
    onnx_record, torch_record = (json.loads((tmp_path / f"{n}.jsonl").read_text()) for n in ("onnx", "torch"))
    assert [s["text"] for s in onnx_record["segments"]] == [s["text"] for s in torch_record["segments"]]
    for a, b in zip(onnx_record["words"], torch_record["words"]):
        assert (a["word"], a["start"], a["end"]) == (b["word"], b["start"], b["end"])


def test_the_lm_search_runs_incrementally_and_gives_what_the_whole_segment_gets(lm_folder):
    """With a language model the stream's beam search takes each frame once, chunk after chunk: every partial is the
    best text of the frames so far, and the final segment (text, words, times, confidences) is what decoding all its
    frames at once gives."""
    from lm_inputs import crafted_logits

    from ebranchformer_ru.inference import decode_frames, load_decoder
    from ebranchformer_ru.onnx_runtime import CTCVocabulary
    from ebranchformer_ru.streaming import Endpointing, StreamDecoder
    from modeling_ebranchformer.beam_search import log_softmax

    _, folder, _ = lm_folder
    lm, vocabulary = load_decoder(folder, "lm"), CTCVocabulary.from_folder(folder)
    rng = np.random.default_rng(7)
    frames = log_softmax(crafted_logits("салют выключи свет в комнате", rng, noise=2.0, confusion=0.3))
    rules = Endpointing(silence_after_speech_s=100, silence_without_speech_s=100, max_segment_s=100)
    decoder, at = StreamDecoder(vocabulary, 0.04, rules, lm), 0
    while at < len(frames):
        size = int(rng.integers(1, 9))
        assert decoder.push(frames[at : at + size]) == []
        at = min(at + size, len(frames))
        assert decoder.search.frames == at  # the search has taken this chunk, and each frame once
        assert decoder.partial()["text"] == lm(frames[:at]).text
    (final,) = decoder.finish()
    whole = decode_frames(frames, np.arange(len(frames)) * 0.04, vocabulary, 0.04, lm)
    assert final["text"] == whole["text"] and final["words"] == whole["words"] and len(whole["words"]) >= 4


def test_an_export_serves_live_streams(streaming_export, waveforms, tmp_path):
    """serve.py --streaming on the export folder (ONNX Runtime's chunk step): the final a live stream gets is what
    transcribe.py --streaming gives with the PyTorch folder."""
    pytest.importorskip("starlette")
    pytest.importorskip("websockets")
    import soundfile as sf
    from served import Running, stream

    from ebranchformer_ru.commands import transcribe as command

    folder, onnx, _ = streaming_export
    pcm = np.clip(np.round(waveforms[0] * 32768), -32768, 32767).astype(np.int16)
    sf.write(tmp_path / "a.wav", pcm, 16000, subtype="PCM_16")
    args = [str(folder), str(tmp_path / "a.wav"), "--streaming", "--timestamps", "--no_progress", "--output"]
    assert command.main([*args, str(tmp_path / "a.jsonl")]) == 0
    record = json.loads((tmp_path / "a.jsonl").read_text())
    with Running(onnx, "--streaming") as running:
        final = stream(running.url, pcm.astype(np.float32) / 32768, pause_s=0.01)[-1]
    assert final["type"] == "final" and final["text"] == record["text"] and final["segments"] == record["segments"]


def test_a_stream_the_model_fails_on_fails_alone(chunk_model, waveforms, monkeypatch):
    """A step that fails for one stream of a batch: that stream ends with the error, the others go on (their chunk
    stepped again alone), as the server's live streams and transcribe.py's recordings need."""
    from ebranchformer_ru.streaming import ChunkModel, Endpointing, recognize

    step = ChunkModel.step

    def fragile(self, chunks, states):
        if any(np.all(chunk == chunk[0, 0]) for chunk in chunks):  # the silent stream's chunks are constant
            raise RuntimeError("this chunk breaks the model")
        return step(self, chunks, states)

    monkeypatch.setattr(ChunkModel, "step", fragile)
    good, bad = chunk_model.stream(Endpointing()), chunk_model.stream(Endpointing())
    good.accept(waveforms[0])
    bad.accept(np.zeros(16000, np.float32))
    recognize(chunk_model, [good, bad])
    assert isinstance(bad.failure, RuntimeError) and bad.done and good.failure is None
    good.end()
    recognize(chunk_model, [good, bad])
    assert good.finished and good.decoder.frames == -(-(1 + len(waveforms[0]) // 160) // 4)  # all of it stepped


def test_a_stream_outlasts_the_position_table_by_starting_afresh_after_endpoints(tiny_config_values, tmp_path):
    """A model with a table of 300 positions (12 s) streams 40 s: after an endpoint from which the next segment could
    outrun the table, the stream's state starts afresh; without that, the step would refuse position 300."""
    from ebranchformer_ru.inference import TorchBackend
    from ebranchformer_ru.streaming import ChunkModel, Endpointing, transcribe_files
    from modeling_ebranchformer import EBranchformerProcessor

    torch.manual_seed(0)
    values = dict(tiny_config_values, causal_convolutions=True, streaming_chunk_size=8, max_position_embeddings=300)
    EBranchformerForCTC(EBranchformerConfig(**values)).save_pretrained(tmp_path)
    EBranchformerProcessor().save_pretrained(tmp_path)
    model = ChunkModel(TorchBackend.from_folder(str(tmp_path)))
    samples = np.random.default_rng(0).normal(0, 0.1, 40 * 16000).astype(np.float32)
    (record,) = transcribe_files(model, [samples], Endpointing(max_segment_s=2.0))
    assert record["segments"][-1]["end"] > 38 and len(record["segments"]) >= 15  # a random model: cut at 2 s
