"""transcribe.py, evaluate_ctc.py and train_ctc.py on several processes and "nodes" (CPU, gloo): the outputs of
one process, byte for byte; resuming after a kill of one rank or of all with another number of processes."""

import contextlib
import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass

import pytest
import soundfile as sf
import torch
from project import CORPUS, ROOT

from ebranchformer_ru import distributed, resumable, training, transcription
from ebranchformer_ru.commands import transcribe as command

CROWD = CORPUS / "test_opus" / "crowd" / "files"
BROKEN = "test_opus_crowd_0000_broken.wav"
BIN = os.path.dirname(sys.executable)


# ---- the pieces, in one process


def test_split_by_duration_balances_and_is_deterministic():
    durations = [1.0, 9.0, 2.0, 8.0, 3.0, 7.0, 4.0, 6.0, 5.0, 5.0]
    shares = distributed.split_by_duration(durations, 3)
    assert sorted(i for share in shares for i in share) == list(range(10))  # each item once
    assert all(share == sorted(share) for share in shares)
    loads = [sum(durations[i] for i in share) for share in shares]
    assert max(loads) - min(loads) <= 2.0  # 50 s in 3 shares: 17, 17, 16 (a round-robin split gives 25, 17, 8)
    assert shares == distributed.split_by_duration(list(durations), 3)
    assert distributed.split_by_duration([], 2) == [[], []]
    assert distributed.split_by_duration([5.0], 3) == [[0], [], []]
    assert distributed.split_by_duration([2.0, 2.0, 2.0, 2.0], 2) == [[0, 2], [1, 3]]  # ties: earlier, lower share


def test_context_from_the_launchers_environment(monkeypatch):
    assert distributed.Context.from_env({}) == distributed.Context(0, 1, 0, 1)
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    context = distributed.Context.from_env(env)
    assert (context.rank, context.world_size, context.local_rank, context.local_world_size) == (3, 4, 1, 2)
    assert context.device("cuda") == "cuda:1" and context.device("cpu") == "cpu"
    assert distributed.Context().device("cuda") == "cuda"  # one process: the device as given
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(16)))
    assert context.threads() == 8 and context.threads(3) == 3 and distributed.Context().threads() is None
    with pytest.raises(distributed.DistributedError, match="RANK=4, LOCAL_RANK=0 do not fit WORLD_SIZE=4"):
        distributed.Context.from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(distributed.DistributedError, match="WORLD_SIZE='two' in the environment is not a number"):
        distributed.Context.from_env({"WORLD_SIZE": "two"})


def test_journals_of_every_rank_are_found_rank_0_first(tmp_path):
    output = tmp_path / "out [1].jsonl"  # glob characters in the name
    for name in [
        ".out [1].jsonl.journal.rank10.jsonl",
        ".out [1].jsonl.journal.rank2.jsonl",
        ".out [1].jsonl.journal.jsonl",
        ".out [1].jsonl.journal.rankx.jsonl",
        ".other.journal.rank1.jsonl",
    ]:
        (tmp_path / name).write_text("")
    assert [p.name for p in resumable.journals(output)] == [
        ".out [1].jsonl.journal.jsonl",
        ".out [1].jsonl.journal.rank2.jsonl",
        ".out [1].jsonl.journal.rank10.jsonl",
    ]
    assert resumable.journal_path(output, 2).name == ".out [1].jsonl.journal.rank2.jsonl"


def test_several_processes_need_an_output_file(tiny_model, monkeypatch, capsys):
    """Refused by every process (once they agree that this is their job) as a usage error: exit status 2."""
    monkeypatch.setattr(distributed, "process_group", contextlib.nullcontext)
    here = threading.local()  # each simulated rank's place, as the launcher's environment would give it
    monkeypatch.setattr(distributed.Context, "from_env", classmethod(lambda cls, environ=None: here.context))
    argv = [str(tiny_model), str(CROWD / "test_opus_crowd_0000.opus"), "--no_progress"]
    statuses = {}

    def rank(context, _):
        here.context = context
        try:
            command.main(argv)
        except SystemExit as exit:
            statuses[context.rank] = exit.code

    on_every_rank(rank, [None, None])
    assert statuses == {0: 2, 1: 2} and capsys.readouterr().err.count("error: 2 processes need --output") == 2


