"""transcribe.py, evaluate_ctc.py and train_ctc.py on several processes and "nodes" (CPU, gloo): the outputs of
one process, byte for byte; resuming after a kill of one rank or of all with another number of processes."""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from project import CORPUS, ROOT

from ebranchformer_ru import distributed, training, transcription
from ebranchformer_ru.commands import transcribe as command
from ebranchformer_ru.errors import UsageError

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
    assert [p.name for p in transcription.journals(output)] == [
        ".out [1].jsonl.journal.jsonl",
        ".out [1].jsonl.journal.rank2.jsonl",
        ".out [1].jsonl.journal.rank10.jsonl",
    ]
    assert transcription.journal_path(output, 2).name == ".out [1].jsonl.journal.rank2.jsonl"


def test_several_processes_need_an_output_file(tiny_model, monkeypatch, capsys):
    monkeypatch.setattr(distributed, "process_group", contextlib.nullcontext)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    argv = [str(tiny_model), str(CROWD / "test_opus_crowd_0000.opus"), "--no_progress"]
    with pytest.raises(UsageError, match="2 processes need --output"):
        command.transcribe(command.build_parser().parse_args(argv))
    with pytest.raises(SystemExit) as exit:  # a usage error: exit status 2
        command.main(argv)
    assert exit.value.code == 2 and "2 processes need --output" in capsys.readouterr().err


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
    with transcription.locked(tmp / ".locked.jsonl.journal.rank1.jsonl", tmp / "locked.jsonl"):  # rank 1's only
        launched(torchrun(2), jobs_script(tmp, jobs), tmp)
    return tmp


@pytest.mark.parametrize("name", list(TRANSCRIPTIONS))
def test_two_processes_transcribe_as_one(two_processes, inputs, tmp_path, name):
    """torchrun --nproc_per_node 2 transcribe.py: the same bytes and sidecar as one process, the broken file
    reported in the merged summary, with the exit status of a run with a failure, and no journal left."""
    folder, model = inputs
    expected = one_process(model, folder, tmp_path / name, *TRANSCRIPTIONS[name])
    assert (two_processes / name).read_bytes() == expected
    assert len(expected.decode().splitlines()) == 8
    sidecar = json.loads(transcription.sidecar(two_processes / name).read_text())
    assert sidecar == json.loads(transcription.sidecar(tmp_path / name).read_text())
    main, other = report(two_processes, name, 0), report(two_processes, name, 1)
    assert main["world_size"] == 2 and main["status"] == other["status"] == 1
    assert "8 transcribed" in main["stderr"] and "1 failed; 2 processes, merged in" in main["stderr"]
    assert f"failed: {folder / BROKEN}: cannot read audio" in main["stderr"]  # a failure of rank 1
    assert f"error: {folder / BROKEN}: cannot read audio" in other["stderr"]
    assert not [p for p in two_processes.iterdir() if ".journal" in p.name and name in p.name]


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
real, batches = inference.Transcriber.transcribe, []
def dying(self, waveforms):
    batches.append(1)
    if len(batches) > 1 and int(os.environ["RANK"]) in {ranks}:  # after one batch journaled
        if {barrier}:  # every rank has journaled its first batch
            import torch.distributed
            torch.distributed.barrier()
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, waveforms)
inference.Transcriber.transcribe = dying
"""


def journal_files(output) -> dict:
    """{journal name: the paths it holds}, found without the code under test."""
    return {
        path.name: [json.loads(line)["path"] for line in path.read_text().splitlines()[1:]]
        for path in sorted(output.parent.glob(f".{output.name}.journal*.jsonl"))
    }


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
    launched(accelerate, jobs_script(tmp_path, {"resume": ["transcription", argv]}), tmp_path)
    resumed = report(tmp_path, "resume")
    assert resumed["world_size"] == 3 and resumed["status"] == 1  # the broken file
    assert f"{8 - len(journaled)} transcribed" in resumed["stderr"]
    assert f"{len(journaled)} already done, 1 failed; 3 processes" in resumed["stderr"]
    assert output.read_bytes() == one_process(model, folder, tmp_path / "one.jsonl")
    assert not journal_files(output)


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
