"""Long recordings and readable transcripts: voice-activity segmentation (`ebranchformer_ru.vad`), word confidence
(`modeling_ebranchformer.confidence`, through `inference.greedy_confidences` and `beam_confidences`) and inverse text normalisation (`ebranchformer_ru.itn`),
through the Transcriber, transcribe.py and the server."""

import itertools
import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from project import CORPUS, ROOT

from ebranchformer_ru import onnx_runtime, vad
from ebranchformer_ru.audio import read_audio
from ebranchformer_ru.commands import transcribe
from ebranchformer_ru.inference import Transcriber, beam_confidences, greedy_confidences, load_backend
from ebranchformer_ru.itn import InverseNormalizer, ITNError
from modeling_ebranchformer.confidence import aligned_confidence

SECOND = 16000
CROWD = CORPUS / "test_opus" / "crowd" / "files"
GAPS = [1.5, 2.5, 1.0, 3.0]  # seconds of silence after each utterance but the last


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """Five embedded utterances separated by known silences, written as one WAV: (path, samples, utterances'
    (start, end) in samples)."""
    import soundfile as sf

    parts, spans, at = [], [], 0
    for index, path in enumerate(sorted(CROWD.glob("*.opus"))[:5]):
        speech = read_audio(path)
        parts.append(speech)
        spans.append((at, at + len(speech)))
        at += len(speech)
        if index < len(GAPS):
            parts.append(np.zeros(int(GAPS[index] * SECOND), np.float32))
            at += len(parts[-1])
    samples = np.concatenate(parts)
    path = tmp_path_factory.mktemp("long") / "long.wav"
    sf.write(path, samples, SECOND, subtype="FLOAT")
    return path, samples, spans


def test_segments_follow_the_silences_between_utterances(recording):
    _, samples, spans = recording
    segments = vad.VoiceActivity()(samples)
    assert len(segments) == len(spans)  # one segment an utterance: every silence is a pause of over 1 s
    for (start, end), (first, last) in zip(segments, spans):
        assert first - 0.1 * SECOND <= start and end <= last + 0.15 * SECOND  # inside the utterances, padded
        assert end - start >= 0.5 * (last - first)  # and most of their speech
    assert all(b[0] - a[1] >= vad.MIN_GAP for a, b in itertools.pairwise(segments))  # never touching
    assert all(e - s <= 25 * SECOND for s, e in segments)


def test_segments_follow_the_pauses_under_noise(recording):
    """Pauses filled with noise 30 dB under the speech still cut the recording, and only there."""
    _, samples, spans = recording
    rng = np.random.default_rng(0)
    speech_rms = float(np.sqrt(np.mean(np.concatenate([samples[s:e] for s, e in spans]) ** 2)))
    noisy = samples + rng.normal(0, speech_rms * 10 ** (-30 / 20), len(samples)).astype(np.float32)
    segments = vad.VoiceActivity()(noisy)
    assert len(segments) == len(spans)
    for (start, end), (first, last) in zip(segments, spans):
        assert first - 0.2 * SECOND <= start and end <= last + 0.2 * SECOND


