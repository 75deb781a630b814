"""ebranchformer_ru.inference, the one path from audio to text: batching (`Transcriber.batches`,
`length_batches`), chunking, `stream`'s results and failures one recording at a time, and decoding (greedy by
`CTCVocabulary`, beam search by `load_decoder`'s decoder)."""

import itertools
import re
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from project import CORPUS
from small_models import give_words

from ebranchformer_ru import onnx_runtime
from ebranchformer_ru.audio import AudioFile, read_audio
from ebranchformer_ru.commands import build_lm
from ebranchformer_ru.inference import InferenceError, LMDecoder, Transcriber, length_batches, load_decoder
from modeling_ebranchformer.beam_search import DEFAULT_BEAM_WIDTH

SECOND = 16000


class FrameIndexBackend:
    """Each output frame's argmax is the index (mod vocab) of the audio sample it starts at, divided by 640:
    after chunking and dropping the overlaps, a file's ids must count 0, 1, 2, ... without gaps or repeats.
    It refuses (raises) a batch holding a waveform whose length is in `refuse`, as a model refuses an input."""

    sampling_rate, samples_per_frame, vocab = SECOND, 640, 33

    def __init__(self, refuse=()):
        self.vocabulary = onnx_runtime.CTCVocabulary({str(i): i for i in range(self.vocab + 1)} | {"<pad>": 99})
        self.batches, self.refuse = [], set(refuse)

    def __call__(self, waveforms):
        self.batches.append([len(w) for w in waveforms])
        if refused := [len(w) for w in waveforms if len(w) in self.refuse]:
            raise ValueError(f"the model cannot take {refused[0]} samples")
        out = []
        for w in waveforms:
            frames = -(-(1 + len(w) // 160) // 4)
            starts = np.rint(w[np.minimum(np.arange(frames) * 640, len(w) - 1)]).astype(int) // 640
            log_probs = np.full((frames, self.vocab), -10.0, dtype=np.float32)
            log_probs[np.arange(frames), starts % self.vocab] = 0
            out.append(log_probs)
        return out


def counting(seconds):
    """A recording whose sample values are their own index (what `FrameIndexBackend` reads)."""
    return np.arange(int(seconds * SECOND), dtype=np.float64)


# ---------------------------------------------------------------------------------------------- batching


def test_batches_are_runs_of_batch_size_longest_first_and_ties_keep_their_order():
    transcriber = Transcriber(FrameIndexBackend(), batch_size=2)
    assert transcriber.batches([3, 5, 5, 1, 3]) == [[1, 2], [0, 4], [3]]
    assert transcriber.batches([]) == []
    lengths = np.random.default_rng(0).integers(1, 5, 50).tolist()  # many ties
    batches = transcriber.batches(lengths)
    assert [i for batch in batches for i in batch] == sorted(range(50), key=lambda i: (-lengths[i], i))
    assert [len(batch) for batch in batches] == [2] * 25


def test_batches_with_a_forward_cost_are_the_cuts_of_length_batches_longest_first():
    transcriber = Transcriber(FrameIndexBackend(), batch_size=8, forward_cost_s=1.0)
    lengths = [SECOND, 5 * SECOND, SECOND, 5 * SECOND, SECOND]
    # in a batch the order does not matter to the forward pass: compared as sets
    assert [sorted(batch) for batch in transcriber.batches(lengths)] == [[1, 3], [0, 2, 4]]
    assert [sorted(batch) for batch in Transcriber(FrameIndexBackend(), 2, forward_cost_s=1.0).batches(lengths)] == [
        [1, 3],
        [0, 2],
        [4],
    ]


def test_length_batches_cut_where_padding_costs_more_than_a_forward_pass():
    # 4 short and 4 long: together, 8 x 5 = 40 (+2); apart, 4 x 1 + 4 x 5 = 24 (+4)
    assert length_batches([1, 1, 1, 1, 5, 5, 5, 5], 16, forward_cost=2) == [(0, 4), (4, 8)]
    # a forward pass dearer than the padding: one batch
    assert length_batches([1, 1, 1, 1, 5, 5, 5, 5], 16, forward_cost=20) == [(0, 8)]
    # never over batch_size; every length once, in order
    bounds = length_batches([3] * 20, 8, forward_cost=1000)
    assert len(bounds) == 3 and all(0 < e - b <= 8 for b, e in bounds)
    assert [i for b, e in bounds for i in range(b, e)] == list(range(20))
    assert length_batches([], 8, forward_cost=1) == []


def test_a_transcriber_with_a_forward_cost_cuts_batches_by_length_and_gives_the_same_records():
    """The server's batches are whatever arrived together: 1 s and 5 s recordings run in separate forward passes
    (none padded to 5 s), each recording's record unchanged, in the order given."""
    rng = np.random.default_rng(0)
    waveforms = [counting(s) for s in rng.permutation([1.0] * 5 + [5.0] * 3)]
    plain, cut = FrameIndexBackend(), FrameIndexBackend()
    expected = Transcriber(plain, batch_size=16).transcribe(waveforms)
    assert Transcriber(cut, batch_size=16, forward_cost_s=1.0).transcribe(waveforms) == expected
    assert [len(b) for b in plain.batches] == [8] and [len(b) for b in cut.batches] == [3, 5]  # the longest first


# ---------------------------------------------------------------------------------------------- chunking


@pytest.mark.parametrize("seconds", [29.0, 70.0, 70.02, 95.5])
def test_chunks_join_without_gaps(seconds):
    backend = FrameIndexBackend()
    transcriber = Transcriber(backend, batch_size=4, chunk_length_s=20, stride_length_s=3, confidence=False)
    samples = counting(seconds)
    ids, times = [], []

    class Recorder:
        def decode(self, frame_ids):
            ids.append(frame_ids)
            return ""

        def words(self, frame_ids, frame_times, frame_seconds):
            times.append(frame_times)
            return []

    backend.vocabulary = Recorder()
    transcriber.timestamps = True
    transcriber.transcribe([samples])
    frames = np.concatenate(ids)
    expected = np.arange(len(frames))
    assert np.array_equal(frames, expected % backend.vocab)
    assert np.allclose(times[0], expected * 0.04)
    assert len(frames) >= int(seconds * SECOND) // 640  # the whole file is covered
    assert len(backend.batches) == (1 if seconds < 20 else -(-len(transcriber.chunks(samples)) // 4))


@pytest.mark.parametrize(
    "chunk, stride, message",
    [
        (0, None, "--chunk_length_s must be a positive number of seconds, got 0"),
        (float("inf"), None, "--chunk_length_s must be a positive number of seconds, got inf"),
        (10, 5, r"--stride_length_s must be in \[0, chunk_length_s / 2\), got 5"),
        (0.1, 0.04, "--stride_length_s 0.04 leaves no audio between the overlaps of --chunk_length_s 0.1"),
    ],
)
def test_chunk_and_stride_lengths_that_cannot_work_are_refused_by_name(chunk, stride, message):
    with pytest.raises(InferenceError, match=f"^{message}"):
        Transcriber(FrameIndexBackend(), chunk_length_s=chunk, stride_length_s=stride)


# ---------------------------------------------------------------------------------------------- stream


def test_stream_yields_each_recording_once_with_its_pieces_joined_as_log_probs_gives_them():
    backend = FrameIndexBackend()
    transcriber = Transcriber(backend, batch_size=2, chunk_length_s=20, stride_length_s=3)
    recordings = [counting(s) for s in (1.0, 25.0, 5.0, 45.0, 3.0)]
    passes = list(transcriber.stream(recordings))
    yielded = [index for done in passes for index, _ in done]
    assert sorted(yielded) == list(range(5)) and all(done == sorted(done, key=lambda d: d[0]) for done in passes)
    assert len(passes) > 1 and len(passes[0]) < 5  # recordings come as their last piece is done, not at the end
    pieces = [length for batch in backend.batches for length in batch]
    assert pieces == sorted(pieces, reverse=True) and pieces[0] == transcriber.chunk  # the longest first
    joined = transcriber.log_probs(recordings)
    for done in passes:
        for index, (log_probs, times) in done:
            assert np.array_equal(log_probs, joined[index][0]) and np.array_equal(times, joined[index][1])
    for recording, (log_probs, times) in zip(recordings, joined):  # one frame per 640 samples, no gap, no repeat
        frames = -(-len(recording) // 640)  # (the model gives one more frame, of the padding, at the very end)
        assert np.array_equal(log_probs.argmax(-1)[:frames], np.arange(frames) % backend.vocab)
        assert len(log_probs) - frames in (0, 1) and np.allclose(times, np.arange(len(times)) * 0.04)
    assert np.array_equal(joined[0][0], FrameIndexBackend()([recordings[0]])[0])  # one piece: the model's output


def test_a_recording_that_cannot_be_read_or_that_the_model_refuses_fails_alone(tmp_path):
    nan, gone = tmp_path / "nan.wav", tmp_path / "gone.wav"
    sf.write(nan, np.full(SECOND, np.nan, np.float32), SECOND, subtype="FLOAT")
    sf.write(gone, np.zeros(SECOND, np.float32), SECOND)
    vanished = AudioFile(gone)
    gone.unlink()  # deleted after it was listed: its read fails
    # 3 s is refused, and so is the second chunk (11 s to 25 s) of the 25 s recording
    backend = FrameIndexBackend(refuse={3 * SECOND, 14 * SECOND})
    recordings = [counting(1), AudioFile(nan), counting(3), vanished, counting(2), counting(25)]
    transcriber = Transcriber(backend, batch_size=8, chunk_length_s=20, stride_length_s=3)
    results = [pair for done in transcriber.stream(recordings) for pair in done]
    assert [index for index, _ in results] == list(range(6))  # each once, the failed ones too
    results = dict(results)
    assert re.match(rf"^{re.escape(str(nan))}: {SECOND} non-finite samples", str(results[1]))
    assert str(results[3]) == f"{gone}: audio file not found"
    assert str(results[2]) == f"the model cannot take {3 * SECOND} samples"
    assert str(results[5]) == f"the model cannot take {14 * SECOND} samples"
    for index in (0, 4):
        assert np.array_equal(results[index][0], FrameIndexBackend()([recordings[index]])[0])
    # the batch of the five readable pieces failed, then ran a piece at a time
    assert [len(b) for b in backend.batches] == [5, 1, 1, 1, 1, 1]
    records = dict(pair for done in transcriber.transcribe_each(recordings) for pair in done)
    assert [isinstance(records[i], Exception) for i in range(6)] == [False, True, True, True, False, True]
    assert records[0] == transcriber.transcribe([recordings[0]])[0]
    with pytest.raises(ValueError, match="cannot take|non-finite|not found"):
        transcriber.log_probs(recordings)


def test_a_recording_fails_once_and_its_other_pieces_are_not_run():
    backend = FrameIndexBackend(refuse={20 * SECOND})  # both 20 s chunks of 45 s; then its 17 s chunk is left
    transcriber = Transcriber(backend, batch_size=1, chunk_length_s=20, stride_length_s=3)
    results = [pair for done in transcriber.stream([counting(45), counting(2)]) for pair in done]
    assert [index for index, _ in results] == [0, 1] and isinstance(results[0][1], ValueError)
    assert backend.batches == [[20 * SECOND], [2 * SECOND]]


def test_non_finite_log_probabilities_are_named_by_frame():
    transcriber = Transcriber(FrameIndexBackend())
    log_probs = np.zeros((10, 34), np.float32)
    log_probs[6, 2] = np.nan
    with pytest.raises(InferenceError, match="NaN or infinite log-probabilities for 1 of 10 frames, from frame 6"):
        transcriber.decode(log_probs, np.arange(10) * 0.04)


# ---------------------------------------------------------------------------------------------- decoding


@pytest.fixture(scope="module")
def folders(tiny_model, tmp_path_factory):
    """(a copy of the tiny model, a copy with the language model build_lm.py makes)."""
    root = tmp_path_factory.mktemp("decoders")
    plain, with_lm = root / "plain", root / "with_lm"
    shutil.copytree(tiny_model, plain)
    shutil.copytree(tiny_model, with_lm)
    assert build_lm.main([str(with_lm)]) == 0
    return plain, with_lm


def test_load_decoder_kinds_greedy_lm_and_auto(folders):
    plain, with_lm = folders
    assert load_decoder(with_lm, "greedy") is None and load_decoder(plain, "greedy") is None
    assert load_decoder(plain, "auto") is None
    for kind in ("lm", "auto"):
        decoder = load_decoder(with_lm, kind)
        assert isinstance(decoder, LMDecoder)
        assert decoder.settings == {
            "language_model": "lm.arpa",
            "order": 3,
            "alpha": 0.5,
            "beta": 1.5,
            "unk_score_offset": -10.0,
            "score_boundary": True,
            "beam_width": DEFAULT_BEAM_WIDTH,
        }
    tuned = load_decoder(with_lm, "lm", alpha=0.0, beta=-1.0, beam_width=4, hotwords=None)
    assert (tuned.settings["alpha"], tuned.settings["beta"], tuned.settings["beam_width"]) == (0.0, -1.0, 4)
    assert "hotwords" not in tuned.settings  # an option left unset is the decoder's default


def test_load_decoder_names_the_folder_without_a_language_model_and_a_bad_option(folders):
    plain, with_lm = folders
    with pytest.raises(InferenceError, match=rf"^{re.escape(str(plain))} has no language_model/ folder; add one"):
        load_decoder(plain, "lm")
    with pytest.raises(InferenceError, match="hotword 'joy' has characters"):  # at load, not at the first file
        load_decoder(with_lm, "lm", hotwords=["joy"])
    with pytest.raises(InferenceError, match="alpha"):
        load_decoder(with_lm, "lm", alpha=100.0)


def test_greedy_text_is_the_tokenizers_on_real_model_ids(tiny_config):
    """`CTCVocabulary.decode`, the greedy decoding of the commands, the server and training's evaluation, against
    the tokenizer's `batch_decode` (the pipeline's) on a model's ids: repeats collapse, blanks go, word delimiters
    become spaces (two of them, blank between, two spaces), the ends are stripped."""
    from modeling_ebranchformer import EBranchformerForCTC, EBranchformerProcessor

    torch.manual_seed(0)
    model, processor = EBranchformerForCTC(tiny_config).eval(), EBranchformerProcessor()
    files = sorted((CORPUS / "test_opus" / "crowd" / "files").glob("*.opus"))[:8]
    inputs = processor.feature_extractor([read_audio(f) for f in files], sampling_rate=SECOND, return_tensors="pt")
    give_words(model, inputs)
    with torch.no_grad():
        ids = model(**inputs).logits.argmax(-1).numpy()
    lengths = model.get_output_lengths(inputs["attention_mask"].sum(-1)).tolist()
    rows = [row[:n].tolist() for row, n in zip(ids, lengths)]
    blank, space = processor.tokenizer.pad_token_id, processor.tokenizer.convert_tokens_to_ids("|")
    joined = [i for row in rows for i in row]
    assert blank in joined and space in joined and any(a == b != blank for a, b in itertools.pairwise(joined))
    rows += [[], [blank] * 4, [space, space, blank, 5, 5, blank, 5, space, blank, space, 7, space], [9, 9, 9]]
    vocabulary = onnx_runtime.CTCVocabulary.from_tokenizer(processor.tokenizer)
    expected = processor.tokenizer.batch_decode(rows)
    assert [vocabulary.decode(np.array(row, dtype=np.int64)) for row in rows] == expected
    assert sum(" " in text for text in expected) >= 4 and "  " in expected[-2]