# ---- several processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launched(launcher: list[str], script, tmp_path, timeout=300, check=True):
    """`launcher script`, each process with one thread; the completed process (its output checked)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [*launcher, str(script)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=timeout, check=False
    )
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def torchrun(processes: int) -> list[str]:
    return [os.path.join(BIN, "torchrun"), "--nproc_per_node", str(processes), "--master_port", str(free_port())]


def jobs_script(tmp_path, jobs: dict, prelude: str = "") -> "os.PathLike":
    """A script that runs each job {name: [command, argv]} in the launched process (`ebranchformer-transcribe` or
    `ebranchformer-evaluate ARGV`) and writes, per rank, its exit status, its stderr and the world size to
    NAME.rankR.json in tmp_path."""
    script = tmp_path / "jobs.py"
    script.write_text(
        textwrap.dedent(f"""
        import contextlib, io, json, os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from ebranchformer_ru import distributed
        from ebranchformer_ru.commands import evaluate, transcribe
        PRELUDE
        rank = int(os.environ["RANK"])
        for name, (module, argv) in {jobs!r}.items():
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                try:
                    status = {{"transcription": transcribe.main, "evaluation": evaluate.main}}[module](argv)
                except SystemExit as exit:
                    status = exit.code
            report = {{"status": status, "stderr": err.getvalue(), "world_size": int(os.environ["WORLD_SIZE"])}}
            with open(os.path.join({str(tmp_path)!r}, f"{{name}}.rank{{rank}}.json"), "w") as file:
                json.dump(report, file)
    """).replace("PRELUDE", prelude)
    )
    return script


def report(tmp_path, name, rank=0) -> dict:
    return json.loads((tmp_path / f"{name}.rank{rank}.json").read_text())


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model):
    """8 recordings and a broken file in a folder, and a copy of the tiny model with a language model."""
    from ebranchformer_ru import lm_building

    tmp = tmp_path_factory.mktemp("inputs")
    folder = tmp / "recordings"
    folder.mkdir()
    for i in range(8):
        shutil.copy(CROWD / f"test_opus_crowd_000{i}.opus", folder)
    (folder / BROKEN).write_bytes(b"RIFF not really a wav file")  # second in the folder's order: rank 1's to read
    model = tmp / "model"
    shutil.copytree(tiny_model, model)
    lm_building.build(model)
    return folder, model


def one_process(model, folder, output, *extra) -> bytes:
    command.main([str(model), str(folder), "--output", str(output), "--no_progress", "--threads", "1", *extra])
    return output.read_bytes()


TRANSCRIPTIONS = {"greedy.jsonl": ["--timestamps"], "greedy.txt": [], "lm.jsonl": ["--decoder", "lm", "--timestamps"]}


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, inputs):
    """One torchrun launch of 2 processes: the three transcriptions and an evaluation."""
    folder, model = inputs
    tmp = tmp_path_factory.mktemp("two")
    jobs = {
        name: [
            "transcription",
            [str(model), str(folder), "--output", str(tmp / name), "--batch_size", "2", "--no_progress", *extra],
        ]
        for name, extra in TRANSCRIPTIONS.items()
    }
    again = jobs["greedy.txt"][1]
    jobs["again"] = ["transcription", again]  # all done: nothing to do
    jobs["mixed"] = ["transcription", [*jobs["greedy.jsonl"][1], "--decoder", "lm"]]  # refused by every rank
    jobs["locked"] = ["transcription", [str(model), str(folder), "--output", str(tmp / "locked.jsonl")]]
    jobs["progress"] = ["transcription", [str(model), str(folder), "--output", str(tmp / "progress.txt")]]
    jobs["evaluation"] = [
        "evaluation",
        [
            str(model),
            "--max_samples",
            "5",
            "--sets",
            "crowd,farfield",
            "--output_dir",
            str(tmp / "eval"),
            "--batch_size",
            "2",
        ],
    ]
    with resumable.locked(tmp / ".locked.jsonl.journal.rank1.jsonl", tmp / "locked.jsonl"):  # rank 1's only
        launched(torchrun(2), jobs_script(tmp, jobs), tmp)
    return tmp


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TRANSCRIPTIONS))
def test_two_processes_transcribe_as_one(two_processes, inputs, tmp_path, name):
    """torchrun --nproc_per_node 2 transcribe.py: the same bytes and sidecar as one process, the broken file
    reported in the merged summary, with the exit status of a run with a failure, and no journal left."""
    folder, model = inputs
    expected = one_process(model, folder, tmp_path / name, *TRANSCRIPTIONS[name])
    assert (two_processes / name).read_bytes() == expected
    assert len(expected.decode().splitlines()) == 8
    sidecar = json.loads(resumable.sidecar(two_processes / name).read_text())
    assert sidecar == json.loads(resumable.sidecar(tmp_path / name).read_text())
    main, other = report(two_processes, name, 0), report(two_processes, name, 1)
    assert main["world_size"] == 2 and main["status"] == other["status"] == 1
    assert "8 transcribed" in main["stderr"] and "1 failed; 2 processes, merged in" in main["stderr"]
    assert f"failed: {folder / BROKEN}: cannot read audio" in main["stderr"]  # a failure of rank 1
    assert f"error: {folder / BROKEN}: cannot read audio" in other["stderr"]
    assert not [p for p in two_processes.iterdir() if ".journal" in p.name and name in p.name]


@pytest.mark.slow
def test_two_processes_resume_and_refuse_together(two_processes, inputs, tmp_path):
    """A rerun of a finished job does nothing; a rerun into an output made with other settings is refused by
    every process with the same message, the output untouched; a journal that another run holds for rank 1 stops
    rank 0 too (it does not go on alone, or wait for rank 1 forever)."""
    folder, model = inputs
    again = report(two_processes, "again")
    assert again["status"] == 1 and "0 transcribed" in again["stderr"] and "8 already done, 1 failed" in again["stderr"]
    assert (two_processes / "greedy.txt").read_bytes() == one_process(model, folder, tmp_path / "greedy.txt")
    for rank in (0, 1):  # a fault of the output, not of the options: exit status 1, one `error:` line
        mixed = report(two_processes, "mixed", rank)
        assert mixed["status"] == 1 and "error: " in mixed["stderr"]
        assert "decoder: 'greedy' then, 'lm' now" in mixed["stderr"]
    for rank in (0, 1):
        locked = report(two_processes, "locked", rank)
        assert locked["status"] == 1 and "another transcribe.py is writing" in locked["stderr"]
    assert not (two_processes / "locked.jsonl").exists()
    expected = one_process(model, folder, tmp_path / "greedy.jsonl", "--timestamps")
    assert (two_processes / "greedy.jsonl").read_bytes() == expected


@pytest.mark.slow
def test_one_progress_bar_counts_the_work_of_every_process(two_processes, inputs):
    """Rank 0 shows one bar for the whole job, whatever share of it is rank 0's; the other ranks none."""
    folder, _ = inputs
    assert_one_bar_counts(
        report(two_processes, "progress")["stderr"], [path for path in sorted(folder.iterdir()) if path.name != BROKEN]
    )
    assert "h audio" not in report(two_processes, "progress", 1)["stderr"]