def test_a_recording_run_in_parts_is_not_cut_where_one_part_meets_the_next():
    """Over 120 s, Silero runs as parts side by side. An utterance across the boundary of two parts is still one
    segment: a part's fresh state used to hear a quiet (far-field) voice as silence for its first windows, and the
    speech there was cut and lost."""
    speech = read_audio(CORPUS / "test_opus" / "farfield" / "files" / "test_opus_farfield_0002.opus")
    windows = 130 * SECOND // vad.WINDOW  # two parts
    boundary = -(-windows // 2) * vad.WINDOW  # where the second part starts
    start = boundary - len(speech) // 2
    samples = np.zeros(windows * vad.WINDOW, np.float32)
    samples[start : start + len(speech)] = speech
    segmenter = vad.VoiceActivity()
    (segment,) = segmenter(samples)
    assert segment[0] <= boundary - SECOND and boundary + SECOND <= segment[1]
    short_blocks = segmenter.probabilities(samples, block_s=1.0)  # blocks shorter than the lead: the same
    np.testing.assert_allclose(short_blocks, segmenter.probabilities(samples), atol=1e-5)


def test_a_long_stretch_is_cut_at_its_longest_pause_and_a_pauseless_one_into_equal_parts():
    segmenter = vad.VoiceActivity(max_segment_s=10, join_pause_s=5)
    regions = [
        (0, 4 * SECOND),
        (5 * SECOND, 8 * SECOND),
        (11 * SECOND, 15 * SECOND),
        (15_500 + 15 * SECOND, 19 * SECOND),
    ]
    # 19 s > 10 s: cut at the longest pause (3 s, between 8 and 11 s), then each half fits
    assert segmenter.segments(regions) == [(0, 8 * SECOND), (11 * SECOND, 19 * SECOND)]
    parts = segmenter.segments([(0, 25 * SECOND)])  # no pause at all: three equal parts, touching
    assert len(parts) == 3 and parts[0][0] == 0 and parts[-1][1] == 25 * SECOND
    assert all(e - s <= 10 * SECOND for s, e in parts) and all(a[1] == b[0] for a, b in itertools.pairwise(parts))
    joined = vad.VoiceActivity(join_pause_s=1.0).segments([(0, SECOND), (SECOND + 8000, 2 * SECOND)])
    assert joined == [(0, 2 * SECOND)]  # a 0.5 s pause inside a phrase: one segment
    padded = vad.VoiceActivity(join_pause_s=0.01).segments([(0, SECOND), (SECOND + 500, 2 * SECOND)])
    assert padded[1][0] - padded[0][1] >= vad.MIN_GAP  # segments closer than two frames are pulled apart
    with pytest.raises(vad.VADError, match="--vad_threshold must be between 0 and 1"):
        vad.VoiceActivity(threshold=1.5)


def test_silence_gives_no_segment_and_an_empty_record(tiny_model):
    transcriber = Transcriber(load_backend(tiny_model), timestamps=True, segmenter=vad.VoiceActivity())
    silence = np.zeros(5 * SECOND, np.float32)
    assert transcriber.transcribe([silence]) == [{"text": "", "words": [], "segments": []}]


def test_segments_are_transcribed_once_and_placed_on_the_recordings_time_line(tiny_model, recording):
    """With the VAD each segment is one piece of the Transcriber's batches; its words carry the recording's times
    and fall inside their segment, and each segment's text is what that stretch of audio gives alone."""
    _, samples, spans = recording
    backend = load_backend(tiny_model)
    calls = []
    transcriber = Transcriber(backend, timestamps=True, segmenter=vad.VoiceActivity())
    real = transcriber.forward
    transcriber.forward = lambda stretches: calls.append([len(s) for s in stretches]) or real(stretches)
    (record,) = transcriber.transcribe([samples])
    segments = vad.VoiceActivity()(samples)
    assert sorted(n for batch in calls for n in batch) == sorted(e - s for s, e in segments)  # each once
    assert [(s["start"], s["end"]) for s in record["segments"]] == [
        (pytest.approx(s / SECOND, abs=0.001), pytest.approx(e / SECOND, abs=0.041)) for s, e in segments
    ]
    alone = Transcriber(backend).transcribe([samples[s:e] for s, e in segments])
    assert [s["text"] for s in record["segments"]] == [r["text"] for r in alone]
    assert record["text"] == " ".join(r["text"] for r in alone if r["text"])
    for word in record["words"]:
        assert any(s["start"] <= word["start"] and word["end"] <= s["end"] for s in record["segments"])
        # and inside the utterance the word came from, at its known offset in the recording
        assert any(a / SECOND <= word["start"] and word["end"] <= b / SECOND + 0.04 for a, b in spans)


def test_transcribe_vad_writes_segments_and_cues_that_never_span_a_pause(tiny_model, recording, tmp_path):
    path, _, _ = recording
    jsonl, srt = tmp_path / "long.jsonl", tmp_path / "long.srt"
    assert transcribe.main([str(tiny_model), str(path), "--output", str(jsonl), "--vad", "--no_progress"]) == 0
    assert transcribe.main([str(tiny_model), str(path), "--output", str(srt), "--vad", "--no_progress"]) == 0
    (record,) = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(record["segments"]) == 5 and "words" not in record  # segments always; words with --timestamps
    cues = srt.read_text().strip().split("\n\n")
    times = [cue.splitlines()[1].split(" --> ") for cue in cues]
    seconds = [[_seconds(t) for t in pair] for pair in times]
    for start, end in seconds:
        assert any(s["start"] - 1e-3 <= start and end <= s["end"] + 1e-3 for s in record["segments"])
    settings = json.loads((tmp_path / ".long.jsonl.transcribe.json").read_text())["settings"]
    assert settings["vad_threshold"] == 0.5 and settings["vad_max_segment_s"] == 25.0


def _seconds(stamp: str) -> float:
    hours, minutes, rest = stamp.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(rest.replace(",", "."))


def test_vad_options_are_checked_before_any_work(tiny_model, recording, capsys):
    path, _, _ = recording
    with pytest.raises(SystemExit) as exit:
        transcribe.main([str(tiny_model), str(path), "--vad", "--vad_max_segment_s", "40"])
    assert exit.value.code == 2
    assert "--vad_max_segment_s must be from 1 s to --chunk_length_s (30 s), got 40" in capsys.readouterr().err


def test_the_vad_model_is_found_without_importing_silero_vad(monkeypatch):
    """silero_vad/__init__.py imports torch: the model file is found through the package's spec instead."""
    monkeypatch.delitem(sys.modules, "silero_vad", raising=False)
    path = vad.model_path()
    assert path.name == "silero_vad.onnx" and path.is_file() and "silero_vad" not in sys.modules
    monkeypatch.setattr(vad.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(vad.VADError, match=r"needs the silero-vad package: pip install 'ebranchformer-ru\[vad\]'"):
        vad.model_path()


@pytest.mark.slow
def test_vad_runs_with_an_onnx_export_where_torch_cannot_be_imported(tiny_model, recording, tmp_path):
    from ebranchformer_ru.onnx_export import export

    path, _, _ = recording
    folder = tmp_path / "onnx"
    export(tiny_model, folder, wer_sets={}, log=lambda *_: None)
    blocker = tmp_path / "blocker"
    for name in ("torch", "transformers"):
        (blocker / name).mkdir(parents=True)
        (blocker / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked in this test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT)])}
    output = tmp_path / "out.jsonl"
    code = (
        "import sys; from ebranchformer_ru.commands.transcribe import main; status = main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(status)"
    )
    args = [str(folder), str(path), "--output", str(output), "--vad", "--no_progress", "--timestamps"]
    result = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    offline = tmp_path / "torch.jsonl"
    assert (
        transcribe.main(
            [str(tiny_model), str(path), "--output", str(offline), "--vad", "--no_progress", "--timestamps"]
        )
        == 0
    )
    onnx, torch_ = (json.loads(p.read_text()) for p in (output, offline))
    assert onnx["segments"] == torch_["segments"] and len(onnx["segments"]) == 5


