import json
import shutil

import numpy as np
import pytest
import soundfile as sf
from project import CORPUS

from ebranchformer_ru.golos import (
    ManifestError,
    course_filter,
    find_test_sets,
    load_golos,
    normalize_and_check_texts,
    random_subset_by_duration,
)
from modeling_ebranchformer import EBranchformerCTCTokenizer


def manifest_lines(split):
    path = CORPUS / ("train_opus" if split == "train" else f"test_opus/{split}")
    return [json.loads(line) for line in (path / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize(
    "name, split, manifests, domains",
    [
        ("all", "train", ["train"], None),
        ("crowd", "train", ["train"], "crowd"),
        ("farfield", "train", ["train"], "farfield"),
        ("all", "test", ["crowd", "farfield"], None),
        ("crowd", "test", ["crowd"], None),
        ("farfield", "test", ["farfield"], None),
    ],
)
def test_every_configuration_and_split_of_the_embedded_corpus(tmp_path, name, split, manifests, domains):
    dataset, report = load_golos(CORPUS, name, split, cache_dir=tmp_path, decode="none", return_report=True)
    expected = [
        line
        for m in manifests
        for line in manifest_lines(m)
        if domains is None or line["audio_filepath"].startswith(domains)
    ]
    assert dataset.num_rows == len(expected) == report["kept"] and report["skipped"] == 0
    assert dataset["id"] == [line["id"] for line in expected]
    assert dataset["text"] == [line["text"] for line in expected]
    assert np.allclose(dataset["duration"], [line["duration"] for line in expected], atol=1e-3)
    names = dataset.features["domain"].names
    assert {names[d] for d in dataset["domain"]} == ({name} if name != "all" else {"crowd", "farfield"})


def test_the_held_out_voice_is_a_test_set_of_its_own(tmp_path):
    assert find_test_sets(CORPUS) == ["crowd", "farfield", "heldout_voice"]
    dataset = load_golos(CORPUS, "heldout_voice", "test", cache_dir=tmp_path, decode="none")
    lines = manifest_lines("heldout_voice")
    assert dataset["id"] == [line["id"] for line in lines] and dataset["text"] == [line["text"] for line in lines]
    assert set(dataset["domain"]) == {dataset.features["domain"].names.index("crowd")}
    # the corpus's promise: its voices appear nowhere else, and no test sentence is a train sentence
    others = {line["speaker"] for split in ("train", "crowd", "farfield") for line in manifest_lines(split)}
    assert {line["speaker"] for line in lines}.isdisjoint(others)
    train_texts = {line["text"] for line in manifest_lines("train")}
    assert all(
        line["text"] not in train_texts
        for split in ("crowd", "farfield", "heldout_voice")
        for line in manifest_lines(split)
    )


def test_a_test_set_of_ones_own(tmp_path):
    data = tmp_path / "golos"
    (data / "test_opus" / "mine").mkdir(parents=True)
    (data / "test_opus" / "empty_folder").mkdir()
    for reserved in ("all", "train"):  # names that mean something else
        (data / "test_opus" / reserved).mkdir()
        (data / "test_opus" / reserved / "manifest.jsonl").write_text("")
    lines = manifest_lines("crowd")[:3]
    for line in lines:  # absolute paths, and a domain of the line's own
        line.update(audio_filepath=str(CORPUS / "test_opus" / "crowd" / line["audio_filepath"]), domain="farfield")
    (data / "test_opus" / "mine" / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    shutil.copytree(CORPUS / "test_opus" / "farfield", data / "test_opus" / "farfield")
    assert find_test_sets(data) == ["farfield", "mine"]  # Golos's own first, then the others
    mine = load_golos(data, "mine", "test", cache_dir=tmp_path / "cache", decode="none")
    assert mine["id"] == [x["id"] for x in lines] and set(mine["domain"]) == {1}
    with pytest.raises(
        ValueError, match=r"unknown Golos configuration 'theirs'.*the test sets of .* are farfield, mine"
    ):
        load_golos(data, "theirs", "test", cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match=r"unknown Golos configuration 'mine': use 'crowd', 'farfield' or 'all'$"):
        load_golos(data, "mine", "train", cache_dir=tmp_path / "cache")  # train has no other sets


def test_corpus_size_and_durations():
    train, crowd, farfield = (manifest_lines(s) for s in ("train", "crowd", "farfield"))
    assert len(train) >= 150 and sum(x["duration"] for x in train) >= 600
    assert len(crowd) >= 40 and len(farfield) >= 40
    size = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())
    assert size <= 15e6
    alphabet = set(" абвгдежзийклмнопрстуфхцчшщъыьэюя")
    assert all(set(x["text"]) <= alphabet for x in train + crowd + farfield)


def test_decodes_real_opus_without_ffmpeg(tmp_path):
    dataset = load_golos(CORPUS, "farfield", "test", cache_dir=tmp_path)
    example = dataset[0]
    audio = example["audio"]
    assert audio["sampling_rate"] == 16000 and audio["array"].dtype == np.float32
    assert len(audio["array"]) / 16000 == pytest.approx(example["duration"], abs=1e-3)
    assert 0.001 < np.abs(audio["array"]).max() <= 1.0


def test_streaming_gives_the_same_examples(tmp_path):
    prepared = load_golos(CORPUS, "crowd", "test", cache_dir=tmp_path)
    streamed = list(load_golos(CORPUS, "crowd", "test", streaming=True).take(3))
    assert len(streamed) == 3
    for a, b in zip(streamed, prepared.select(range(3))):
        assert a["id"] == b["id"] and np.array_equal(a["audio"]["array"], b["audio"]["array"])


def test_standard_audio_feature_decoding_with_torchcodec(tmp_path):
    pytest.importorskip("torchcodec")
    if shutil.which("ffmpeg") is None:
        pytest.skip("FFmpeg is absent")
    dataset = load_golos(CORPUS, "crowd", "test", cache_dir=tmp_path, decode="datasets")
    samples = dataset[0]["audio"].get_all_samples()
    ours = load_golos(CORPUS, "crowd", "test", cache_dir=tmp_path)[0]["audio"]["array"]
    assert samples.sample_rate == 16000 and samples.data.shape == (1, len(ours))
    assert np.abs(samples.data[0].numpy() - ours).max() < 0.05  # FFmpeg's Opus decoder vs libopus


def test_the_real_golos_recording(tmp_path, golos_example):
    folder = tmp_path / "golos" / "test_opus" / "crowd"
    folder.mkdir(parents=True)
    entry = json.loads((golos_example.parent / "manifest.jsonl").read_text())
    entry["audio_filepath"] = str(golos_example)  # an absolute path works too
    (folder / "manifest.jsonl").write_text(json.dumps(entry, ensure_ascii=False) + "\n")
    dataset = load_golos(tmp_path / "golos", "crowd", "test", cache_dir=tmp_path / "cache")
    example = dataset[0]
    assert example["text"] == "шестьдесят тысяч тенге сколько будет стоить"
    assert example["duration"] == pytest.approx(4.0) and len(example["audio"]["array"]) == 64000


# --- bad data ---------------------------------------------------------------------------------------


@pytest.fixture
def bad_corpus(tmp_path, speech_like):
    """A test manifest with one good line and every kind of bad one."""
    folder = tmp_path / "bad" / "test_opus" / "crowd"
    (folder / "files").mkdir(parents=True)
    sf.write(folder / "files" / "good.opus", speech_like(1.0), 16000, format="OGG", subtype="OPUS")
    sf.write(folder / "files" / "rate.wav", speech_like(1.0)[:8000], 8000)
    (folder / "files" / "broken.opus").write_bytes(b"OggS" + bytes(200))
    good = {"audio_filepath": "files/good.opus", "text": "да", "duration": 1.0}
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({"text": "нет", "duration": 1.0}),
        json.dumps({"audio_filepath": "files/good.opus", "duration": 1.0}),
        json.dumps({"audio_filepath": "files/missing.opus", "text": "нет", "duration": 1.0}),
        json.dumps({"audio_filepath": "files/broken.opus", "text": "нет", "duration": 1.0}),
        json.dumps({"audio_filepath": "files/rate.wav", "text": "нет", "duration": 1.0}),
        '{"audio_filepath": "files/good.opus", "text": "\udcff", "duration": 1.0}',  # byte 0xff: not UTF-8
        json.dumps({**good, "id": "a", "duration": "1.0"}),
        json.dumps({**good, "id": "b", "duration": -1.0}),
        json.dumps({**good, "id": "c", "duration": float("nan")}),
        json.dumps({**good, "id": "d", "text": 5}),
        json.dumps({**good, "id": "e", "text": " \t"}),
        json.dumps({**good, "id": ["f"]}),
        json.dumps({**good, "text": "нет"}),  # the same id as line 1: its file name
        json.dumps({**good, "audio_filepath": "files"}),
    ]
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogateescape")
    return tmp_path / "bad", folder / "manifest.jsonl", lines


def load_all(root, split="test", name="crowd", streaming=False, **kwargs):
    """Prepare, or stream through, a whole split; returns the ids."""
    dataset = load_golos(root, name, split, decode="none", streaming=streaming, **kwargs)
    return [example["id"] for example in dataset]


@pytest.mark.parametrize("streaming", [False, True], ids=["prepared", "streaming"])
@pytest.mark.parametrize(
    "bad_line, message",
    [
        (2, "line 2: not valid JSON"),
        (3, "line 3: missing key 'audio_filepath'"),
        (4, "line 4: missing key 'text'"),
        (5, "line 5: audio file not found: .*missing.opus"),
        (6, "line 6: cannot decode audio file .*broken.opus"),
        (7, "line 7: wrong sampling rate: .*rate.wav is at 8000 Hz, expected 16000"),
        (8, "line 8: not UTF-8 \\(byte 48 is b'\\\\xff'\\): save the manifest as UTF-8"),
        (9, "line 9: 'duration' is not a number: '1.0'"),
        (10, "line 10: 'duration' is not a positive number: -1.0"),
        (11, "line 11: 'duration' is not a positive number: nan"),
        (12, "line 12: 'text' is not a string: 5"),
        (13, "line 13: empty transcript"),
        (14, "line 14: 'id' is not a non-empty string: \\['f'\\]"),
        (15, "line 15: duplicate id 'good', first on .*manifest.jsonl, line 1"),
        (16, "line 16: audio file not found: .*files is a folder"),
    ],
)
def test_each_bad_line_raises_naming_manifest_and_line(bad_corpus, tmp_path, bad_line, message, streaming):
    root, manifest, lines = bad_corpus
    manifest.write_text(lines[0] + "\n" + lines[bad_line - 1] + "\n", encoding="utf-8", errors="surrogateescape")
    # the bad line is now line 2 of the manifest
    with pytest.raises(ManifestError, match=str(manifest) + ", " + message.replace(f"line {bad_line}", "line 2")):
        load_all(root, streaming=streaming, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("streaming", [False, True], ids=["prepared", "streaming"])
def test_skip_invalid_counts_every_skipped_line(bad_corpus, tmp_path, streaming):
    root, _, _ = bad_corpus
    expected = {
        "not valid JSON": 1,
        "missing key 'audio_filepath'": 1,
        "missing key 'text'": 1,
        "audio file not found": 2,
        "cannot decode audio file": 1,
        "wrong sampling rate": 1,
        "not UTF-8": 1,
        "'duration' is not a number": 1,
        "'duration' is not a positive number": 2,
        "'text' is not a string": 1,
        "empty transcript": 1,
        "'id' is not a non-empty string": 1,
        "duplicate id": 1,
    }
    if streaming:  # no report: the skipped lines are counted in the warning after a full pass
        assert load_all(root, streaming=True, skip_invalid=True) == ["good"]
        return
    dataset, report = load_golos(root, "crowd", "test", cache_dir=tmp_path / "c", skip_invalid=True, return_report=True)
    assert dataset.num_rows == 1 and report["kept"] == 1 and report["skipped"] == 15
    assert report["skipped_by_reason"] == expected
    # A cached load gives the same report.
    _, again = load_golos(root, "crowd", "test", cache_dir=tmp_path / "c", skip_invalid=True, return_report=True)
    assert again == report


def test_truncated_audio_is_found_by_full_verification(tmp_path, speech_like):
    folder = tmp_path / "t" / "test_opus" / "crowd"
    folder.mkdir(parents=True)
    sf.write(folder / "a.opus", speech_like(2.0), 16000, format="OGG", subtype="OPUS")
    data = (folder / "a.opus").read_bytes()
    (folder / "a.opus").write_bytes(data[: len(data) // 2] + bytes(100))
    (folder / "manifest.jsonl").write_text(json.dumps({"audio_filepath": "a.opus", "text": "да"}) + "\n")
    with pytest.raises(ManifestError, match="line 1: cannot decode audio file"):
        load_golos(tmp_path / "t", "crowd", "test", cache_dir=tmp_path / "c", verify_audio="full")


@pytest.mark.parametrize("streaming", [False, True], ids=["prepared", "streaming"])
@pytest.mark.parametrize("verify_audio", ["header", "full"])
def test_audio_shorter_than_its_manifest_duration(tmp_path, speech_like, verify_audio, streaming):
    """Half of an Opus file's bytes decode without error to about half of its audio: only the manifest's
    duration tells. Durations rounded as in Golos manifests still pass."""
    folder = tmp_path / "t" / "test_opus" / "crowd"
    folder.mkdir(parents=True)
    for name in ("whole", "cut"):
        sf.write(folder / f"{name}.opus", speech_like(4.0), 16000, format="OGG", subtype="OPUS")
    data = (folder / "cut.opus").read_bytes()
    (folder / "cut.opus").write_bytes(data[: len(data) // 2])
    assert 0 < sf.info(folder / "cut.opus").frames < 3 * 16000  # it decodes, only shorter
    lines = [
        {"audio_filepath": "whole.opus", "text": "да", "duration": 4.04},  # rounded, within tolerance
        {"audio_filepath": "cut.opus", "text": "нет", "duration": 4.0},
    ]
    (folder / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    kwargs = {"verify_audio": verify_audio, "streaming": streaming, "cache_dir": tmp_path / "c"}
    message = r"line 2: duration differs from the audio: the manifest says 4.0 s, .*cut.opus has [0-2]\.\d+ s"
    with pytest.raises(ManifestError, match=message):
        load_all(tmp_path / "t", **kwargs)
    assert load_all(tmp_path / "t", skip_invalid=True, **kwargs) == ["whole"]
    if not streaming:
        _, report = load_golos(tmp_path / "t", "crowd", "test", skip_invalid=True, return_report=True, **kwargs)
        assert report["skipped_by_reason"] == {"duration differs from the audio": 1}


@pytest.mark.parametrize("streaming", [False, True], ids=["prepared", "streaming"])
def test_non_finite_samples_are_named_by_file(tmp_path, speech_like, streaming):
    folder = tmp_path / "n" / "test_opus" / "crowd"
    folder.mkdir(parents=True)
    samples = speech_like(1.0)
    samples[[100, 200]] = np.nan
    sf.write(folder / "nan.wav", samples, 16000, subtype="FLOAT")
    (folder / "manifest.jsonl").write_text(json.dumps({"audio_filepath": "nan.wav", "text": "да"}) + "\n")
    root, kwargs = tmp_path / "n", {"streaming": streaming, "cache_dir": tmp_path / "c"}
    with pytest.raises(ManifestError, match="line 1: non-finite audio samples: .*nan.wav has 2 NaN or infinite"):
        load_all(root, verify_audio="full", **kwargs)
    # The header cannot tell: reading the example names the file.
    dataset = load_golos(root, "crowd", "test", **kwargs)
    with pytest.raises(ValueError, match="nan.wav: 2 non-finite samples"):
        next(iter(dataset))


@pytest.mark.parametrize("streaming", [False, True], ids=["prepared", "streaming"])
def test_train_domain_must_be_known_and_every_split_must_have_examples(tmp_path, speech_like, streaming):
    folder = tmp_path / "d" / "train_opus"
    (folder / "crowd").mkdir(parents=True)
    sf.write(folder / "crowd" / "a.wav", speech_like(1.0), 16000)
    good = {"audio_filepath": "crowd/a.wav", "text": "да"}
    (folder / "manifest.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": "b", "domain": "far"}))
    kwargs = {"split": "train", "streaming": streaming, "cache_dir": tmp_path / "c"}
    with pytest.raises(ManifestError, match="line 2: unknown 'domain': 'far' \\(use 'crowd' or 'farfield'\\)"):
        load_all(tmp_path / "d", **kwargs)
    assert load_all(tmp_path / "d", skip_invalid=True, **kwargs) == ["a"]
    # No farfield line: a clear error instead of datasets' "Instruction 'train' corresponds to no data".
    message = "no examples for Golos 'farfield' train: of the lines, 1 are of other domains and 1 invalid"
    with pytest.raises(ManifestError, match=message):
        load_all(tmp_path / "d", name="farfield", skip_invalid=True, **kwargs)


@pytest.mark.parametrize("streaming", [False, True], ids=["prepared", "streaming"])
def test_missing_or_misplaced_folders_and_manifests(tmp_path, streaming):
    with pytest.raises(FileNotFoundError, match="Golos data folder not found"):
        load_golos(tmp_path / "nowhere", streaming=streaming)
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="file is a file: data_dir is the folder that holds train_opus/"):
        load_golos(tmp_path / "file", streaming=streaming)
    message = f"no Golos manifest for the train set 'all': .*its folder {tmp_path}/train_opus is missing"
    with pytest.raises(FileNotFoundError, match=message):
        load_golos(tmp_path, cache_dir=tmp_path / "c", streaming=streaming)
    # A test set that is asked for and missing is an error, even when the other one is there.
    shutil.copytree(CORPUS / "test_opus" / "crowd", tmp_path / "test_opus" / "crowd")
    for name in ("farfield", "all"):
        message = f"no Golos manifest for the test set '{name}': .*farfield/manifest.jsonl \\(its folder .*farfield is"
        with pytest.raises(FileNotFoundError, match=message):
            load_all(tmp_path, "test", name, streaming=streaming, cache_dir=tmp_path / "c")
    (tmp_path / "test_opus" / "farfield" / "manifest.jsonl").mkdir(parents=True)
    with pytest.raises(IsADirectoryError, match="farfield/manifest.jsonl is a folder: the Golos manifest must be a"):
        load_all(tmp_path, "test", "farfield", streaming=streaming, cache_dir=tmp_path / "c")
    (tmp_path / "test_opus" / "farfield" / "manifest.jsonl").rmdir()
    (tmp_path / "test_opus" / "farfield" / "manifest.jsonl").write_text("\n")
    with pytest.raises(ManifestError, match="farfield/manifest.jsonl: empty manifest"):
        load_all(tmp_path, "test", "farfield", streaming=streaming, skip_invalid=True, cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="unknown Golos configuration 'near'"):
        load_golos(CORPUS, "near", streaming=streaming)


def test_a_replaced_audio_file_is_read_again(tmp_path, speech_like):
    """The cache is keyed on every listed file's size and modification time, not only on the manifests."""
    folder = tmp_path / "r" / "test_opus" / "crowd"
    folder.mkdir(parents=True)
    sf.write(folder / "a.wav", speech_like(1.0), 16000)
    (folder / "manifest.jsonl").write_text(json.dumps({"audio_filepath": "a.wav", "text": "да"}) + "\n")
    assert load_golos(tmp_path / "r", "crowd", "test", cache_dir=tmp_path / "c")[0]["duration"] == 1.0
    sf.write(folder / "a.wav", speech_like(2.0), 16000)
    assert load_golos(tmp_path / "r", "crowd", "test", cache_dir=tmp_path / "c")[0]["duration"] == 2.0


# --- selections -------------------------------------------------------------------------------------


def test_course_filter_reports_what_it_removed(tmp_path):
    train = load_golos(CORPUS, "all", "train", cache_dir=tmp_path, decode="none")
    durations, texts = np.array(train["duration"]), train["text"]
    kept, report = course_filter(train, min_duration=2.5, max_duration=4.0, max_text_length=40)
    short = int((durations < 2.5).sum())
    long = int((durations > 4.0).sum())
    wordy = sum(1 for d, t in zip(durations, texts) if 2.5 <= d <= 4.0 and len(t) > 40)
    assert report.removed == {"shorter than 2.5 s": short, "longer than 4.0 s": long, "text over 40 chars": wordy}
    assert min(short, long, wordy) > 0 and kept.num_rows == report.kept == len(train) - short - long - wordy
    assert all(2.5 <= d <= 4.0 for d in kept["duration"]) and max(map(len, kept["text"])) <= 40
    assert "removed:" in str(report)


def test_random_subset_by_duration_is_reproducible(tmp_path):
    train = load_golos(CORPUS, "all", "train", cache_dir=tmp_path, decode="none")
    a, report = random_subset_by_duration(train, total_seconds=120, seed=3)
    b, _ = random_subset_by_duration(train, total_seconds=120, seed=3)
    c, _ = random_subset_by_duration(train, total_seconds=120, seed=4)
    assert a["id"] == b["id"] and a["id"] != c["id"]
    total = sum(a["duration"])
    assert 120 <= total < 120 + max(train["duration"])
    assert report.kept == a.num_rows and report.removed["not drawn"] == train.num_rows - a.num_rows


def test_texts_outside_the_vocabulary_are_reported_not_dropped_silently(tmp_path, speech_like):
    folder = tmp_path / "v" / "test_opus" / "crowd"
    folder.mkdir(parents=True)
    sf.write(folder / "a.wav", speech_like(1.0), 16000)
    texts = ("Ёлка  зелёная", "в 5 часов", "ok", "да")
    lines = [{"id": str(i), "audio_filepath": "a.wav", "text": t} for i, t in enumerate(texts)]
    (folder / "manifest.jsonl").write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
    dataset = load_golos(tmp_path / "v", "crowd", "test", cache_dir=tmp_path / "c", decode="none")
    checked, report = normalize_and_check_texts(dataset, EBranchformerCTCTokenizer())
    assert checked["text"] == ["елка зеленая", "да"]
    assert report.removed == {"with characters outside the vocabulary": 2}
    assert "'5': 1" in str(report) and "'o': 1" in str(report) and "'k': 1" in str(report)
