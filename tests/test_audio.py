import numpy as np
import pytest
import soundfile as sf

from ebranchformer_ru.audio import read_audio


def test_read_audio_names_the_file_it_cannot_use(tmp_path, speech_like):
    samples = speech_like(0.5)
    sf.write(tmp_path / "good.wav", samples, 16000, subtype="FLOAT")
    assert np.array_equal(read_audio(tmp_path / "good.wav"), samples)
    samples[10] = np.inf
    samples[20] = np.nan
    sf.write(tmp_path / "nan.wav", samples, 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match="nan.wav: 2 non-finite samples"):
        read_audio(tmp_path / "nan.wav")
    with pytest.raises(ValueError, match="missing.wav: audio file not found"):
        read_audio(tmp_path / "missing.wav")
    sf.write(tmp_path / "slow.wav", samples[:100], 8000)
    with pytest.raises(ValueError, match="slow.wav: sampling rate 8000 Hz, expected 16000 Hz"):
        read_audio(tmp_path / "slow.wav")


def test_a_missing_file_is_named_as_missing_by_both_readers(tmp_path):
    from ebranchformer_ru.audio import AudioFile

    for reader in (read_audio, AudioFile):
        with pytest.raises(ValueError, match=f"{tmp_path / 'gone.wav'}: audio file not found"):
            reader(tmp_path / "gone.wav")