# ---------------------------------------------------------------------------------------------- confidence

VOCABULARY = onnx_runtime.CTCVocabulary({"|": 0, "а": 1, "б": 2, "<pad>": 3})
BLANK = VOCABULARY.blank_id


def log_probs(rows) -> np.ndarray:
    """Frames of (label: probability) with the rest of each frame's mass spread over the other labels."""
    out = np.full((len(rows), 4), 1e-3)
    for t, row in enumerate(rows):
        for label, p in row.items():
            out[t, label] = p
    return np.log(out / out.sum(1, keepdims=True))


def test_a_greedy_words_confidence_is_the_geometric_mean_of_its_characters_peaks():
    # "аб а": а peaks at 0.9 (frames 0-1), б at 0.6, then space, а at 0.99
    frames = log_probs([{1: 0.7}, {1: 0.9}, {3: 0.9}, {2: 0.6}, {0: 0.9}, {1: 0.99}])
    ids = frames.argmax(-1)
    assert VOCABULARY.decode(ids) == "аб а"
    probabilities = np.exp(frames)
    first = math.sqrt(probabilities[1, 1] * probabilities[3, 2])
    assert greedy_confidences(frames, ids, VOCABULARY) == [round(first, 3), round(probabilities[5, 1], 3)]


def test_an_lm_words_confidence_is_its_aligned_acoustic_support():
    frames = log_probs([{1: 0.9}, {3: 0.9}, {2: 0.8}, {2: 0.7}])  # the frames say "аб" clearly
    sure = aligned_confidence(frames, [1, 2], BLANK)
    assert sure == round(math.sqrt(np.exp(frames[0, 1]) * np.exp(frames[2, 2])), 3)
    doubted = aligned_confidence(frames, [1, 1], BLANK)  # "аа", which an LM might prefer: frames disagree
    assert doubted < 0.1 < sure
    assert aligned_confidence(frames[:1], [1, 2], BLANK) == 0.0  # too few frames for the word


