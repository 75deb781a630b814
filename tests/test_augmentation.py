import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ebranchformer_ru.audio import read_audio
from ebranchformer_ru.augmentation import PEAK, AudioAugmentation, AugmentationArguments, AugmentationCallback

RATE = 16000


@pytest.fixture(scope="module")
def speech(speech_like):
    return speech_like(3.0, seed=1) * 5  # peak ~0.6: loud enough that +6 dB would clip


def only(**kwargs) -> AudioAugmentation:
    return AudioAugmentation(AugmentationArguments(**kwargs), seed=7)


def peak_frequency(samples):
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return np.fft.rfftfreq(samples.size, 1 / RATE)[spectrum.argmax()]


def rms(x):
    return float(np.sqrt(np.mean(np.asarray(x, np.float64) ** 2)))


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_changes_length_and_pitch_by_the_factor(factor):
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(2 * RATE) / RATE)).astype(np.float32)
    out = only(speed_perturbation=[factor]).augment(tone, "a")
    assert abs(out.size - tone.size / factor) <= 1
    assert peak_frequency(out) == pytest.approx(440 * factor, abs=1.0)  # played faster at the same rate
    assert out.dtype == np.float32 and np.isfinite(out).all()


def test_reverberation_keeps_length_and_level_and_smears_in_time():
    clicks = np.zeros(RATE, np.float32)
    clicks[::4000] = 0.5
    out = only(reverb_probability=1.0, reverb_rt60=[0.5, 0.5]).augment(clicks, "a")
    assert out.size == clicks.size and np.isfinite(out).all()
    assert rms(out) == pytest.approx(rms(clicks), rel=1e-3) or np.abs(out).max() == pytest.approx(PEAK)
    tail = out[100:3900]  # between clicks: silent before, the room's decay after
    assert rms(tail) > 0.1 * rms(out)


@pytest.mark.parametrize("snr", [0.0, 10.0, 25.0])
def test_noise_is_added_at_the_drawn_snr(snr, speech):
    out = only(noise_probability=1.0, noise_snr_db=[snr, snr]).augment(speech, "a").astype(np.float64)
    scale = 1.0 if np.abs(out).max() < PEAK - 1e-6 else None
    if scale is None:  # scaled down as a whole to avoid clipping: undo that before measuring
        scale = np.dot(out, speech) / np.dot(speech, speech)  # the speech part is scale * speech
    noise = out / scale - speech
    assert 10 * np.log10(np.mean(speech.astype(np.float64) ** 2) / np.mean(noise**2)) == pytest.approx(snr, abs=0.2)
    assert out.size == speech.size


