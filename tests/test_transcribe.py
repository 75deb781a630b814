"""ebranchformer-transcribe (transcribe.py): folders, manifests, a broken file, resuming, chunking, output formats,
hotwords with --decoder lm, bad arguments and their exit statuses."""

import inspect
import itertools
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from project import CORPUS, ROOT

from ebranchformer_ru import formats, inference, onnx_runtime, resumable, transcription
from ebranchformer_ru.audio import read_audio
from ebranchformer_ru.commands import transcribe as command
from ebranchformer_ru.errors import Error, UsageError

CROWD = CORPUS / "test_opus" / "crowd"
FARFIELD = CORPUS / "test_opus" / "farfield"


def transcribe(argv) -> int:
    """The command's job on parsed options, as `ebranchformer-transcribe ARGV` runs it (errors raised, not exited):
    0, or 1 when a file failed."""
    return command.transcribe(command.build_parser().parse_args(argv))


def refused(argv, usage=False) -> str:
    """The message of the error that the job raises for ARGV: a usage error (exit status 2) or not (1)."""
    with pytest.raises(Error) as caught:
        transcribe(argv)
    assert isinstance(caught.value, UsageError) == usage, caught.value
    return str(caught.value)


def exit_status(argv) -> int:
    """`ebranchformer-transcribe ARGV`'s exit status (a usage error exits through argparse)."""
    try:
        return command.main(argv)
    except SystemExit as exit:
        return exit.code


@pytest.fixture
def inputs(tmp_path):
    """A folder of 4 recordings (one in a subfolder), a broken file, a text file to ignore; a manifest of 3."""
    folder = tmp_path / "recordings"
    (folder / "sub").mkdir(parents=True)
    for i in range(3):
        shutil.copy(CROWD / "files" / f"test_opus_crowd_000{i}.opus", folder)
    shutil.copy(CROWD / "files" / "test_opus_crowd_0003.opus", folder / "sub")
    (folder / "broken.wav").write_bytes(b"RIFF not really a wav file")
    (folder / "notes.txt").write_text("not audio")
    manifest = tmp_path / "manifest.jsonl"
    lines = [json.loads(line) for line in (FARFIELD / "manifest.jsonl").read_text(encoding="utf-8").splitlines()[:3]]
    for line in lines:
        line["audio_filepath"] = str(FARFIELD / line["audio_filepath"])
    manifest.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    return folder, manifest, lines