def test_an_lm_words_confidence_also_weighs_the_beams_that_agree():
    from modeling_ebranchformer.beam_search import OutputBeam

    frames = log_probs([{1: 0.9}, {3: 0.9}, {2: 0.8}, {0: 0.9}, {1: 0.9}, {2: 0.9}])  # "аб аб"
    acoustic = aligned_confidence(frames[0:3], [1, 2], BLANK)
    best = OutputBeam("аб аб", None, [("аб", (0, 3)), ("аб", (4, 6))], -1.0, -1.0)
    rival = OutputBeam("аб ба", None, [("аб", (0, 3)), ("ба", (4, 6))], -1.0, -1.0 - math.log(3))  # 1/4 of the mass
    first, second = beam_confidences(frames, [best, rival], VOCABULARY)
    assert first == round(math.sqrt(acoustic), 3)  # every beam agrees on the first word: agreement 1
    second_acoustic = aligned_confidence(frames[4:6], [1, 2], BLANK)
    assert second == round(math.sqrt(second_acoustic * 0.75), 3)  # a quarter of the beams' mass says "ба"


def test_every_word_in_jsonl_has_a_confidence(tiny_model, tmp_path):
    files = [str(p) for p in sorted(CROWD.glob("*.opus"))[:2]]
    output = tmp_path / "out.jsonl"
    assert transcribe.main([str(tiny_model), *files, "--output", str(output), "--timestamps", "--no_progress"]) == 0
    words = [w for line in output.read_text().splitlines() for w in json.loads(line)["words"]]
    assert words and all(0 < w["confidence"] <= 1 for w in words)


# ---------------------------------------------------------------------------------------------- numbers as digits


def test_a_missing_itn_extra_is_named_with_the_install_line(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_nemo(name, *args, **kwargs):
        if name.startswith("nemo_text_processing"):
            raise ModuleNotFoundError("No module named 'nemo_text_processing'", name="nemo_text_processing")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nemo)
    with pytest.raises(ITNError, match=r"--itn needs the itn extra.*pip install 'ebranchformer-ru\[itn\]'"):
        InverseNormalizer()


def test_damaged_itn_grammars_are_named_with_the_fix(tmp_path):
    pytest.importorskip("nemo_text_processing")
    from ebranchformer_ru.itn import GRAMMAR

    (tmp_path / GRAMMAR).write_bytes(b"a file cut off while it was written")
    with pytest.raises(ITNError, match=rf"the compiled grammars cannot be read .*delete {tmp_path / GRAMMAR}"):
        InverseNormalizer(tmp_path)


@pytest.fixture(scope="session")
def itn(tmp_path_factory):
    """The Russian grammars, compiled once for the session (a few minutes) unless EBRANCHFORMER_ITN_CACHE holds
    them already."""
    pytest.importorskip("nemo_text_processing")
    return InverseNormalizer(os.environ.get("EBRANCHFORMER_ITN_CACHE") or tmp_path_factory.mktemp("itn"))


NUMBERS = {  # what nemo-text-processing's Russian grammars write (1.2): cardinals, dates, times, money, other
    "сто двадцать три": "123",
    "две тысячи двадцать шесть": "2026",
    "двадцать третьего мая две тысячи двадцать шестого года": "23.05.2026г.",
    "тридцать первое декабря": "31.12",
    "десять часов тридцать минут": "10:30",
    "в семь часов утра": "в 07:00 утра",
    "триста рублей пятьдесят копеек": "300 руб. 50 коп.",
    "сорок два процента": "42 %",
    "привет как дела": "привет как дела",  # no number: unchanged
    "позвони маме": "позвони маме",
    "": "",
}