def test_noise_from_a_folder_and_reverb_from_impulse_responses(tmp_path, speech):
    import soundfile as sf

    (tmp_path / "noise").mkdir()
    (tmp_path / "rir").mkdir()
    hum = 0.1 * np.sin(2 * np.pi * 50 * np.arange(RATE // 2) / RATE)  # shorter than the speech: looped
    sf.write(tmp_path / "noise" / "hum.wav", hum, RATE)
    echo = np.zeros(4000)
    echo[[0, 2000]] = [1.0, 0.5]  # the direct path and one echo 125 ms later
    sf.write(tmp_path / "rir" / "room.flac", echo, RATE)
    out = only(noise_probability=1.0, noise_snr_db=[20, 20], noise_dir=str(tmp_path / "noise")).augment(speech, "a")
    assert abs(peak_frequency(out - speech) - 50) <= 1  # what was added is the file's hum
    out = only(reverb_probability=1.0, rir_dir=str(tmp_path / "rir")).augment(speech, "a").astype(np.float64)
    expected = speech + 0.5 * np.concatenate([np.zeros(2000), speech[:-2000]])
    assert np.abs(out / rms(out) - expected / rms(expected)).max() < 1e-4
    sf.write(tmp_path / "noise" / "hum8k.wav", hum, 8000)
    with pytest.raises(ValueError, match=r"hum8k.wav: sampling rate 8000 Hz, augmentation needs 16000 Hz"):
        only(noise_probability=1.0, noise_dir=str(tmp_path / "noise"))


def test_volume_within_the_range_and_never_clipped(speech):
    quiet = speech * 0.1
    for key in map(str, range(20)):
        out = only(volume_perturbation_db=[-18, 6]).augment(quiet, key)
        gain_db = 20 * np.log10(rms(out) / rms(quiet))
        assert -18 - 1e-3 <= gain_db <= 6 + 1e-3
    loud = only(volume_perturbation_db=[6, 6]).augment(speech, "a")
    assert np.abs(loud).max() == pytest.approx(PEAK, abs=1e-6)  # scaled down to the peak, not cut
    np.testing.assert_allclose(loud / np.abs(loud).max(), speech / np.abs(speech).max(), atol=1e-6)


def test_all_together_keep_the_audio_valid(speech):
    aug = only(
        speed_perturbation=[0.9, 1.0, 1.1],
        reverb_probability=0.5,
        noise_probability=0.5,
        noise_snr_db=[-5, 30],
        volume_perturbation_db=[-18, 18],
    )
    for key in map(str, range(40)):
        out = aug.augment(speech, key)
        assert out.dtype == np.float32 and np.isfinite(out).all() and np.abs(out).max() <= PEAK + 1e-6
        assert speech.size / 1.1 - 1 <= out.size <= speech.size / 0.9 + 1


def test_draws_depend_on_seed_epoch_and_utterance_only(speech):
    args = AugmentationArguments(
        speed_perturbation=[0.9, 1.0, 1.1],
        noise_probability=0.5,
        reverb_probability=0.5,
        volume_perturbation_db=[-18, 6],
    )
    first, again, other_seed = AudioAugmentation(args, 1), AudioAugmentation(args, 1), AudioAugmentation(args, 2)
    keys = [f"utt{i}" for i in range(8)]
    outputs = [first.augment(speech, k) for k in keys]
    for k, out in zip(reversed(keys), reversed(outputs)):  # any order, any instance (worker)
        np.testing.assert_array_equal(again.augment(speech, k), out)
    assert not all(np.array_equal(other_seed.augment(speech, k), o) for k, o in zip(keys, outputs))
    assert len({o.tobytes() for o in outputs}) > 1  # utterances get their own draws
    again.set_epoch(1)
    assert not all(np.array_equal(again.augment(speech, k), o) for k, o in zip(keys, outputs))
    again.set_epoch(0)
    np.testing.assert_array_equal(again.augment(speech, keys[0]), outputs[0])


class _EpochProbe(torch.utils.data.Dataset):
    def __init__(self, augmentation):
        self.augmentation = augmentation

    def __len__(self):
        return 2

    def __getitem__(self, index):
        return self.augmentation.epoch


def test_persistent_workers_see_the_epoch():
    aug = only(speed_perturbation=[0.9, 1.1])
    loader = torch.utils.data.DataLoader(_EpochProbe(aug), num_workers=1, persistent_workers=True)
    assert [int(x) for x in loader] == [0, 0]
    aug.set_epoch(3)
    assert [int(x) for x in loader] == [3, 3]  # the same worker process, started in epoch 0


@pytest.mark.parametrize(
    "option, message",
    [
        (["--speed_perturbation", "0.1"], r"factors must lie in \[0.5, 2\]"),
        (["--noise_probability", "1.5"], r"--noise_probability must lie in \[0, 1\], got 1.5"),
        (["--noise_snr_db", "30", "5"], r"--noise_snr_db takes a range 'min max'"),
        (["--volume_perturbation_db", "-6"], r"--volume_perturbation_db takes a range 'min max'"),
        (["--noise_dir", "/nonexistent/noise"], r"--noise_dir: no folder /nonexistent/noise"),
    ],
)
def test_bad_options_are_refused(tmp_path, option, message, train_args):
    from ebranchformer_ru import training
    from ebranchformer_ru.errors import Error, UsageError

    with pytest.raises(Error, match=message) as error:
        training.parse_args(train_args(tmp_path, *option))
    # A value no run can use is a usage error (exit 2); a folder that is not there is not (exit 1).
    assert isinstance(error.value, UsageError) == (option[0] != "--noise_dir")


# --- in train_ctc.py ------------------------------------------------------------------------------------

AUGMENT = [
    "--speed_perturbation",
    "0.9",
    "1.0",
    "1.1",
    "--noise_probability",
    "0.5",
    "--reverb_probability",
    "0.5",
    "--volume_perturbation_db",
    "-18",
    "6",
]


@pytest.fixture(scope="module")
def spec_augment(tiny_overrides):
    """SpecAugment in the model, on the tiny test model."""
    return [
        "--config_overrides",
        f"{tiny_overrides},apply_spec_augment=true,mask_time_prob=0.12,mask_feature_prob=0.3,mask_feature_min_masks=2",
    ]


@pytest.fixture(scope="module")
def augmented_run(tmp_path_factory, spec_augment, train_args):
    """4 steps (2 epochs of the 40 s subset, batch 8) with augmentation and SpecAugment, one DataLoader worker,
    a checkpoint after each step, evaluated at the end."""
    from ebranchformer_ru import training

    tmp = tmp_path_factory.mktemp("augmented")
    trainer, _ = training.run(
        train_args(
            tmp,
            *AUGMENT,
            *spec_augment,
            "--max_steps",
            "4",
            "--dataloader_num_workers",
            "1",
            "--save_strategy",
            "steps",
            "--save_steps",
            "1",
            "--save_total_limit",
            "4",
        )
    )
    return tmp, trainer


@pytest.mark.slow
def test_training_audio_is_augmented_and_evaluation_audio_is_not(augmented_run):
    _, trainer = augmented_run
    features = trainer.processing_class.feature_extractor
    [callback] = [c for c in trainer.callback_handler.callbacks if isinstance(c, AugmentationCallback)]
    train, augmentation = trainer.train_dataset, callback.augmentation
    augmentation.set_epoch(1)
    example = train[0]
    raw = read_audio(example["audio"]["path"])
    np.testing.assert_array_equal(example["audio"]["array"], augmentation.augment(raw, example["id"]))
    changed = sum(
        not np.array_equal(train[i]["audio"]["array"], read_audio(train[i]["audio"]["path"])) for i in range(len(train))
    )
    assert changed >= len(train) - 1  # speed 1.0 with no noise, reverb or gain is the only way to stay equal
    for name, eval_set in trainer.eval_dataset.items():
        batch = next(iter(trainer.get_eval_dataloader(name)))  # (the Trainer orders eval batches by length too)
        alone = [
            features(read_audio(example["audio"]["path"]), sampling_rate=RATE)["input_features"][0]
            for example in eval_set
        ]
        for row, frames in zip(batch["input_features"], batch["attention_mask"].sum(-1)):
            row = row[:frames].numpy()
            assert any(x.shape == row.shape and np.allclose(x, row, rtol=0, atol=1e-4) for x in alone), name


@pytest.mark.parametrize("step", [2, 3])  # at an epoch's start, and mid-epoch
@pytest.mark.slow
def test_augmented_training_resumes_exactly(augmented_run, tmp_path, step, spec_augment, train_args):
    from ebranchformer_ru import training

    tmp, trainer = augmented_run
    (tmp_path / "out").mkdir()
    shutil.copytree(tmp / "out" / f"checkpoint-{step}", tmp_path / "out" / f"checkpoint-{step}")
    resumed, _ = training.run(
        train_args(
            tmp_path,
            *AUGMENT,
            *spec_augment,
            "--max_steps",
            "4",
            "--dataloader_num_workers",
            "1",
            "--do_eval",
            "false",
            "--resume_from_checkpoint",
            "last",
        )
    )
    loss = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert [e["loss"] for e in resumed.state.log_history if "loss" in e] == pytest.approx(loss, rel=1e-5)
    final, final_resumed = (
        load_file(tmp / "out" / "model.safetensors"),
        load_file(tmp_path / "out" / "model.safetensors"),
    )
    for name, tensor in final.items():
        torch.testing.assert_close(final_resumed[name], tensor, rtol=0, atol=1e-6)


def test_the_speed_factor_is_counted_in_the_ctc_length_check(tmp_path, train_args):
    """At speed 2 audio is half as long: transcripts that fit only at 1.0 must be filtered out."""
    from ebranchformer_ru import training
    from ebranchformer_ru.golos.selection import column, ctc_target_frames
    from modeling_ebranchformer.ctc import output_frames

    model_args, data_args, *_ = training.parse_args(train_args(tmp_path, "--train_subset_seconds", "0"))
    model, processor = training.load_model_and_processor(model_args)
    plain = training.prepare_train(data_args, processor, model)
    fast = training.prepare_train(data_args, processor, model, fastest=2.0)
    assert 0 < len(fast) < len(plain)
    frames = output_frames(model, processor.feature_extractor, [d / 2 for d in column(fast, "duration")])
    assert all(ctc_target_frames(text) <= n for text, n in zip(column(fast, "text"), frames))


def test_the_train_order_depends_on_seed_and_epoch_only():
    from ebranchformer_ru import training

    lengths = list(np.random.default_rng(0).uniform(1, 10, 100))
    sampler = training.EpochSeededLengthGroupedSampler(8, lengths, seed=3)
    first = list(sampler)
    torch.manual_seed(123)  # the global generator plays no part
    assert list(sampler) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and sorted(second) == sorted(first) == list(range(100))
    again = training.EpochSeededLengthGroupedSampler(8, lengths, seed=3)
    again.set_epoch(1)
    assert list(again) == second


@pytest.mark.slow
def test_each_epoch_draws_anew(tmp_path, monkeypatch, train_args):
    """The callback tells the augmentation which epoch it is in: 2 epochs of 2 steps see epochs 0 and 1."""
    from ebranchformer_ru import training

    seen = []
    augment = AudioAugmentation.augment
    monkeypatch.setattr(
        AudioAugmentation,
        "augment",
        lambda self, samples, key: seen.append((self.epoch, key)) or augment(self, samples, key),
    )
    training.run(train_args(tmp_path, *AUGMENT, "--max_steps", "4", "--do_eval", "false"))  # no workers: seen here
    epochs = [epoch for epoch, _ in seen]
    assert epochs == sorted(epochs) and set(epochs) == {0, 1}
    assert sorted(k for e, k in seen if e == 0) == sorted(k for e, k in seen if e == 1)  # each utterance once a epoch


def test_empty_audio_and_empty_files(tmp_path):
    import soundfile as sf

    aug = only(speed_perturbation=[1.1], noise_probability=1.0, reverb_probability=1.0, volume_perturbation_db=[-6, 6])
    assert aug.augment(np.zeros(0, np.float32), "a").size == 0
    (tmp_path / "rir").mkdir()
    sf.write(tmp_path / "rir" / "empty.wav", np.zeros(0), RATE)
    with pytest.raises(ValueError, match=r"empty.wav: an empty impulse response"):
        only(reverb_probability=1.0, rir_dir=str(tmp_path / "rir"))
    with pytest.raises(ValueError, match=r"--reverb_rt60 takes a range"):
        AugmentationArguments(reverb_rt60=[])
    with pytest.raises(ValueError, match=r"--speed_perturbation takes a list of factors.*got 1.1"):
        AugmentationArguments(speed_perturbation=1.1)  # a YAML scalar


@pytest.mark.slow
def test_a_run_gives_the_same_weights_on_a_loaded_machine(augmented_run, tmp_path, spec_augment, train_args):
    """The augmented run again, while CPU-bound processes run beside it (one per core, numpy spinning): the
    same losses and bit-identical weights. The draws of a DataLoader worker must not depend on timing."""
    import os
    import subprocess
    import sys

    from ebranchformer_ru import training

    tmp, trainer = augmented_run
    hog = "import numpy as np\nx = np.random.rand(300, 300)\nwhile True:\n    x = np.tanh(x @ x)\n"
    hogs = [
        subprocess.Popen([sys.executable, "-c", hog], env={**os.environ, "OMP_NUM_THREADS": "1"})
        for _ in range(os.cpu_count() or 2)
    ]
    try:
        loaded, _ = training.run(
            train_args(
                tmp_path,
                *AUGMENT,
                *spec_augment,
                "--max_steps",
                "4",
                "--dataloader_num_workers",
                "1",
                "--do_eval",
                "false",
            )
        )
    finally:
        for process in hogs:
            process.kill()
            process.wait()
    loss = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert [e["loss"] for e in loaded.state.log_history if "loss" in e] == loss
    final, final_loaded = (
        load_file(tmp / "out" / "model.safetensors"),
        load_file(tmp_path / "out" / "model.safetensors"),
    )
    assert final.keys() == final_loaded.keys()
    for name, tensor in final.items():
        assert torch.equal(final_loaded[name], tensor), name


def test_noise_and_impulse_response_files_with_nan_are_refused_at_start(tmp_path):
    import soundfile as sf

    for name in ("noise", "rir"):
        (tmp_path / name).mkdir()
        samples = np.zeros(RATE, np.float32)
        samples[12345] = np.nan
        sf.write(tmp_path / name / "bad.wav", samples, RATE, subtype="FLOAT")
    with pytest.raises(ValueError, match=r"noise/bad.wav: NaN or infinite samples"):
        only(noise_probability=0.5, noise_dir=str(tmp_path / "noise"))
    with pytest.raises(ValueError, match=r"rir/bad.wav: NaN or infinite samples"):
        only(reverb_probability=0.5, rir_dir=str(tmp_path / "rir"))


def test_a_silent_noise_file_is_refused_at_start(tmp_path):
    import soundfile as sf

    (tmp_path / "noise").mkdir()
    sf.write(tmp_path / "noise" / "silence.wav", np.zeros(RATE, np.float32), RATE)
    with pytest.raises(ValueError, match=r"silence.wav: silent \(every sample is 0\)"):
        only(noise_probability=0.5, noise_dir=str(tmp_path / "noise"))
