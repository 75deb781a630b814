"""Preparation at scale: audio checks in parallel shards, a killed preparation that goes on where it stopped,
cached loads that do not stat every file unless asked, and the train sampler's lengths without decoding."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from project import CORPUS, ROOT

from ebranchformer_ru import golos
from ebranchformer_ru.golos import load_golos
from ebranchformer_ru.golos import prepare as golos_prepare

LINES = 70
SHARD = 10


@pytest.fixture
def big_corpus(tmp_path):
    """A train manifest of LINES lines over hard links to the embedded files, one of them missing."""
    root = tmp_path / "big"
    (root / "train_opus" / "crowd").mkdir(parents=True)
    source = [json.loads(line) for line in (CORPUS / "train_opus" / "manifest.jsonl").read_text().splitlines()]
    lines = []
    for index in range(LINES):
        entry = source[index % len(source)]
        name = f"crowd/{index:04d}.opus"
        if index != 33:
            os.link(CORPUS / "train_opus" / entry["audio_filepath"], root / "train_opus" / name)
        lines.append(json.dumps({**entry, "id": f"u{index}", "audio_filepath": name}, ensure_ascii=False))
    (root / "train_opus" / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def rows(dataset):
    return dataset.data.table.to_pydict() if dataset._indices is None else dataset.to_dict()


KILLER = """
import os, signal, sys
sys.path.insert(0, {root!r})
from ebranchformer_ru import golos
from ebranchformer_ru.golos import prepare as golos_prepare
from ebranchformer_ru.golos.golos import Golos
golos_prepare.SHARD_LINES = {shard}
stage, after = sys.argv[1], int(sys.argv[2])
if stage == "checks":  # killed right after the n-th shard is saved
    verify_shard, done = golos_prepare.verify_shard, []
    def killing(task):
        verify_shard(task)
        done.append(task)
        if len(done) == after:
            os.kill(os.getpid(), signal.SIGKILL)
    golos_prepare.verify_shard = killing
else:  # killed while the Arrow cache is being written, after n examples
    generate = Golos._generate_examples
    def killing(self, **kwargs):
        for number, item in enumerate(generate(self, **kwargs)):
            if number == after:
                os.kill(os.getpid(), signal.SIGKILL)
            yield item
    Golos._generate_examples = killing
