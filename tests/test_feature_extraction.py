import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from modeling_ebranchformer import EBranchformerFeatureExtractor


def librosa_log_mel(wave: np.ndarray) -> np.ndarray:
    """The course front end with librosa: an independent implementation (numpy FFT, librosa's filters)."""
    mel = librosa.feature.melspectrogram(
        y=wave.astype(np.float64), sr=16000, n_fft=400, win_length=400, hop_length=160, window="hann",
        center=True, pad_mode="reflect", power=2.0, n_mels=64, fmin=0.0, fmax=8000.0, htk=True, norm=None,
    )  # fmt: skip
    return np.log(np.clip(mel, 1e-9, 1e9)).T


@pytest.fixture(scope="module")
def fe():
    return EBranchformerFeatureExtractor()


def test_equals_librosa_on_the_real_golos_recording(fe, golos_example):
    wave, rate = sf.read(golos_example, dtype="float32")
    assert rate == 16000
    ours = fe(wave, sampling_rate=rate, return_tensors="np").input_features[0]
    reference = librosa_log_mel(wave)
    assert ours.shape == reference.shape == (1 + len(wave) // 160, 64)
    assert np.abs(ours - reference).max() <= 1e-3


def test_equals_librosa_on_synthetic_speech(fe, speech_like):
    for seconds in (0.5, 1.37):
        wave = speech_like(seconds)
        ours = fe(wave, sampling_rate=16000).input_features[0]
        assert np.abs(ours - librosa_log_mel(wave)).max() <= 1e-3


def test_batch_equals_single_and_masks_padding(fe, speech_like):
    waves = [speech_like(0.9, 0), speech_like(0.31, 1), speech_like(0.55, 2)]
    batch = fe(waves, sampling_rate=16000, return_tensors="pt")
    assert batch.input_features.shape == (3, 91, 64)
    assert batch.attention_mask.sum(-1).tolist() == [91, 32, 56]
    for i, wave in enumerate(waves):
        alone = fe(wave, sampling_rate=16000, return_tensors="pt").input_features[0]
        n = alone.shape[0]
        assert torch.equal(batch.input_features[i, :n], alone)
        assert (batch.input_features[i, n:] == 0).all()


def test_int16_gives_the_features_of_float(fe, speech_like):
    wave = speech_like(0.5)
    pcm = np.round(wave * 32768).astype(np.int16)
    a = fe(pcm, sampling_rate=16000).input_features[0]
    b = fe(pcm.astype(np.float32) / 32768, sampling_rate=16000).input_features[0]
    assert np.array_equal(a, b)


def test_padding_and_truncation_options(fe, speech_like):
    wave = speech_like(0.5)  # 51 frames
    padded = fe(wave, sampling_rate=16000, padding="max_length", max_length=80, return_tensors="np")
    assert padded.input_features.shape == (1, 80, 64) and padded.attention_mask.sum() == 51
    cut = fe(wave, sampling_rate=16000, padding="max_length", max_length=20, truncation=True, return_tensors="np")
    assert cut.input_features.shape == (1, 20, 64)
    multiple = fe(wave, sampling_rate=16000, pad_to_multiple_of=4, return_tensors="np")
    assert multiple.input_features.shape == (1, 52, 64)


@pytest.mark.parametrize(
    "audio, kwargs, message",
    [
        (np.zeros(16000, np.float32), {"sampling_rate": 8000}, "8000 Hz .* resample"),
        (np.zeros(0, np.float32), {}, "item 0 is empty"),
        (np.array([0.0, np.nan, 0.1] * 300, np.float32), {}, "NaN or infinite samples \\(first at sample 1\\)"),
        ([np.zeros(10, np.float32), np.array([np.inf] * 500)], {}, "item 1 holds NaN"),
        (np.zeros((2, 3, 100), np.float32), {}, "1-D .* or 2-D"),
        ([np.zeros((16000, 2), np.float32)], {}, "stereo\\? downmix"),
        (np.zeros(100, np.uint8), {}, "unsupported dtype uint8"),
        ("audio.wav", {}, "array or a list of arrays"),
    ],
)
def test_bad_audio_raises_a_clear_error(fe, audio, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fe(audio, **kwargs)


def test_frames_per_utterance(fe):
    for n in (1, 159, 160, 16000, 16001):
        assert fe(np.ones(n, np.float32) * 0.1).input_features[0].shape[0] == 1 + n // 160


def test_saved_config_has_no_derived_arrays(fe, tmp_path):
    fe.save_pretrained(tmp_path)
    text = (tmp_path / "preprocessor_config.json").read_text()
    assert "_mel_filters" not in text
    loaded = EBranchformerFeatureExtractor.from_pretrained(tmp_path)
    wave = np.random.default_rng(0).standard_normal(4000).astype(np.float32)
    assert np.array_equal(loaded(wave).input_features[0], fe(wave).input_features[0])