@pytest.mark.slow
def test_numbers_become_digits_and_the_spoken_text_is_kept(itn, tiny_model, tmp_path, monkeypatch):
    for spoken, written in NUMBERS.items():
        assert itn(spoken) == written, spoken
    # the server normalises on several threads at once: NeMo's parser state is per normaliser, so calls take turns
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with ThreadPoolExecutor(8) as pool:
            phrases = list(NUMBERS) * 4
            assert list(pool.map(itn, phrases)) == [NUMBERS[p] for p in phrases]
    finally:
        sys.setswitchinterval(interval)
    monkeypatch.setattr("ebranchformer_ru.transcription.InverseNormalizer", lambda *a, **k: itn)
    output = tmp_path / "out.jsonl"
    files = [str(p) for p in sorted(CROWD.glob("*.opus"))[:2]]
    assert transcribe.main([str(tiny_model), *files, "--output", str(output), "--itn", "--no_progress"]) == 0
    for line in output.read_text().splitlines():
        record = json.loads(line)
        assert record["text"] == itn(record["raw_text"])


# ---------------------------------------------------------------------------------------------- the server


def test_the_server_with_vad_answers_its_segments_and_confidences(tiny_model, recording, tmp_path):
    pytest.importorskip("uvicorn")
    from served import Running

    path, _, _ = recording
    offline = tmp_path / "long.jsonl"
    options = ["--vad", "--timestamps", "--no_progress"]
    assert transcribe.main([str(tiny_model), str(path), "--output", str(offline), *options]) == 0
    expected = json.loads(offline.read_text())
    with Running(tiny_model, "--vad") as running:
        body = running.post(path, response_format="verbose_json", **{"timestamp_granularities[]": "word"}).json()
        refused = running.post(path, itn="true")
        health = running.get_json("/health")
    assert [(s["start"], s["end"], s["text"]) for s in body["segments"]] == [
        (s["start"], s["end"], s["text"]) for s in expected["segments"]
    ]
    assert body["text"] == expected["text"] and body["words"] == expected["words"]
    assert all("confidence" in word for word in body["words"])
    assert refused.status_code == 400 and "start it with --itn" in refused.json()["error"]["message"]
    assert health == {"status": "ok", "dtype": "float32", "torch_compile": False}


@pytest.mark.slow
def test_the_server_normalises_numbers_when_asked(itn, tiny_model, monkeypatch):
    pytest.importorskip("uvicorn")
    from served import Running

    monkeypatch.setattr("ebranchformer_ru.serving.InverseNormalizer", lambda *a, **k: itn)
    with Running(tiny_model, "--itn") as running:
        spoken = running.post(itn="false", response_format="verbose_json").json()
        written = running.post(response_format="verbose_json").json()
    assert "raw_text" not in spoken and written["raw_text"] == spoken["text"]
    assert written["text"] == itn(spoken["text"])


@pytest.mark.slow
def test_evaluate_itn_keeps_the_wer_on_spoken_text_and_writes_the_digits_beside(itn, tiny_model, tmp_path, monkeypatch):
    from ebranchformer_ru.evaluation import evaluate_model

    monkeypatch.setattr("ebranchformer_ru.evaluation.InverseNormalizer", lambda *a, **k: itn)
    plain = evaluate_model(tiny_model, sets=["crowd"], max_samples=3, output_dir=tmp_path / "plain")
    rows = evaluate_model(tiny_model, sets=["crowd"], max_samples=3, output_dir=tmp_path / "itn", itn=True)
    assert rows == plain  # the scores: on the spoken text, as the references are written
    lines = [json.loads(line) for line in (tmp_path / "itn" / "utterances_crowd.jsonl").read_text().splitlines()]
    assert [x["itn_hypothesis"] for x in lines] == [itn(x["hypothesis"]) for x in lines]
    assert "WER on the spoken-form text" in (tmp_path / "itn" / "results.md").read_text()