golos.load_golos(sys.argv[3], "all", "train", cache_dir=sys.argv[4], num_proc=1, skip_invalid=True, decode="none")
"""


def run_killed(tmp_path, root, cache, stage, after):
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(root=str(ROOT), shard=SHARD))
    result = subprocess.run(
        [sys.executable, str(script), stage, str(after), str(root), str(cache)],
        capture_output=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=False,
    )
    assert result.returncode == -9, result.stderr.decode()[-2000:]


@pytest.mark.parametrize("stage, after", [("checks", 3), ("arrow", 25)])
@pytest.mark.slow
def test_a_killed_preparation_goes_on_from_its_saved_shards(tmp_path, big_corpus, monkeypatch, stage, after):
    monkeypatch.setattr(golos_prepare, "SHARD_LINES", SHARD)
    kwargs = {"skip_invalid": True, "decode": "none", "return_report": True}
    expected, expected_report = load_golos(big_corpus, "all", "train", cache_dir=tmp_path / "whole", **kwargs)
    assert not list((tmp_path / "whole" / "golos_verify").glob("*/*"))  # deleted once the cache is written

    cache = tmp_path / "killed"
    run_killed(tmp_path, big_corpus, cache, stage, after)
    saved = sorted((cache / "golos_verify").glob("*/shard-*.npz"))
    assert len(saved) == (after if stage == "checks" else LINES // SHARD)
    # a shard whose save was cut short is a temporary file, never read
    (saved[0].parent / "shard-00004.npz.tmp-1.npz").write_bytes(b"PK\x03\x04 half a file")

    checked = []
    verify_shard = golos_prepare.verify_shard
    monkeypatch.setattr(golos_prepare, "verify_shard", lambda task: checked.append(task) or verify_shard(task))
    dataset, report = load_golos(big_corpus, "all", "train", cache_dir=cache, num_proc=1, **kwargs)
    assert len(checked) == LINES // SHARD - len(saved)  # only the shards that were not saved
    assert rows(dataset) == rows(expected) and len(dataset) == LINES - 1
    assert report == expected_report and report["skipped_by_reason"] == {"audio file not found": 1}
    assert not list((cache / "golos_verify").glob("*/*"))


def test_several_processes_prepare_the_same_dataset(tmp_path, big_corpus, monkeypatch):
    monkeypatch.setattr(golos_prepare, "SHARD_LINES", SHARD)
    kwargs = {"skip_invalid": True, "decode": "none", "return_report": True}
    one = load_golos(big_corpus, "all", "train", cache_dir=tmp_path / "one", num_proc=1, **kwargs)
    two = load_golos(big_corpus, "all", "train", cache_dir=tmp_path / "two", num_proc=2, **kwargs)
    assert rows(one[0]) == rows(two[0]) and one[1] == two[1]
    streamed = [
        example["id"]
        for example in load_golos(big_corpus, "all", "train", streaming=True, skip_invalid=True, decode="none")
    ]
    assert streamed == one[0]["id"][:]


def test_cached_loads_recheck_the_audio_stamps_only_when_asked(tmp_path, big_corpus, monkeypatch):
    kwargs = {"cache_dir": tmp_path / "c", "skip_invalid": True, "decode": "none"}
    first = load_golos(big_corpus, "all", "train", **kwargs)
    stamps = np.load(next((tmp_path / "c").rglob("golos_stamps_train.npy")))
    assert stamps.shape == (len(first), 2)
    replaced = big_corpus / "train_opus" / first[5]["audio"]["path"]
    os.unlink(replaced)
    crowd = CORPUS / "test_opus" / "crowd"
    other = next(
        json.loads(line)
        for line in (crowd / "manifest.jsonl").read_text().splitlines()
        if abs(json.loads(line)["duration"] - first[5]["duration"]) > 0.2
    )
    os.link(crowd / other["audio_filepath"], replaced)  # a file of another length

    def no_stat(*args):
        raise AssertionError("stat'ed a file")

    monkeypatch.setattr(golos, "_changed_audio", no_stat)
    assert load_golos(big_corpus, "all", "train", recheck_audio=False, **kwargs)["id"][:] == first["id"][:]
    monkeypatch.undo()
    again, report = load_golos(big_corpus, "all", "train", return_report=True, **kwargs)  # prepared again
    assert again["id"][:] == first["id"][:5] + first["id"][6:]
    assert report["skipped_by_reason"] == {"duration differs from the audio": 1, "audio file not found": 1}
    assert not list((tmp_path / "c" / "golos_verify").glob("*/*"))


def test_the_length_grouped_sampler_gets_durations_without_decoding(tmp_path, monkeypatch, tiny_overrides):
    from ebranchformer_ru import training

    def no_decoding(audio):
        raise AssertionError(f"decoded {audio['path']}")

    output = tmp_path / "out"
    model_args, data_args, _, _, training_args = training.parse_args(
        [
            "--output_dir",
            str(output),
            "--config_overrides",
            tiny_overrides,
            "--dataset_cache_dir",
            str(tmp_path / "c"),
            "--do_eval",
            "false",
            "--report_to",
            "none",
            "--per_device_train_batch_size",
            "4",
        ]
    )
    model, processor = training.load_model_and_processor(model_args)
    selected = training.prepare_train(data_args, processor, model)
    trainer = training.CTCTrainer(model=model, args=training_args, train_dataset=golos.decode_with_soundfile(selected))
    monkeypatch.setattr(golos, "_decode", no_decoding)
    sampler = trainer._get_train_sampler()
    assert sampler.lengths == selected["duration"][:]
    order = list(iter(sampler))
    assert sorted(order) == list(range(len(selected)))


@pytest.mark.slow
def test_the_benchmark_runs_on_a_small_folder(tmp_path):
    """benchmarks/golos_scale.py end to end on 300 lines (docs/benchmarks.md quotes its full-size run)."""
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "golos_scale.py"),
            "--root",
            str(tmp_path / "scale"),
            "--lines",
            "300",
            "--output",
            str(tmp_path / "figures.json"),
        ],
        capture_output=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["prepare, verify_audio header"]["rows"] == 300
    assert figures["train selection + grouping"]["selected"] > 250
    assert not (tmp_path / "scale").exists()
