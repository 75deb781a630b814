"""Saved folders load through the Auto classes, with our package and without it (trust_remote_code),
and run in the ASR pipeline."""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
import torch
from small_models import one_channel_head
from transformers import AutoModelForCTC, pipeline

from ebranchformer_ru.audio import pipeline_input
from modeling_ebranchformer import (
    EBranchformerForCTC,
    EBranchformerProcessor,
)


@pytest.fixture
def saved_model(tmp_path, tiny_config, speech_like):
    torch.manual_seed(0)
    model = EBranchformerForCTC(tiny_config).eval()
    processor = EBranchformerProcessor()
    one_channel_head(model, processor, speech_like(3.0), letter=1)  # "а" words with distinct times
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, folder


def test_folder_holds_safetensors_auto_map_and_code(saved_model):
    _, folder = saved_model
    names = {p.name for p in folder.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "modeling.py",
        "configuration.py",
        "feature_extraction.py",
        "tokenization.py",
        "processing.py",
        "vocab.json",
    } <= names
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration.EBranchformerConfig",
        "AutoModelForCTC": "modeling.EBranchformerForCTC",
    }
    assert isinstance(AutoModelForCTC.from_pretrained(folder), EBranchformerForCTC)


@pytest.mark.slow
def test_fresh_process_without_the_package_gets_identical_logits(saved_model, tmp_path, speech_like):
    model, folder = saved_model
    wave = speech_like(1.2)
    np.save(tmp_path / "wave.npy", wave)
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["modeling_ebranchformer"] = None  # importing our package must fail here
        try:
            import modeling_ebranchformer
            raise SystemExit("our package was importable")
        except ImportError:
            pass
        import numpy as np, torch
        from transformers import AutoModelForCTC, AutoProcessor
        model = AutoModelForCTC.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        inputs = processor(audio=np.load({str(tmp_path / "wave.npy")!r}), sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            np.save({str(tmp_path / "logits.npy")!r}, model(**inputs).logits.numpy())
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, capture_output=True, text=True)
    processor = EBranchformerProcessor()
    with torch.no_grad():
        expected = model(**processor(audio=wave, sampling_rate=16000, return_tensors="pt")).logits.numpy()
    assert np.array_equal(np.load(tmp_path / "logits.npy"), expected)


def transcribe_directly(model, wave):
    processor = EBranchformerProcessor()
    with torch.no_grad():
        ids = model(**processor(audio=wave, sampling_rate=16000, return_tensors="pt")).logits.argmax(-1)[0]
    return processor.tokenizer.decode(ids, output_word_offsets=True)


def test_pipeline_on_an_array_and_word_timestamps(saved_model, speech_like):
    model, folder = saved_model
    asr = pipeline("automatic-speech-recognition", model=str(folder))
    wave = speech_like(3.0)
    result = asr(wave.copy(), return_timestamps="word")
    direct = transcribe_directly(model, wave)
    assert result["text"] == direct.text and len(direct.word_offsets) > 1
    # Offsets are encoder steps of 640 samples = 0.04 s.
    expected = [(w["word"], (w["start_offset"] * 0.04, w["end_offset"] * 0.04)) for w in direct.word_offsets]
    got = [(c["text"], c["timestamp"]) for c in result["chunks"]]
    assert [w for w, _ in got] == [w for w, _ in expected]
    for (_, (start, end)), (_, (want_start, want_end)) in zip(got, expected):
        assert start == pytest.approx(want_start) and end == pytest.approx(want_end)
        assert 0 <= start < end <= 3.0 + 0.04
        assert type(start) is float and type(end) is float  # not np.float64: json.dumps(result) must work


def test_pipeline_chunks_a_long_input(saved_model, speech_like):
    _, folder = saved_model
    asr = pipeline("automatic-speech-recognition", model=str(folder))
    wave = np.concatenate([speech_like(10.0, seed) for seed in range(7)])  # 70 s
    result = asr(wave, chunk_length_s=20, return_timestamps="word")
    assert isinstance(result["text"], str) and result["text"]
    starts = [c["timestamp"][0] for c in result["chunks"]]
    assert starts == sorted(starts) and starts[-1] > 45.0  # words from the whole minute, in order
    assert all(c["timestamp"][1] <= 70.0 + 0.04 for c in result["chunks"])
    assert all(type(t) is float for c in result["chunks"] for t in c["timestamp"])


def test_pipeline_on_a_file(saved_model, tmp_path, speech_like):
    model, folder = saved_model
    wave = speech_like(2.0)
    path = tmp_path / "utterance.flac"
    sf.write(path, wave, 16000)
    asr = pipeline("automatic-speech-recognition", model=str(folder))
    expected = transcribe_directly(model, sf.read(path, dtype="float32")[0]).text
    assert asr(pipeline_input(path))["text"] == expected  # soundfile: no FFmpeg needed
    if shutil.which("ffmpeg"):
        assert asr(str(path))["text"] == expected  # the pipeline's own FFmpeg decoding


def test_pipeline_on_the_real_golos_recording(saved_model, golos_example):
    _, folder = saved_model
    asr = pipeline("automatic-speech-recognition", model=str(folder))
    result = asr(pipeline_input(golos_example), return_timestamps="word")
    assert len(result["chunks"]) == len(result["text"].split()) > 0
    assert all(0 <= c["timestamp"][0] <= c["timestamp"][1] <= 4.04 for c in result["chunks"])