@pytest.mark.slow
def test_two_processes_evaluate_as_one(two_processes, inputs, tmp_path):
    """torchrun --nproc_per_node 2 evaluate_ctc.py: the sets split between the ranks, one set of result files,
    equal to one process's (greedy and LM hypotheses of every utterance)."""
    from ebranchformer_ru.commands import evaluate

    _, model = inputs
    assert (
        evaluate.main(
            [
                str(model),
                "--max_samples",
                "5",
                "--sets",
                "crowd,farfield",
                "--output_dir",
                str(tmp_path),
                "--batch_size",
                "2",
            ]
        )
        == 0
    )
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["results.json", "results.md", "utterances_crowd.jsonl", "utterances_farfield.jsonl"]
    assert sorted(p.name for p in (two_processes / "eval").iterdir()) == files
    for name in files:
        assert (two_processes / "eval" / name).read_bytes() == (tmp_path / name).read_bytes(), name
    lines = [json.loads(x) for x in (tmp_path / "utterances_crowd.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and len({x["hypothesis"] for x in lines}) == 5 and "lm_hypothesis" in lines[0]
    assert report(two_processes, "evaluation", 1)["status"] == 0


KILL = """
import signal
from ebranchformer_ru import inference
real, batches = inference.TorchBackend.__call__, []
def dying(self, waveforms):
    batches.append(1)
    if len(batches) > 1 and int(os.environ["RANK"]) in {ranks}:  # after one batch journaled
        if {barrier}:  # every rank has journaled its first batch
            import torch.distributed
            torch.distributed.barrier()
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, waveforms)
inference.TorchBackend.__call__ = dying
"""


def journal_files(output) -> dict:
    """{journal name: the paths it holds}, found without the code under test."""
    return {
        path.name: [json.loads(line)["path"] for line in path.read_text().splitlines()[1:]]
        for path in sorted(output.parent.glob(f".{output.name}.journal*.jsonl"))
    }


@pytest.mark.slow
def test_resume_after_one_rank_is_killed_with_accelerate_and_3_processes(inputs, tmp_path):
    """Rank 1 of 2 is killed after its first batch (torchrun then stops rank 0): the output is not written, the
    journals hold what was finished; `accelerate launch --num_processes 3` finishes the job without redoing
    any of it, and the output is one process's."""
    folder, model = inputs
    output = tmp_path / "out.jsonl"
    argv = [str(model), str(folder), "--output", str(output), "--batch_size", "2", "--no_progress"]
    prelude = KILL.format(ranks={1}, barrier=False)
    result = launched(
        torchrun(2), jobs_script(tmp_path, {"run": ["transcription", argv]}, prelude), tmp_path, check=False
    )
    assert result.returncode != 0 and not output.exists()
    journals = journal_files(output)
    assert list(journals) == [".out.jsonl.journal.jsonl", ".out.jsonl.journal.rank1.jsonl"]
    assert len(journals[".out.jsonl.journal.rank1.jsonl"]) == 2  # its first batch, then killed
    journaled = [path for paths in journals.values() for path in paths]
    assert 2 <= len(journaled) < 8 and len(set(journaled)) == len(journaled)
    accelerate = [
        os.path.join(BIN, "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "3",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
    ]
    resume = [arg for arg in argv if arg != "--no_progress"]  # and its progress bar
    launched(accelerate, jobs_script(tmp_path, {"resume": ["transcription", resume]}), tmp_path)
    resumed = report(tmp_path, "resume")
    assert resumed["world_size"] == 3 and resumed["status"] == 1  # the broken file
    assert f"{8 - len(journaled)} transcribed" in resumed["stderr"]
    assert f"{len(journaled)} already done, 1 failed; 3 processes" in resumed["stderr"]
    assert output.read_bytes() == one_process(model, folder, tmp_path / "one.jsonl")
    assert not journal_files(output)
    todo = [path for path in sorted(folder.iterdir()) if path.name != BROKEN and str(path) not in journaled]
    assert_one_bar_counts(resumed["stderr"], todo)
    assert "h audio" not in report(tmp_path, "resume", 1)["stderr"] + report(tmp_path, "resume", 2)["stderr"]


BAR = re.compile(r"(\d+)%\|[^|]*\| ([\d.]+)/([\d.]+) h audio \[[^\]]*\], files (\d+)/(\d+)")


def assert_one_bar_counts(stderr, files):
    """Rank 0's progress bar counts the whole job (`files`, all processes' work), once: never past its total (no
    TqdmWarning), and at its total in the end."""
    seconds = [sf.info(path).frames / sf.info(path).samplerate for path in files]
    total = f"{sum(round(1000 * s) for s in seconds) / 3_600_000:.3f}"
    states = BAR.findall(stderr)
    assert states and "TqdmWarning" not in stderr, stderr[-3000:]
    for percent, done, shown_total, done_files, count in states:
        assert int(percent) <= 100 and float(done) <= float(shown_total) and int(done_files) <= int(count), states
        assert shown_total == total and int(count) == len(files), (states, total, len(files))
    assert states[-1] == ("100", total, total, str(len(files)), str(len(files))), states


@pytest.mark.slow
def test_resume_after_all_ranks_are_killed_with_one_process(inputs, tmp_path, capsys):
    """All 3 ranks killed after their first batch; one process then finishes from the three journals."""
    folder, model = inputs
    output = tmp_path / "out.txt"
    argv = [str(model), str(folder), "--output", str(output), "--batch_size", "1", "--no_progress"]
    prelude = KILL.format(ranks={0, 1, 2}, barrier=True)
    result = launched(
        torchrun(3), jobs_script(tmp_path, {"run": ["transcription", argv]}, prelude), tmp_path, check=False
    )
    assert result.returncode != 0 and not output.exists()
    journals = journal_files(output)
    assert list(journals) == [".out.txt.journal.jsonl", ".out.txt.journal.rank1.jsonl", ".out.txt.journal.rank2.jsonl"]
    assert [len(paths) for paths in journals.values()] == [1, 1, 1]  # one file each
    capsys.readouterr()
    assert command.main([*argv, "--threads", "1"]) == 1
    err = capsys.readouterr().err
    assert "5 transcribed" in err and "3 already done, 1 failed" in err
    assert output.read_bytes() == one_process(model, folder, tmp_path / "one.txt")
    assert not journal_files(output)


# ---- two "nodes"


@pytest.mark.slow
def test_two_nodes_train_and_transcribe(inputs, tmp_path, train_args):
    """Two torchrun launchers of one process each, meeting at a c10d rendezvous on localhost, as two machines
    would: training is one DDP job of world size 2 (identical weights on both nodes, its evaluation equal to one
    process's evaluation of the saved model), and transcription gives one process's output."""
    from safetensors.torch import load_file

    folder, model = inputs
    output = tmp_path / "out.jsonl"
    script = tmp_path / "node.py"
    script.write_text(
        textwrap.dedent(f"""
        import json, os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from ebranchformer_ru import training
        from ebranchformer_ru.commands import transcribe
        from safetensors.torch import save_file

        rank = int(os.environ["RANK"])
        trainer, metrics = training.run({train_args(tmp_path, "--max_steps", "3", "--max_eval_samples", "5", "--per_device_eval_batch_size", "1")!r})
        state = {{k: v.contiguous() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}}
        save_file(state, {str(tmp_path)!r} + f"/rank{{rank}}.safetensors")
        status = transcribe.main([{str(model)!r}, {str(folder)!r}, "--output", {str(output)!r}, "--no_progress"])
        report = {{"world_size": trainer.args.world_size, "parallel_mode": trainer.args.parallel_mode.value,
                   "steps": trainer.state.global_step, "metrics": metrics, "status": status,
                   "environment_world_size": int(os.environ["WORLD_SIZE"])}}
        json.dump(report, open({str(tmp_path)!r} + f"/rank{{rank}}.json", "w"))
    """)
    )
    port = free_port()
    node = [
        os.path.join(BIN, "torchrun"),
        "--nnodes",
        "2",
        "--nproc_per_node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"localhost:{port}",
        "--rdzv-id",
        "two-nodes",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    launchers = [
        subprocess.Popen(
            [*node, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path
        )
        for _ in range(2)
    ]
    logs = [launcher.communicate(timeout=400)[0] for launcher in launchers]
    assert [launcher.returncode for launcher in launchers] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for report in reports:
        assert report["world_size"] == report["environment_world_size"] == 2
        assert report["parallel_mode"] == "distributed" and report["steps"] == 3
        assert report["status"] == 1  # the broken file, on both nodes
    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert rank0.keys() == rank1.keys() and all(
        torch.equal(rank0[k], rank1[k]) for k in rank0
    )  # gradients all-reduced across nodes
    metrics = reports[0]["metrics"]
    # the 2-node evaluation at the end of training = one process's evaluation of the saved model, by the Trainer
    _, alone = training.run(
        [
            "--model_name_or_path",
            str(tmp_path / "out"),
            "--do_train",
            "false",
            "--max_eval_samples",
            "5",
            "--per_device_eval_batch_size",
            "1",
            "--report_to",
            "none",
            "--output_dir",
            str(tmp_path / "alone"),
            "--dataset_cache_dir",
            str(tmp_path / "cache"),
            "--dataloader_num_workers",
            "0",
            "--disable_tqdm",
            "true",
        ]
    )
    for name in ("crowd", "farfield", "heldout_voice"):
        assert metrics[f"eval_{name}_utterances"] == alone[f"eval_{name}_utterances"] == 5
        assert metrics[f"eval_{name}_wer"] == alone[f"eval_{name}_wer"]
        assert metrics[f"eval_{name}_cer"] == alone[f"eval_{name}_cer"]
    assert output.read_bytes() == one_process(model, folder, tmp_path / "one.jsonl")


# ---- the processes agree on the job before any writes


class Board:
    """What `all_gather` exchanges between ranks simulated by threads of this process (pickled as gloo would)."""

    def __init__(self, world_size):
        self.barrier, self.slots = threading.Barrier(world_size, timeout=30), [None] * world_size

    def exchange(self, rank, value):
        self.slots[rank] = pickle.dumps(value)
        self.barrier.wait()
        values = [pickle.loads(slot) for slot in self.slots]
        self.barrier.wait()  # all have read before the next exchange
        return values


@dataclass(frozen=True)
class ThreadRank(distributed.Context):
    board: Board = None

    def all_gather(self, value) -> list:
        return self.board.exchange(self.rank, value)


def on_every_rank(step, per_rank: list) -> list:
    """`step(context, value)` on one thread per rank; what each rank raised (its message), or None."""
    board, said = Board(len(per_rank)), [None] * len(per_rank)

    def rank(number):
        try:
            step(ThreadRank(number, len(per_rank), board=board), per_rank[number])
        except (distributed.Error, OSError) as error:
            said[number] = f"{type(error).__name__}: {error}"

    threads = [threading.Thread(target=rank, args=(number,)) for number in range(len(per_rank))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return said


def agreement(*descriptions) -> list:
    return on_every_rank(lambda context, described: distributed.agree(context, lambda: described), list(descriptions))


def test_the_processes_agree_or_all_refuse_naming_each_difference():
    same = {"model": {"model.safetensors": "sha256:ab", "config.json": "sha256:cd"}, "--timestamps": False}
    assert agreement(same, dict(same), dict(same)) == [None, None, None]
    other = {"model": {"model.safetensors": "sha256:ef", "config.json": "sha256:cd"}, "--timestamps": True}
    said = agreement(same, other, same)
    assert said[0] == said[1] == said[2]  # one message, on every rank
    assert said[0].startswith("DistributedError: the 3 processes were started on different jobs, and none of them")
    # in a mapping, the key that differs (not config.json); the ranks that hold each value
    assert 'model model.safetensors: ranks 0, 2 "sha256:ab", rank 1 "sha256:ef"' in said[0]
    assert "config.json" not in said[0] and "--timestamps: ranks 0, 2 false, rank 1 true" in said[0]
    # a short list whole, a long one by its lengths and first item that differs; a key one rank lacks; long text cut
    inputs = [["a.wav", [10, 1]], ["b.wav", [20, 2]], ["c.wav", [30, 3]]]
    long = "/a/folder/with/a/name/" + "long" * 40 + "/and/its/end"
    said = agreement({"inputs": inputs}, {"inputs": [inputs[0], inputs[2]], "working folder": long})
    assert said[0] == said[1]
    assert (
        'inputs: rank 0 [["a.wav", [10, 1]], ["b.wav", [20, 2]], ["c.wav", [30, 3]]], rank 1 [["a.wav", [10, 1]], '
        in (said[0])
    )  # a short list: whole
    shown = said[0].split("working folder: rank 0 not set, rank 1 ")[1].split(". Start every process")[0]
    assert shown.startswith('"/a/folder/with/') and shown.endswith('long/and/its/end"')
    assert "…" in shown and len(shown) == distributed.SHOWN_TEXT + 2
    options = {f"--option_{n:02d}": n for n in range(20)}  # another preset: the first differences, then a count
    said = agreement(options, {name: value + 100 for name, value in options.items()})
    assert "--option_11: rank 0 11, rank 1 111; and 8 more differences. Start every" in said[0]
    inputs = [[f"{n}.wav", [n, n]] for n in range(100)]  # a long list: its lengths and the first item that differs
    said = agreement({"inputs": inputs}, {"inputs": inputs[:50] + [["other.wav", [0, 0]]]})
    assert (
        'inputs: rank 0 100 items, rank 1 51 items; item 51: rank 0 ["50.wav", [50, 50]], rank 1 ["other.wav", [0, 0]]'
        in (said[0])
    )


def test_an_error_of_one_process_stops_all_of_them_by_its_rank():
    def step(context, problem):
        def work():
            if problem == "unreadable":
                raise PermissionError(13, "Permission denied", "x.jsonl")
            if problem:
                raise transcription.Error(problem)
            return context.rank

        return distributed.together(context, work)

    assert on_every_rank(step, [None, None]) == [None, None]
    assert on_every_rank(step, [None, "x.wav: no such file"]) == ["Error: rank 1: x.wav: no such file"] * 2
    assert on_every_rank(step, ["locked", "locked"]) == ["Error: locked"] * 2  # the same on all: no rank named
    said = on_every_rank(step, [None, "unreadable"])  # what a command reports in one line: an OSError too
    assert said == ["PermissionError: rank 1: [Errno 13] Permission denied: 'x.jsonl'"] * 2

    def describe(context, problem):  # an error while describing the job: the same
        def description():
            if problem:
                raise transcription.Error(problem)
            return {"--timestamps": False}

        distributed.agree(context, description)

    assert on_every_rank(describe, [None, "m: not a model folder"]) == ["Error: rank 1: m: not a model folder"] * 2


def test_a_model_is_known_by_its_files_contents_wherever_it_lies(tiny_model, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    (copy / "README.md").write_text("a model card of its own")  # not what makes the outputs
    (copy / "training_args.bin").write_bytes(b"another run's")
    assert distributed.model_digest(copy) == distributed.model_digest(tiny_model)
    assert {"model.safetensors", "config.json", "vocab.json"} <= set(distributed.model_digest(tiny_model))
    with open(copy / "model.safetensors", "r+b") as file:  # one byte of the weights
        file.seek(-1, os.SEEK_END)
        last = file.read(1)
        file.seek(-1, os.SEEK_END)
        file.write(bytes([last[0] ^ 1]))
    changed = distributed.model_digest(copy)
    assert [name for name in changed if changed[name] != distributed.model_digest(tiny_model)[name]] == [
        "model.safetensors"
    ]
    assert distributed.model_digest("someone/a-model") == {"Hub id": "someone/a-model"}


NODE = """
import contextlib, io, json, os, sys
sys.path.insert(0, ROOT)
from ebranchformer_ru.commands import evaluate, train, transcribe
rank = int(os.environ["RANK"])
for name, per_rank in json.loads(open(JOBS).read()).items():
    command, argv, folder = per_rank[rank]
    os.chdir(folder)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = {"transcription": transcribe.main, "evaluation": evaluate.main, "training": train.main}[command](argv)
        except SystemExit as exit:
            status = exit.code
    with open(os.path.join(REPORTS, f"{name}.rank{rank}.json"), "w") as file:
        json.dump({"status": status, "stderr": err.getvalue()}, file)
"""


def nodes(tmp_path, jobs: dict, world_size: int = 2, timeout: int = 400) -> dict:
    """`world_size` processes started by hand, as launchers on as many machines would start them (RANK,
    WORLD_SIZE, MASTER_ADDR and MASTER_PORT on loopback; one process per "machine"), each running the jobs
    {name: [(command, argv, working folder) of each rank]} one after another; {name: [{"status", "stderr"} of each
    rank]}."""
    reports = tmp_path / "reports"
    reports.mkdir()
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    script = tmp_path / "node.py"
    script.write_text(
        NODE.replace("ROOT", repr(str(ROOT)))
        .replace("JOBS", repr(str(tmp_path / "jobs.json")))
        .replace("REPORTS", repr(str(reports)))
    )
    port = free_port()
    processes = []
    for rank in range(world_size):
        env = dict(
            os.environ,
            RANK=str(rank),
            WORLD_SIZE=str(world_size),
            LOCAL_RANK="0",
            LOCAL_WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
            HF_HUB_OFFLINE="1",
        )
        processes.append(
            subprocess.Popen(
                [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
            )
        )
    try:
        logs = [process.communicate(timeout=timeout)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
    assert [p.returncode for p in processes] == [0] * world_size, "\n".join(log[-3000:] for log in logs)
    return {
        name: [json.loads((reports / f"{name}.rank{r}.json").read_text()) for r in range(world_size)] for name in jobs
    }


@pytest.fixture(scope="module")
def another_model(tmp_path_factory, tiny_config_values):
    """A tiny model of the same configuration with other weights (seed 1)."""
    from modeling_ebranchformer import EBranchformerConfig, EBranchformerForCTC, EBranchformerProcessor

    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("another_model")
    EBranchformerForCTC(EBranchformerConfig(**tiny_config_values)).eval().save_pretrained(folder)
    EBranchformerProcessor().save_pretrained(folder)
    return folder


# What one rank is started with differently, and what the message names: refused by every rank.
DIFFERENT = {
    "model": 'model model.safetensors: rank 0 "sha256:',
    "decoder": '--decoder: rank 0 "greedy", rank 1 "lm"; language model: rank 0 not set, rank 1 {"language_model/',
    "hotwords": '--hotwords: rank 0 ["москва"], rank 1 ["казань"]',
    "timestamps": "--timestamps: rank 0 false, rank 1 true",
    "working_folder": "working folder: rank 0 ",
    "inputs": 'inputs: rank 0 9 items, rank 1 2 items; item 2: rank 0 ["recordings/test_opus_crowd_0000_broken.wav", [26, ',
    "evaluation_model": 'model model.safetensors: rank 0 "sha256:',
    "sets": '--sets: rank 0 ["crowd"], rank 1 ["crowd", "farfield"]; manifests test_opus/farfield/manifest.jsonl: '
    'rank 0 not set, rank 1 "sha256:',
    "samples": "--max_samples: rank 0 3, rank 1 4",
    "training": "--learning_rate: rank 0 0.001, rank 1 0.002",
}


@pytest.fixture(scope="module")
def disagreeing(tmp_path_factory, inputs, another_model, train_args):
    """Two "machines" started on jobs that differ on rank 1 (`DIFFERENT`), and on one that only takes another copy
    of the same model there; each job's output in tmp/out/NAME."""
    folder, model = inputs
    tmp = tmp_path_factory.mktemp("disagreeing")
    here = str(folder.parent)  # holds recordings/: the inputs are named relative to it
    elsewhere = tmp / "elsewhere"  # recordings/ there: files of the same names, other recordings
    (elsewhere / "recordings").mkdir(parents=True)
    for path in sorted(folder.iterdir()):
        farfield = CORPUS / "test_opus" / "farfield" / "files" / path.name.replace("crowd", "farfield")
        shutil.copy(farfield if farfield.exists() else path, elsewhere / "recordings" / path.name)
    copy = tmp / "copy_of_the_model"
    shutil.copytree(model, copy)

    def transcription(name, *extra, model=model):
        output = tmp / "out" / name / "out.jsonl"
        return ["transcription", [str(model), "recordings", "--output", str(output), "--no_progress", *extra], here]

    def evaluation(name, *extra, model=model):
        argv = [str(model), "--sets", "crowd", "--max_samples", "3", "--output_dir", str(tmp / "out" / name), *extra]
        return ["evaluation", argv, here]

    lm = ["--decoder", "lm"]
    one = ["recordings/test_opus_crowd_0000.opus", "recordings/test_opus_crowd_0001.opus"]
    jobs = {
        "model": [transcription("model"), transcription("model", model=another_model)],
        "copy": [transcription("copy", "--batch_size", "2"), transcription("copy", "--batch_size", "2", model=copy)],
        "decoder": [transcription("decoder"), transcription("decoder", *lm)],
        "hotwords": [
            transcription("hotwords", *lm, "--hotwords", "москва"),
            transcription("hotwords", *lm, "--hotwords", "казань"),
        ],
        "timestamps": [transcription("timestamps"), transcription("timestamps", "--timestamps")],
        "working_folder": [transcription("working_folder"), transcription("working_folder")[:2] + [str(elsewhere)]],
        "inputs": [
            transcription("inputs"),
            ["transcription", [str(model), *one, *transcription("inputs")[1][2:]], here],
        ],
        "evaluation_model": [evaluation("evaluation_model"), evaluation("evaluation_model", model=another_model)],
        "sets": [evaluation("sets"), evaluation("sets", "--sets", "crowd,farfield")],
        "samples": [evaluation("samples"), evaluation("samples", "--max_samples", "4")],
    }
    training = train_args(tmp / "out" / "training", "--max_steps", "1")
    jobs["training"] = [["training", training, here], ["training", [*training, "--learning_rate", "0.002"], here]]
    return tmp, nodes(tmp, jobs)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DIFFERENT))
def test_processes_started_on_different_jobs_all_refuse_and_write_nothing(disagreeing, name):
    """Two machines (processes started by hand) on one job, with one thing different on rank 1: another model,
    another decoder, other hotwords, timestamps on one only, another working folder under the same relative
    names, another input list; an evaluation of another model, other sets or another sample count; training with
    other options. Both processes refuse, exit status 1, with one `error:` line that names the difference and
    the ranks; nothing is written."""
    tmp, reports = disagreeing
    said = []
    for report in reports[name]:
        errors = [line for line in report["stderr"].splitlines() if line.startswith("error:")]
        assert report["status"] == 1 and len(errors) == 1, report["stderr"][-3000:]
        assert errors[0].startswith("error: the 2 processes were started on different jobs, and none of them writes")
        assert DIFFERENT[name] in errors[0], errors[0]
        assert "Traceback" not in report["stderr"]
        said.append(errors[0])
    assert said[0] == said[1]  # the same message on every rank
    assert not (tmp / "out" / name).exists()  # no output, journal, results or training folder, not even its folder


@pytest.mark.slow
def test_another_copy_of_the_same_model_is_the_same_job(disagreeing, inputs, tmp_path, monkeypatch):
    """Rank 1 reads another copy of the model (another folder, the same files): the job runs, and its output and
    sidecar are one process's."""
    tmp, reports = disagreeing
    folder, model = inputs
    assert [report["status"] for report in reports["copy"]] == [1, 1]  # the broken file
    assert "8 transcribed" in reports["copy"][0]["stderr"]
    monkeypatch.chdir(folder.parent)
    expected = one_process(model, "recordings", tmp_path / "out.jsonl", "--batch_size", "2")
    assert (tmp / "out" / "copy" / "out.jsonl").read_bytes() == expected
    assert resumable.sidecar(tmp / "out" / "copy" / "out.jsonl").read_text() == (
        resumable.sidecar(tmp_path / "out.jsonl").read_text()
    )