def records(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def reference_texts(model_dir, paths):
    """What the model's own greedy decoding gives (`generate` + `batch_decode`), file by file."""
    from transformers import AutoModelForCTC, AutoProcessor

    from ebranchformer_ru.audio import read_audio

    model, processor = AutoModelForCTC.from_pretrained(model_dir).eval(), AutoProcessor.from_pretrained(model_dir)
    texts = []
    for path in paths:
        features = processor(audio=read_audio(path), sampling_rate=16000, return_tensors="pt")
        texts.append(processor.batch_decode(model.generate(**features))[0])
    return texts


def test_folder_manifest_and_broken_file(tiny_model, inputs, tmp_path, capsys):
    folder, manifest, lines = inputs
    output = tmp_path / "out.jsonl"
    status = transcribe(
        [
            str(tiny_model),
            str(folder),
            str(manifest),
            "--output",
            str(output),
            "--batch_size",
            "3",
            "--timestamps",
            "--no_progress",
        ]
    )
    err = capsys.readouterr().err
    assert status == 1  # a file failed, the others are done
    assert f"{folder / 'broken.wav'}:" in err and "7 transcribed" in err and "1 failed" in err
    result = records(output)
    paths = [r["path"] for r in result]
    # input order: the folder's files sorted (subfolder included, .txt ignored), then the manifest's
    expected = sorted(str(p) for p in folder.rglob("*.opus")) + [line["audio_filepath"] for line in lines]
    assert paths == expected
    assert [r.get("reference") for r in result[4:]] == [line["text"] for line in lines]
    assert all(abs(r["duration"] - line["duration"]) < 0.01 for r, line in zip(result[4:], lines))
    # the same transcripts as model.generate + processor.batch_decode, file by file (here in batches of 3)
    assert [r["text"] for r in result] == reference_texts(tiny_model, paths)
    for r in result:
        assert "".join(w["word"] for w in r["words"]) == r["text"].replace(" ", "")
        times = [t for w in r["words"] for t in (w["start"], w["end"])]
        assert times == sorted(times) and (not times or times[-1] <= r["duration"] + 0.04)
    assert [p.name for p in tmp_path.glob(".out.jsonl*")] == [".out.jsonl.transcribe.json"]  # no journal left


def test_resume_skips_done_files_and_survives_interruption(tiny_model, inputs, tmp_path, capsys, monkeypatch):
    folder, _manifest, _ = inputs
    (folder / "broken.wav").unlink()
    output = tmp_path / "out.txt"
    args = [str(tiny_model), str(folder), "--output", str(output), "--batch_size", "2", "--no_progress"]
    assert transcribe(args) == 0
    first = output.read_text(encoding="utf-8")
    assert len(first.splitlines()) == 4 and all("\t" in line for line in first.splitlines())

    # A rerun transcribes nothing; with a new file only that one.
    assert transcribe(args) == 0
    assert "0 transcribed" in capsys.readouterr().err and output.read_text(encoding="utf-8") == first
    shutil.copy(CROWD / "files" / "test_opus_crowd_0004.opus", folder)
    assert transcribe(args) == 0
    err = capsys.readouterr().err
    assert "1 transcribed" in err and "4 already done" in err
    second = output.read_text(encoding="utf-8").splitlines()
    assert len(second) == 5 and len({line.split("\t")[0] for line in second}) == 5

    # A run that stops after its first batch leaves the output as it was and a journal to resume from.
    shutil.copy(CROWD / "files" / "test_opus_crowd_0005.opus", folder)
    shutil.copy(CROWD / "files" / "test_opus_crowd_0006.opus", folder)
    shutil.copy(CROWD / "files" / "test_opus_crowd_0007.opus", folder)
    real, calls = inference.TorchBackend.__call__, []

    def stop_on_second_batch(self, waveforms):
        calls.append(len(waveforms))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, waveforms)

    monkeypatch.setattr(inference.TorchBackend, "__call__", stop_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        transcribe(args)
    assert output.read_text(encoding="utf-8").splitlines() == second
    journal = tmp_path / ".out.txt.journal.jsonl"
    header, *done = journal.read_text(encoding="utf-8").splitlines()
    assert len(done) == 2 and resumable.SETTINGS_KEY in json.loads(header)  # what made them, then them
    with open(journal, "a", encoding="utf-8") as file:
        file.write('{"path": "cut off mid-wri')  # the line being written when the process died
    monkeypatch.setattr(inference.TorchBackend, "__call__", real)
    capsys.readouterr()
    assert transcribe(args) == 0
    err = capsys.readouterr().err
    assert "1 transcribed" in err and "7 already done" in err
    final = output.read_text(encoding="utf-8").splitlines()
    assert len(final) == 8 and len({line.split("\t")[0] for line in final}) == 8 and not journal.exists()
    assert final[:5] == second
    # --overwrite starts over
    assert transcribe(args + ["--overwrite"]) == 0
    assert "8 transcribed" in capsys.readouterr().err


def test_subtitles():
    words = [
        {"word": "привет", "start": 0.1, "end": 0.5},
        {"word": "мир", "start": 0.6, "end": 0.9},
        {"word": "после", "start": 3660.0, "end": 3660.4},
        {"word": "паузы", "start": 3660.5, "end": 3661.25},
    ]
    record = {"path": "a.wav", "text": "привет мир после паузы", "words": words}
    assert formats.render([record], ".srt") == (
        "1\n00:00:00,100 --> 00:00:00,900\nпривет мир\n\n2\n01:01:00,000 --> 01:01:01,250\nпосле паузы\n"
    )
    assert formats.render([record], ".vtt") == (
        "WEBVTT\n\n00:00:00.100 --> 00:00:00.900\nпривет мир\n\n01:01:00.000 --> 01:01:01.250\nпосле паузы\n"
    )
    long = [{"word": "слово", "start": i * 0.5, "end": i * 0.5 + 0.4} for i in range(30)]
    cues = formats.subtitle_cues(long)
    assert all(end - start <= 6.0 and len(text) <= 84 for start, end, text in cues) and len(cues) > 2
    assert " ".join(text for *_, text in cues) == " ".join(["слово"] * 30)


def test_subtitle_cues_end_where_phrases_end():
    """Speech over the limits (6 s, 84 characters) with no pause over 0.6 s is cut at the widest gaps between words,
    where phrases end (0.4 s; words 0.05 s apart), not at the word that overflows; no cue passes the limits."""

    def spoken(phrases, word_s):
        words, at = [], 0.0
        for phrase in phrases:
            for word in phrase.split():
                words.append({"word": word, "start": at, "end": at + word_s})
                at += word_s + 0.05
            at += 0.4 - 0.05  # a phrase ends: 0.4 s to the next
        return words

    def phrase_counts(cues, phrases):
        """How many phrases each cue holds; fails where a cue starts or ends inside a phrase."""
        assert " ".join(text for *_, text in cues) == " ".join(phrases)  # every word, in order
        assert all(end - start <= 6.0 and len(text) <= 84 for start, end, text in cues)
        ends, counts = list(itertools.accumulate(len(p.split()) for p in phrases)), []
        for cue_end in itertools.accumulate(len(text.split()) for *_, text in cues):
            assert cue_end in ends, f"a cue ends inside a phrase: {cues}"
            counts.append(ends.index(cue_end) + 1 - sum(counts))
        return counts

    # the time binds: 4-word phrases last 1.35 s, 3 of them 4.85 s with their gaps, 4 would pass 6 s
    phrases = ["раз два три четыре", "пять шесть семь восемь", "девять десять одиннадцать двенадцать"] * 3
    assert phrase_counts(formats.subtitle_cues(spoken(phrases, 0.3)), phrases) == [3, 3, 3]
    # the characters bind: phrases of 20-48 characters, quick words
    phrases = ["переподготовка специалистов", "по распределённым вычислениям", "и машинному обучению"]
    phrases = (phrases + ["в высокопроизводительных вычислительных системах"]) * 3
    assert phrase_counts(formats.subtitle_cues(spoken(phrases, 0.1)), phrases) == [3, 2, 2, 2, 2, 1]
    # phrases of unequal length under the time limit; a lone word over the limits is a cue of its own
    phrases = ["да", "нет ответа пока", "раз два три четыре пять шесть семь", "конечно же", "пусть", "так и будет"]
    words = spoken(phrases, 0.45)
    assert phrase_counts(formats.subtitle_cues(words), phrases) == [2, 3, 1]
    long = (
        words[:1]
        + [{"word": "ааааа", "start": 0.5, "end": 7.0}]
        + [dict(w, start=w["start"] + 6.5, end=w["end"] + 6.5) for w in words[1:3]]
    )
    assert [text for *_, text in formats.subtitle_cues(long)] == ["да", "ааааа", "нет ответа"]


def test_srt_output_of_one_recording(tiny_model, tmp_path):
    output = tmp_path / "talk.srt"
    wav = CROWD / "files" / "test_opus_crowd_0000.opus"
    assert transcribe([str(tiny_model), str(wav), "--output", str(output), "--no_progress"]) == 0
    text = output.read_text(encoding="utf-8")
    blocks = [b for b in text.split("\n\n") if b.strip()]
    assert blocks and all(b.splitlines()[0].isdigit() and " --> " in b.splitlines()[1] for b in blocks)
    # subtitles hold one recording: several are refused before any work
    message = refused([str(tiny_model), str(CROWD / "files"), "--output", str(tmp_path / "x.srt")], usage=True)
    given = len(list((CROWD / "files").glob("*.opus")))
    assert f"a subtitle file holds one recording, and {given} were given" in message


def test_bad_arguments(tiny_model, tmp_path, capsys):
    """Options that contradict each other exit 2 with the usage; a missing or bad input, output or model folder
    exits 1 with one `error:` line that names it."""

    def one_error_line():
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and err.startswith("error: "), err
        return err

    assert exit_status([str(tiny_model), str(tmp_path / "missing.wav")]) == 1
    assert f"{tmp_path / 'missing.wav'}: no such file or folder" in one_error_line()
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text('{"audio_filepath": "a.wav"}\n{"text": "no path"}\n', encoding="utf-8")
    assert exit_status([str(tiny_model), str(manifest)]) == 1
    assert f"{manifest}, line 2: missing key 'audio_filepath'" in one_error_line()
    assert exit_status([str(tiny_model), str(manifest), "--output", "out.csv"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ") and "the extension must be one of .jsonl, .txt, .srt, .vtt" in err
    assert exit_status([str(tiny_model), str(manifest), "--hotwords", "да"]) == 2
    assert "--hotwords and --hotword_weight need --decoder lm" in capsys.readouterr().err
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text("a line that is no record\n", encoding="utf-8")
    wav = CROWD / "files" / "test_opus_crowd_0000.opus"
    assert exit_status([str(tiny_model), str(wav), "--output", str(foreign)]) == 1
    assert f"{foreign} exists, with no record of what made it" in one_error_line()
    assert foreign.read_text(encoding="utf-8") == "a line that is no record\n"  # not overwritten
    assert exit_status([str(tmp_path), str(wav)]) == 1
    assert "neither a model folder" in one_error_line()
    output = tmp_path / "out" / "o.jsonl"
    assert exit_status([str(tmp_path / "nowhere"), str(wav), "--output", str(output), "--no_progress"]) == 1
    assert f"no model folder {tmp_path / 'nowhere'} here" in one_error_line()
    assert list(output.parent.iterdir()) == []  # the journal of a run that transcribed nothing goes too


def test_switches_and_trust_remote_code(tiny_model, monkeypatch, capsys):
    """Switches take Transformers' form (`--x` or `--x true|false`); --trust_remote_code reaches the loading."""
    wav = str(CROWD / "files" / "test_opus_crowd_0000.opus")
    parse = command.build_parser().parse_args
    assert parse([str(tiny_model), wav, "--timestamps"]).timestamps is True
    assert parse([str(tiny_model), wav, "--timestamps", "false", "--overwrite", "yes"]).timestamps is False
    assert parse([str(tiny_model), wav, "--no_progress", "1"]).no_progress is True
    assert parse([str(tiny_model), wav]).trust_remote_code is False
    loads, real = [], transcription.load_backend

    def load(*args, **kwargs):
        loads.append(inspect.signature(real).bind(*args, **kwargs).arguments)
        return real(*args, **kwargs)

    monkeypatch.setattr(transcription, "load_backend", load)
    assert transcribe([str(tiny_model), wav, "--trust_remote_code", "--no_progress"]) == 0
    assert transcribe([str(tiny_model), wav, "--trust_remote_code", "false", "--no_progress"]) == 0
    assert [arguments["trust_remote_code"] for arguments in loads] == [True, False]
    assert capsys.readouterr().out.startswith(f"{wav}\t")


def test_each_unreadable_file_is_named_with_its_reason(tiny_model, tmp_path, capsys):
    import soundfile as sf

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(CROWD / "files" / "test_opus_crowd_0000.opus", folder)
    sf.write(folder / "eight_khz.wav", np.zeros(8000, dtype=np.float32), 8000)
    sf.write(folder / "stereo.wav", np.zeros((16000, 2), dtype=np.float32), 16000)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"audio_filepath": "in/gone.opus", "text": "нет"}\n', encoding="utf-8")
    output = tmp_path / "deep" / "er" / "out.jsonl"  # folders are made
    assert transcribe([str(tiny_model), str(folder), str(manifest), "--output", str(output), "--no_progress"]) == 1
    err = capsys.readouterr().err
    assert f"{folder / 'eight_khz.wav'}: sampling rate 8000 Hz, expected 16000 Hz" in err
    assert f"{folder / 'stereo.wav'}: 2 channels, expected mono" in err
    assert f"{tmp_path / 'in' / 'gone.opus'}: audio file not found" in err
    assert "1 transcribed" in err and "3 failed" in err
    assert [r["path"] for r in records(output)] == [str(folder / "test_opus_crowd_0000.opus")]


def test_a_recording_the_model_fails_on_fails_alone(tiny_model, inputs, tmp_path, capsys, monkeypatch):
    """A batch that raises is retried one recording at a time: only the recording at fault is lost."""
    folder, _, _ = inputs
    (folder / "broken.wav").unlink()
    bad = str(folder / "test_opus_crowd_0001.opus")
    real = inference.TorchBackend.__call__
    bad_length = len(read_audio(bad))

    def refuse_one(self, waveforms):
        if any(len(w) == bad_length for w in waveforms):
            raise ValueError("Input of 9999 encoder steps is longer than max_position_embeddings")
        return real(self, waveforms)

    monkeypatch.setattr(inference.TorchBackend, "__call__", refuse_one)
    output = tmp_path / "out.jsonl"
    assert transcribe([str(tiny_model), str(folder), "--output", str(output), "--no_progress"]) == 1
    err = capsys.readouterr().err
    assert f"{bad}: ValueError: Input of 9999 encoder steps" in err and "3 transcribed" in err and "1 failed" in err
    assert bad not in [r["path"] for r in records(output)] and len(records(output)) == 3
    # stdout when there is no --output
    monkeypatch.setattr(inference.TorchBackend, "__call__", real)
    assert transcribe([str(tiny_model), bad, "--no_progress"]) == 0
    assert capsys.readouterr().out.startswith(f"{bad}\t")


def test_numpy_front_end_matches_the_feature_extractor(speech_like):
    """The torch-free log-mel features of onnx_runtime.py against EBranchformerFeatureExtractor: real and
    synthetic audio, lengths around the reflection limit and the hop."""
    from ebranchformer_ru.audio import read_audio
    from modeling_ebranchformer import EBranchformerFeatureExtractor

    extractor = EBranchformerFeatureExtractor()
    numpy_features = onnx_runtime.LogMelFeatures(**extractor.to_dict())
    waves = [read_audio(p) for p in sorted((CROWD / "files").glob("*.opus"))[:10]] + [speech_like(1.3)]
    waves += [speech_like(1.0)[:n] for n in (1, 150, 200, 201, 320, 16001)]
    for wave in waves:
        expected = extractor(wave, sampling_rate=16000, return_tensors="np")["input_features"][0]
        assert numpy_features(wave).shape == expected.shape
        assert np.abs(numpy_features(wave) - expected).max() < 1e-3  # float32 rounding on near-silent bins
    features, mask = numpy_features.batch(waves[:3])
    assert (
        features.shape[0] == 3
        and mask.dtype == np.int64
        and mask.sum(1).tolist() == [numpy_features.num_frames(len(w)) for w in waves[:3]]
    )


def test_decoder_lm_uses_the_folders_language_model(tiny_model, inputs, tmp_path):
    from transformers import AutoModelForCTC, AutoProcessor

    from ebranchformer_ru import lm_building
    from ebranchformer_ru.audio import read_audio

    folder = tmp_path / "with_lm"
    shutil.copytree(tiny_model, folder)
    args = [str(folder), str(inputs[1]), "--output", str(tmp_path / "lm.jsonl"), "--decoder", "lm", "--no_progress"]
    assert "has no language_model/" in refused(args)  # no language model yet: named, with the command that adds one
    lm_building.build(folder)
    assert transcribe(args + ["--timestamps", "--batch_size", "2"]) == 0
    result = records(tmp_path / "lm.jsonl")
    model, processor = AutoModelForCTC.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)
    expected = []
    for r in result:
        features = processor(audio=read_audio(r["path"]), sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            expected.append(processor.batch_decode(model(**features).logits).text[0])
    assert [r["text"] for r in result] == expected and len(expected) == 3
    greedy = reference_texts(folder, [r["path"] for r in result])
    assert expected != greedy  # the LM changed something: the switch is not a no-op
    for r in result:
        assert [w["word"] for w in r["words"]] == r["text"].split()


# ---- outputs that never lose or mix work


def test_a_second_writer_of_the_same_output_is_refused(tiny_model, tmp_path):
    output = tmp_path / "out.jsonl"
    wav = str(CROWD / "files" / "test_opus_crowd_0000.opus")
    assert transcribe([str(tiny_model), wav, "--output", str(output), "--no_progress"]) == 0
    before = output.read_bytes()
    journal = tmp_path / ".out.jsonl.journal.jsonl"
    with resumable.locked(journal, output):  # another run holds the output (flock: per open file)
        other = str(CROWD / "files" / "test_opus_crowd_0001.opus")
        assert "another transcribe.py is writing" in refused([str(tiny_model), other, "--output", str(output)])
        assert "another transcribe.py is writing" in refused(
            [str(tiny_model), other, "--output", str(output), "--overwrite"]
        )
    assert output.read_bytes() == before


def test_an_input_is_never_the_output(tiny_model, inputs):
    _, manifest, _ = inputs
    before = manifest.read_bytes()
    for extra in ([], ["--overwrite"]):
        message = refused([str(tiny_model), str(manifest), "--output", str(manifest), *extra])
        assert "is one of the inputs; an input is never overwritten" in message
    assert manifest.read_bytes() == before


def test_an_output_made_with_other_settings_is_not_mixed_into(tiny_model, tmp_path, capsys):
    from ebranchformer_ru import lm_building

    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    lm_building.build(folder)
    files = [str(p) for p in sorted((CROWD / "files").glob("*.opus"))[:3]]
    output = tmp_path / "out.jsonl"
    assert transcribe([str(folder), *files[:2], "--output", str(output), "--no_progress"]) == 0
    greedy = output.read_bytes()
    lm = [str(folder), *files, "--output", str(output), "--no_progress", "--decoder", "lm"]
    assert "decoder: 'greedy' then, 'lm' now" in refused(lm) and output.read_bytes() == greedy
    assert not list(tmp_path.glob(".out.jsonl.journal*"))  # a refused run leaves no journal behind
    other_model = tmp_path / "other"
    shutil.copytree(tiny_model, other_model)
    assert "model: " in refused([str(other_model), *files, "--output", str(output)]) and output.read_bytes() == greedy
    assert transcribe(lm + ["--overwrite"]) == 0
    assert "3 transcribed" in capsys.readouterr().err
    assert transcribe(lm) == 0  # the same settings resume: nothing left to do
    err = capsys.readouterr().err
    assert "0 transcribed" in err and "3 already done" in err


def test_names_with_tabs_and_line_breaks(tiny_model, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    odd = folder / "a\tb\nc.opus"
    shutil.copy(CROWD / "files" / "test_opus_crowd_0000.opus", odd)
    message = refused([str(tiny_model), str(folder), "--output", str(tmp_path / "out.txt")], usage=True)
    assert "cannot be written to a .txt output" in message
    output = tmp_path / "out.jsonl"
    for _ in range(3):  # resume reads back exactly what it wrote: one record, not one per run
        assert transcribe([str(tiny_model), str(folder), "--output", str(output), "--no_progress"]) == 0
    assert [r["path"] for r in records(output)] == [str(odd)]
    assert transcribe([str(tiny_model), str(folder), "--no_progress"]) == 0
    assert capsys.readouterr().out.startswith(str(folder / "a\\tb\\nc.opus") + "\t")


def test_subtitles_of_another_recording_are_not_taken_for_done(tiny_model, tmp_path, capsys):
    first, second = (str(CROWD / "files" / f"test_opus_crowd_000{i}.opus") for i in (0, 1))
    output = tmp_path / "talk.srt"
    assert transcribe([str(tiny_model), first, "--output", str(output), "--no_progress"]) == 0
    assert "recording: " in refused([str(tiny_model), second, "--output", str(output), "--no_progress"])
    assert transcribe([str(tiny_model), first, "--output", str(output), "--no_progress"]) == 0
    assert "nothing to do" in capsys.readouterr().err


def test_a_full_disk_at_the_final_write_loses_nothing(tiny_model, tmp_path, capsys, monkeypatch):
    import errno
    import pathlib

    files = [str(p) for p in sorted((CROWD / "files").glob("*.opus"))[:3]]
    output = tmp_path / "out.jsonl"
    args = [str(tiny_model), *files, "--output", str(output), "--no_progress"]
    write_text = pathlib.Path.write_text

    def full(self, text, *a, **k):
        if self.name.startswith(".out.jsonl.tmp"):
            write_text(self, text[: len(text) // 2], *a, **k)
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_text(self, text, *a, **k)

    monkeypatch.setattr(pathlib.Path, "write_text", full)
    assert exit_status(args) == 1
    err = capsys.readouterr().err
    assert "could not write" in err and "No space left on device" in err and "run the same command again" in err
    assert not output.exists() and not list(tmp_path.glob("*.tmp*")) and not list(tmp_path.glob(".*.tmp*"))
    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    assert transcribe(args) == 0
    assert "0 transcribed" in capsys.readouterr().err and [r["path"] for r in records(output)] == files


def test_a_model_with_nan_weights_fails_by_name(tiny_model, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "broken"
    shutil.copytree(tiny_model, folder)
    state = load_file(folder / "model.safetensors")
    name = next(n for n in state if n.endswith("weight") and state[n].dim() == 2)
    state[name][:] = float("nan")
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    wav = str(CROWD / "files" / "test_opus_crowd_0000.opus")
    assert transcribe([str(folder), wav, "--output", str(tmp_path / "o.jsonl"), "--no_progress"]) == 1
    assert "NaN or infinite log-probabilities" in capsys.readouterr().err


def test_a_damaged_language_model_does_not_stop_greedy_transcription(tiny_model, tmp_path):
    from ebranchformer_ru import lm_building

    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    lm_building.build(folder)
    (folder / "language_model" / "attrs.json").write_text("{not json")
    wav = str(CROWD / "files" / "test_opus_crowd_0000.opus")
    assert transcribe([str(folder), wav, "--no_progress"]) == 0
    assert "attrs.json is not valid JSON" in refused([str(folder), wav, "--no_progress", "--decoder", "lm"])


def test_loud_float_audio_is_named_by_file(tiny_model, tmp_path, capsys):
    import soundfile as sf

    loud = tmp_path / "loud.wav"
    sf.write(loud, (np.sin(np.arange(16000) / 5) * 3000).astype(np.float32), 16000, subtype="FLOAT")
    assert transcribe([str(tiny_model), str(loud), "--no_progress"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {loud}: float samples peak at 3000" in err and "item 0" not in err


def test_a_long_file_is_read_a_chunk_at_a_time(tiny_model, tmp_path, monkeypatch):
    """A recording longer than --chunk_length_s is never read whole, and is transcribed exactly as when it is."""
    import soundfile as sf

    from ebranchformer_ru.inference import Transcriber, load_backend

    speech = np.concatenate([read_audio(p) for p in sorted((CROWD / "files").glob("*.opus"))[:12]])  # ~35 s
    long = tmp_path / "long.flac"
    sf.write(long, speech, 16000)
    reads, real = [], sf.read

    def recording(path, *args, start=0, stop=None, **kwargs):
        samples, rate = real(path, *args, start=start, stop=stop, **kwargs)
        reads.append(len(samples))
        return samples, rate

    monkeypatch.setattr(sf, "read", recording)
    output = tmp_path / "out.jsonl"
    args = [
        str(tiny_model),
        str(long),
        "--output",
        str(output),
        "--chunk_length_s",
        "10",
        "--timestamps",
        "--no_progress",
    ]
    assert transcribe(args) == 0
    assert len(reads) >= 4 and max(reads) <= 10 * 16000  # chunk by chunk, each at most --chunk_length_s
    record = records(output)[0]
    whole = Transcriber(load_backend(tiny_model), chunk_length_s=10, timestamps=True).transcribe([read_audio(long)])[0]
    assert record["text"] == whole["text"] and record["words"] == whole["words"]
    assert record["duration"] == round(len(speech) / 16000, 3)


def test_unclear_inputs_get_errors_that_name_the_culprit(tiny_model, tmp_path, capsys):
    wav = str(CROWD / "files" / "test_opus_crowd_0000.opus")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"audio_filepath": "a.wav", "text": "café"}\n'.encode("latin-1"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_model, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    (tmp_path / "afile").write_text("x")
    # a bad value of an option is a usage error (exit 2); a bad file or folder is not (exit 1)
    cases = [
        ([str(tiny_model), str(latin)], 1, f"{latin}, line 1: not UTF-8 (byte 41"),
        ([str(tiny_model), str(empty)], 1, f"{empty}: empty manifest"),
        ([str(tiny_model), wav, "--chunk_length_s", "nan"], 2, "--chunk_length_s: must be a positive number"),
        ([str(tiny_model), wav, "--chunk_length_s", "inf"], 2, "--chunk_length_s: must be a positive number"),
        ([str(tiny_model), wav, "--stride_length_s", "nan"], 2, "--stride_length_s must be in [0, chunk_length_s / 2)"),
        ([str(tmp_path / "nowhere"), wav], 1, f"no model folder {tmp_path / 'nowhere'} here"),
        ([str(truncated), wav], 1, f"{weights} cannot be read"),
        ([str(tiny_model), wav, "--output", str(tmp_path / "afile" / "out.jsonl")], 1, "afile is a file, not a folder"),
    ]
    for argv, status, message in cases:
        assert exit_status([*argv, "--no_progress"]) == status, argv
        assert message in capsys.readouterr().err, message


def test_a_line_cut_off_mid_write_never_hides_later_ones(tiny_model, tmp_path, capsys, monkeypatch):
    """Killed twice: the second run's journaled batch must count, though the first left half a line."""
    files = [str(p) for p in sorted((CROWD / "files").glob("*.opus"))[:6]]
    output = tmp_path / "out.jsonl"
    args = [str(tiny_model), *files, "--output", str(output), "--batch_size", "2", "--no_progress"]
    real, calls = inference.TorchBackend.__call__, []

    def stop_on_second_batch(self, waveforms):
        calls.append(1)
        if len(calls) % 2 == 0:
            raise KeyboardInterrupt
        return real(self, waveforms)

    monkeypatch.setattr(inference.TorchBackend, "__call__", stop_on_second_batch)
    journal = tmp_path / ".out.jsonl.journal.jsonl"
    with pytest.raises(KeyboardInterrupt):
        transcribe(args)
    with open(journal, "a", encoding="utf-8") as file:
        file.write('{"path": "cut off mid-wri')
    with pytest.raises(KeyboardInterrupt):
        transcribe(args)
    lines = journal.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 5 and all(json.loads(line) for line in lines)  # settings + 2 batches of 2, whole lines
    monkeypatch.setattr(inference.TorchBackend, "__call__", real)
    capsys.readouterr()
    assert transcribe(args) == 0
    err = capsys.readouterr().err
    assert "2 transcribed" in err and "4 already done" in err and [r["path"] for r in records(output)] == files


def test_relative_inputs_resume_only_from_the_same_folder(tiny_model, tmp_path, monkeypatch):
    (tmp_path / "a" / "rec").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    shutil.copy(CROWD / "files" / "test_opus_crowd_0000.opus", tmp_path / "a" / "rec")
    output = tmp_path / "out.jsonl"
    monkeypatch.chdir(tmp_path / "a")
    assert transcribe([str(tiny_model), "rec", "--output", str(output), "--no_progress"]) == 0
    monkeypatch.chdir(tmp_path / "b")
    assert "working_directory" in refused([str(tiny_model), str(tmp_path / "a" / "rec"), "--output", str(output)])


@pytest.mark.slow
def test_hotwords_through_transcribe_py(tmp_path, tiny_config):
    """`transcribe.py --decoder lm --hotwords ...` as a user runs it (the script's own process): a hotword the
    acoustics barely allow comes out with a large weight, and not without it; a hotword outside the alphabet
    is refused by name before any work."""
    from ebranchformer_ru.commands import build_lm
    from modeling_ebranchformer import EBranchformerForCTC, EBranchformerProcessor

    torch.manual_seed(0)
    folder = tmp_path / "model"
    EBranchformerForCTC(tiny_config).save_pretrained(folder)  # random weights: every character about as likely
    EBranchformerProcessor().save_pretrained(folder)
    assert build_lm.main([str(folder)]) == 0
    audio = sorted((CORPUS / "test_opus" / "crowd" / "files").glob("*.opus"))[:2]
    shutil.copy(audio[0], tmp_path / "a.opus")

    def transcribe(*extra):
        output = tmp_path / "out.jsonl"
        command = [
            sys.executable,
            str(ROOT / "transcribe.py"),
            str(folder),
            str(tmp_path / "a.opus"),
            "--decoder",
            "lm",
            "--output",
            str(output),
            "--overwrite",
            "--no_progress",
            *extra,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        text = json.loads(output.read_text(encoding="utf-8"))["text"] if result.returncode == 0 else None
        return result, text

    result, plain = transcribe()
    assert result.returncode == 0, result.stderr[-2000:]
    result, boosted = transcribe("--hotwords", "джой", "--hotword_weight", "60")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "джой" in boosted.split() and "джой" not in plain.split()
    # refused with the folder's alphabet and limits: a runtime error, one line, exit 1
    result, _ = transcribe("--hotwords", "joy")
    assert result.returncode == 1 and result.stderr.splitlines()[-1].startswith("error: hotword 'joy' has characters")
    result, _ = transcribe("--hotwords", "джой", "--hotword_weight", "5000")
    assert result.returncode == 1 and "hotword_weight=5000" in result.stderr.splitlines()[-1]


def test_a_share_goes_to_the_transcriber_in_groups_that_complete_as_the_job_goes():
    """One stream over a whole job would finish its long recordings only at the end (their last, shorter chunks
    batched last): nothing journaled, no progress, until then. Groups of at most 600 s (or 8 batches) complete in
    turn; a recording longer than that goes alone."""
    share = [({"path": f"{n}.wav"}, seconds) for n, seconds in enumerate([10, 3600, 250, 250, 250, 5, 700])]
    groups = transcription.groups(share, batch_size=16)
    assert [[d for _, d in g] for g in groups] == [[3600], [700], [250, 250], [250, 10, 5]]
    many = transcription.groups([({"path": str(n)}, 1.0) for n in range(40)], batch_size=2)
    assert [len(g) for g in many] == [16, 16, 8]
