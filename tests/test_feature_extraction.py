import warnings

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from modeling_ebranchformer import EBranchformerFeatureExtractor


def librosa_log_mel(wave: np.ndarray) -> np.ndarray:
    """The course front end with librosa: an independent implementation (numpy FFT, librosa's filters)."""
    mel = librosa.feature.melspectrogram(
        y=wave.astype(np.float64),
        sr=16000,
        n_fft=400,
        win_length=400,
        hop_length=160,
        window="hann",
        center=True,
        pad_mode="reflect",
        power=2.0,
        n_mels=64,
        fmin=0.0,
        fmax=8000.0,
        htk=True,
        norm=None,
    )
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


@pytest.mark.parametrize("dtype, offset, scale", [(np.int16, 0, 2**15), (np.int32, 0, 2**31), (np.uint8, 128, 2**7)])
def test_pcm_gives_the_features_of_float(fe, speech_like, dtype, offset, scale):
    # uint8 is 8-bit WAV's offset binary: 128 is silence.
    pcm = (np.round(speech_like(0.5) * (scale - 1)) + offset).astype(dtype)
    a = fe(pcm, sampling_rate=16000).input_features[0]
    b = fe((pcm.astype(np.float64) - offset).astype(np.float32) / scale, sampling_rate=16000).input_features[0]
    assert np.array_equal(a, b)


@pytest.mark.parametrize(
    "audio, message",
    [
        (np.full(1600, 1000, np.int64), r"dtype int64 \(numpy's and torch's default for Python ints"),
        ([1000, -1000] * 800, r"dtype int64 .* np.asarray\(audio, dtype=np.int16\)"),
        (torch.tensor([1000, -1000] * 800), "dtype int64"),
        (np.full(1600, 10, np.int8), "dtype int8, which is not a PCM format"),
        (np.full(1600, 10, np.uint32), "dtype uint32, which is not a PCM format"),
    ],
)
def test_integers_of_no_pcm_format_are_rejected(fe, audio, message):
    # Scaled by 2^63 (or 2^7), they gave features at the log floor and an empty transcript.
    with pytest.raises(ValueError, match=message):
        fe(audio, sampling_rate=16000)


def test_float_audio_in_integer_range_warns(fe, speech_like):
    wave = speech_like(0.5)
    pcm_values = np.round(wave / np.abs(wave).max() * 30000)  # int16 samples cast to float, not scaled
    with pytest.warns(UserWarning, match="float audio item 1 peaks at 30000 \\(1 of 2 items.*divide 16-bit values by"):
        fe([wave, pcm_values], sampling_rate=16000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fe([wave, np.clip(wave * 20, -1.5, 1.5)], sampling_rate=16000)  # clipped or hot float audio: no warning


@pytest.mark.parametrize(
    "audio",
    [
        np.zeros((3000, 2), np.float32),  # soundfile.read of a stereo file
        torch.zeros(3000, 2),
        [[0.0, 0.0]] * 3000,
        np.zeros((3000, 6), np.float32),  # 5.1
    ],
)
def test_channels_last_audio_is_rejected_not_read_as_a_batch(fe, audio):
    with pytest.raises(ValueError, match=r"looks channels-last \(samples, channels\).*soundfile.read.*mean\(axis=1\)"):
        fe(audio, sampling_rate=16000)


def test_a_batch_of_short_clips_is_still_a_batch(fe):
    assert len(fe(np.full((8, 9), 0.1, np.float32)).input_features) == 8
    assert len(fe(np.full((2, 16000), 0.1, np.float32)).input_features) == 2


def test_other_containers_of_samples(fe, speech_like):
    wave = speech_like(0.5)
    expected = fe(wave, sampling_rate=16000).input_features[0]
    as_list = fe(list(torch.from_numpy(wave)), sampling_rate=16000).input_features[0]  # 0-d tensors
    assert np.array_equal(as_list, expected)
    ragged = np.empty(2, dtype=object)  # a column of arrays, as pandas and datasets hold audio
    ragged[0], ragged[1] = wave, wave[:4000]
    batch = fe(ragged, sampling_rate=16000, return_tensors="np")
    assert np.array_equal(batch.input_features[0], expected) and batch.attention_mask.sum(-1).tolist() == [51, 26]
    bf16 = torch.from_numpy(wave).bfloat16()
    assert np.array_equal(fe(bf16).input_features[0], fe(bf16.float().numpy()).input_features[0])


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
        (np.zeros(100, bool), {}, "unsupported dtype bool"),
        ("audio.wav", {}, "array or a list of arrays"),
        (["a.wav", "b.wav"], {}, r"list of str \('a.wav', ...\), not of samples.*read_audio"),
        ([], {}, "empty batch"),
        (np.zeros((0, 100), np.float32), {}, "empty batch"),
        (np.zeros(16000, np.float32), {"sampling_rate": "16000"}, r"number of samples per second, got '16000' \(str\)"),
        (np.zeros(16000, np.float32), {"sampling_rate": True}, r"got True \(bool\)"),
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
