"""Publishing to the Hub, end to end, against a local server that speaks the Hub's HTTP API (tests/hub_server.py):
the real huggingface_hub client publishes (Trainer runs, push_to_hub.py, convert/average/build_lm) and a fresh
process without this package loads the repo with trust_remote_code and transcribes as the local folder does."""

import base64
import gzip
import json
import os
import pickle
import re
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import soundfile as sf
import torch
from hub_server import HubServer, Repo
from project import CORPUS, ROOT, SHARED_EXAMPLE

from ebranchformer_ru import publishing
from ebranchformer_ru.commands import push
from ebranchformer_ru.publishing import PublishError, check_publishable, publishable_files

TOKENS = {"hf_alice_0123456789secret": "alice", "hf_bob_0123456789secret": "bob"}
ALICE, BOB = list(TOKENS)


@pytest.fixture
def hub():
    with HubServer(TOKENS) as server:
        yield server


def hub_env(hub_url, tmp_path, token=ALICE):
    """A process that talks to `hub_url` with an empty Hugging Face cache and `token`."""
    home = tmp_path / "hf_home"
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub_url, HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1")
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env["TMPDIR"] = str(tmp_path / "tmp")  # the private copies of a publication, and what a killed one leaves
    if token:
        env["HF_TOKEN"] = token
    return env


def script(name, *args, env, cwd=ROOT):
    return subprocess.run(
        [sys.executable, str(ROOT / name), *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True
    )


def a_recording(tmp_path) -> Path:
    """A real Golos recording where ../shared is here, else a recording of the embedded corpus."""
    if SHARED_EXAMPLE.is_dir():
        return next(SHARED_EXAMPLE.glob("*.wav"))
    return next((CORPUS / "test_opus" / "crowd").rglob("*.opus"))


@pytest.fixture
def here(hub, monkeypatch, tmp_path):
    """This process talks to `hub` with alice's token (no token file): push_to_hub's `main` runs here, each case in
    a fraction of a second, where a process of its own spends seconds importing."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_token_file"))
    monkeypatch.setenv("HF_TOKEN", ALICE)
    return hub


def push_here(capsys, folder, repo, *options):
    """push_to_hub.py's exit status, stdout and stderr, run in this process."""
    capsys.readouterr()
    try:
        status = push.main([str(folder), "--hub_model_id", repo, *map(str, options)])
    except SystemExit as exit:  # argparse's usage errors
        status = exit.code
    out, err = capsys.readouterr()
    return status, out, err


def assert_no_machine_path(files: dict, *places):
    for name, content in files.items():
        for place in places:
            assert str(place).encode() not in content, f"{name} names {place}"


# ------------------------------------------------------------------------------------------ training


@pytest.mark.slow  # starts the command's process or trains
def test_a_training_run_publishes_the_model_folder_card_and_no_private_state(hub, tmp_path, train_args):
    env = hub_env(hub.url, tmp_path)
    args = train_args(
        tmp_path,
        "--max_steps",
        "2",
        "--save_strategy",
        "steps",
        "--save_steps",
        "1",
        "--push_to_hub",
        "true",
        "--hub_model_id",
        "alice/run",
    )
    args[args.index("--eval_strategy") + 1] = "steps"
    result = script("train_ctc.py", *args, "--eval_steps", "2", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert ALICE not in result.stdout + result.stderr  # never a token in a log line
    files = hub.files("alice/run")
    assert {
        "model.safetensors",
        "config.json",
        "modeling.py",
        "configuration.py",
        "ctc.py",
        "processing.py",
        "feature_extraction.py",
        "tokenization.py",
        "text.py",
        "vocab.json",
        "processor_config.json",
        "README.md",
        "all_results.json",
    } <= set(files)
    # Checkpoints (optimizer states) and the pickled training arguments stay here: the default hub strategy.
    assert not [name for name in files if name.startswith("checkpoint-") or name.endswith(".pt")]
    assert "training_args.bin" not in files and (tmp_path / "out" / "training_args.bin").exists()
    assert_no_machine_path(files, tmp_path, ROOT, Path.home())
    # One commit per save (the model folder of each checkpoint, loadable on its own) and one at the end.
    commits = [path for method, path, _ in hub.requests if method == "POST" and "/commit/" in path]
    assert len(commits) == 3

    from huggingface_hub import ModelCard

    card = ModelCard(files["README.md"].decode())
    results = {(r.dataset_config, r.metric_type): r for r in card.data.eval_results}
    metrics = json.loads(files["all_results.json"])
    for name in ("crowd", "farfield", "heldout_voice"):
        assert results[(name, "wer")].metric_value == pytest.approx(metrics[f"eval_{name}_wer"], abs=1e-4)
        assert results[(name, "cer")].metric_value == pytest.approx(metrics[f"eval_{name}_cer"], abs=1e-4)
        # The data is named for what it is, with the test set and the part of it that was evaluated.
        assert (
            results[(name, "wer")].dataset_name == f"the embedded synthetic corpus (not Golos): test set {name}, "
            "6 of its 60 utterances"
        )
    assert "Golos (" not in card.content and "golos" not in (card.data.tags or [])
    assert 'model="alice/run"' in card.text


@pytest.mark.slow  # starts the command's process or trains
def test_hub_strategy_checkpoint_publishes_the_last_checkpoint_with_its_optimizer_state(hub, tmp_path, train_args):
    env = hub_env(hub.url, tmp_path)
    args = train_args(
        tmp_path,
        "--max_steps",
        "2",
        "--save_strategy",
        "steps",
        "--save_steps",
        "1",
        "--push_to_hub",
        "true",
        "--hub_model_id",
        "alice/resumable",
        "--hub_strategy",
        "checkpoint",
        "--do_eval",
        "false",
    )
    result = script("train_ctc.py", *args, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    files = hub.files("alice/resumable")
    assert {
        "last-checkpoint/optimizer.pt",
        "last-checkpoint/model.safetensors",
        "last-checkpoint/trainer_state.json",
        "model.safetensors",
    } <= set(files)
    assert json.loads(files["last-checkpoint/trainer_state.json"])["global_step"] == 2
    assert not [name for name in files if name.endswith("training_args.bin")]


@pytest.mark.slow  # starts the command's process or trains
def test_a_repo_that_cannot_be_written_stops_training_before_it_starts(hub, tmp_path, train_args):
    hub.repos["alice/taken"] = Repo("alice", private=False)  # bob may not write to it
    result = script(
        "train_ctc.py",
        *train_args(tmp_path, "--max_steps", "2", "--push_to_hub", "true", "--hub_model_id", "alice/taken"),
        env=hub_env(hub.url, tmp_path, BOB),
    )
    assert result.returncode == 1
    assert "the token's user bob may not write to alice/taken" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "out" / "model.safetensors").exists()  # it stopped before training
    # Nothing was trained: the message does not call the output folder complete, nor tell how to publish it.
    assert "is complete here" not in result.stderr and "push_to_hub.py" not in result.stderr
    assert BOB not in result.stdout + result.stderr


# ------------------------------------------------------------------------------------------ loading elsewhere

LOAD = textwrap.dedent(
    """
    import json, sys
    sys.modules["modeling_ebranchformer"] = None  # this package is not installed here
    sys.modules["ebranchformer_ru"] = None
    import soundfile as sf, torch
    from transformers import AutoModelForCTC, AutoProcessor, pipeline

    repo, path = sys.argv[1], sys.argv[2]
    audio, rate = sf.read(path, dtype="float32")
    model = AutoModelForCTC.from_pretrained(repo, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(repo, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    inputs = processor(audio=audio, sampling_rate=rate, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    asr = pipeline("automatic-speech-recognition", model=repo, trust_remote_code=True)
    print(json.dumps({"processor": type(processor).__name__, "lm": processor.batch_decode(logits.numpy()).text[0],
                      "greedy": processor.tokenizer.batch_decode(logits.argmax(-1))[0],
                      "pipeline": asr({"raw": audio, "sampling_rate": rate})["text"]}))
    """
)


def local_transcripts(folder, path):
    from transformers import AutoModelForCTC, AutoProcessor, pipeline

    audio, rate = sf.read(path, dtype="float32")
    model = AutoModelForCTC.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    with torch.no_grad():
        logits = model(**processor(audio=audio, sampling_rate=rate, return_tensors="pt")).logits
    asr = pipeline("automatic-speech-recognition", model=str(folder))
    return {
        "processor": type(processor).__name__,
        "lm": processor.batch_decode(logits.numpy()).text[0],
        "greedy": processor.tokenizer.batch_decode(logits.argmax(-1))[0],
        "pipeline": asr({"raw": audio, "sampling_rate": rate})["text"],
    }


@pytest.mark.slow
def test_a_published_folder_with_its_lm_loads_and_transcribes_elsewhere_as_here(hub, tmp_path, tiny_model):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    env = hub_env(hub.url, tmp_path)
    published = script("push_to_hub.py", folder, "--hub_model_id", "alice/tiny", env=env)
    assert published.returncode == 0, published.stderr
    # build_lm.py adds a language model to a published folder and publishes it again.
    built = script("build_lm.py", folder, "--push_to_hub", "--hub_model_id", "alice/tiny", env=env)
    assert built.returncode == 0, built.stderr
    # evaluate_ctc.py's figures (greedy and with the LM) go into the card, and the card to the repo.
    evaluated = script("evaluate_ctc.py", folder, "--max_samples", "3", "--update_model_card", env=env)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert script("push_to_hub.py", folder, "--hub_model_id", "alice/tiny", env=env).returncode == 0
    files = hub.files("alice/tiny")
    assert "language_model/lm.arpa" in files and "language_model/attrs.json" in files and "alphabet.json" in files
    assert not [name for name in files if name.startswith("eval/")] and (folder / "eval" / "results.json").exists()

    from huggingface_hub import ModelCard

    measured = json.loads((folder / "eval" / "results.json").read_text())["results"]
    card = ModelCard(files["README.md"].decode())
    published = {(r.dataset_config, r.metric_name): r for r in card.data.eval_results}
    assert len(published) == 4 * len(measured) == 12
    for row in measured:
        for metric in ("wer", "cer"):
            assert published[(row["set"], metric.upper())].metric_value == round(row[metric], 4)
            assert published[(row["set"], f"{metric.upper()} (3-gram LM)")].metric_value == round(
                row[f"lm_{metric}"], 4
            )
        assert published[(row["set"], "WER")].dataset_name == (
            f"the embedded synthetic corpus (not Golos): test set {row['set']}, 3 of its 60 utterances"
        )
    recording = a_recording(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "load.py").write_text(LOAD)
    loaded = subprocess.run(
        [sys.executable, "load.py", "alice/tiny", str(recording)],
        env=hub_env(hub.url, tmp_path),
        cwd=elsewhere,
        capture_output=True,
        text=True,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    got = json.loads(loaded.stdout.strip().splitlines()[-1])
    expected = local_transcripts(folder, recording)
    assert got == expected and got["processor"] == "EBranchformerProcessorWithLM" and got["greedy"]


@pytest.mark.slow
def test_the_model_cards_snippet_runs_as_written_against_the_published_repo(hub, tmp_path, tiny_model):
    from ebranchformer_ru.model_card import write_model_card

    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    write_model_card(folder, "A tiny model.")
    env = hub_env(hub.url, tmp_path, token=None)
    env["HF_TOKEN"] = ALICE
    assert script("push_to_hub.py", folder, "--hub_model_id", "alice/snippet", env=env).returncode == 0
    card = hub.files("alice/snippet")["README.md"].decode()
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert 'model="alice/snippet"' in snippet
    here = tmp_path / "reader"
    here.mkdir()
    shutil.copy(next((CORPUS / "test_opus" / "crowd").rglob("*.opus")), here / "speech.opus")
    (here / "snippet.py").write_text(snippet + "\nprint(repr(" + snippet.strip().splitlines()[-1] + "['text']))\n")
    env.pop("HF_TOKEN")  # a reader of a public repo needs no token
    ran = subprocess.run([sys.executable, "snippet.py"], env=env, cwd=here, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr[-3000:]
    from transformers import pipeline

    audio, rate = sf.read(here / "speech.opus", dtype="float32")
    expected = pipeline("automatic-speech-recognition", model=str(folder))({"raw": audio, "sampling_rate": rate})
    assert ran.stdout.strip().splitlines()[-1] == repr(expected["text"])


# ------------------------------------------------------------------------------------------ other commands


@pytest.mark.slow
def test_converted_and_averaged_folders_are_published(hub, tmp_path, trained):
    from course_modules import CourseCTCModel, CourseDecoder, CourseQuartzNetEncoder, lightning_checkpoint

    env = hub_env(hub.url, tmp_path)
    torch.manual_seed(0)
    course = CourseCTCModel(CourseQuartzNetEncoder(bias=True, nested=True), CourseDecoder(1024)).eval()
    torch.save(lightning_checkpoint(course), tmp_path / "q.ckpt")
    converted = script(
        "convert_checkpoint.py",
        tmp_path / "q.ckpt",
        "--output_dir",
        tmp_path / "converted",
        "--push_to_hub",
        "--hub_model_id",
        "alice/quartznet",
        env=env,
    )
    assert converted.returncode == 0, converted.stderr[-2000:]
    local = {p.name: p.read_bytes() for p in (tmp_path / "converted").iterdir() if p.is_file()}
    assert hub.files("alice/quartznet") == local
    run_dir = tmp_path / "run"
    shutil.copytree(trained[0] / "out", run_dir)
    averaged = script(
        "average_checkpoints.py",
        run_dir,
        "--last",
        "2",
        "--output_dir",
        tmp_path / "average",
        "--push_to_hub",
        "--hub_model_id",
        "alice/average",
        "--hub_private_repo",
        env=env,
    )
    assert averaged.returncode == 0, averaged.stderr[-2000:]
    files = hub.files("alice/average")
    assert files["model.safetensors"] == (tmp_path / "average" / "model.safetensors").read_bytes()
    assert json.loads(files["averaging.json"])["checkpoints"] == ["checkpoint-4", "checkpoint-8"]
    assert hub.repos["alice/average"].private
    assert_no_machine_path(files, tmp_path, ROOT)


# ------------------------------------------------------------------------------------------ what goes wrong


@pytest.mark.slow  # starts the command's process or trains
def test_another_users_repo_is_refused_and_says_how_to_publish_later(hub, tmp_path, tiny_model):
    assert (
        script("push_to_hub.py", tiny_model, "--hub_model_id", "alice/mine", env=hub_env(hub.url, tmp_path)).returncode
        == 0
    )
    before = dict(hub.files("alice/mine"))
    for repo in ("alice/mine", "carol/new"):  # an existing repo of another user, another user's namespace
        result = script("push_to_hub.py", tiny_model, "--hub_model_id", repo, env=hub_env(hub.url, tmp_path, token=BOB))
        assert result.returncode == 1
        assert f"the token's user bob may not write to {repo}" in result.stderr, result.stderr
        assert f"python push_to_hub.py {tiny_model} --hub_model_id {repo}" in result.stderr
        assert "Traceback" not in result.stderr and BOB not in result.stderr
    assert hub.files("alice/mine") == before and "carol/new" not in hub.repos


@pytest.mark.slow  # starts the command's process or trains
def test_an_unreachable_hub_keeps_the_folder_and_says_how_to_publish_later(tmp_path, tiny_model):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    result = script("push_to_hub.py", folder, "--hub_model_id", "alice/x", env=hub_env("http://127.0.0.1:9", tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "cannot reach the Hub at http://127.0.0.1:9" in result.stderr
    later = f"publish it later with `python push_to_hub.py {folder} --hub_model_id alice/x`"
    assert f"{folder} is complete here; {later}" in result.stderr
    # The repo is required, and the folder must be there: usage (exit 2), then one line (exit 1).
    result = script("push_to_hub.py", folder, env=hub_env("http://127.0.0.1:9", tmp_path))
    assert result.returncode == 2 and "the following arguments are required: --hub_model_id" in result.stderr
    result = script(
        "push_to_hub.py", tmp_path / "nowhere", "--hub_model_id", "alice/x", env=hub_env("http://127.0.0.1:9", tmp_path)
    )
    assert result.returncode == 1 and result.stderr.startswith(f"error: model folder not found: {tmp_path / 'nowhere'}")
    assert len(result.stderr.splitlines()) == 1
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


@pytest.mark.slow
def test_an_upload_cut_off_midway_leaves_the_repo_as_it_was_and_a_rerun_completes_it(hub, tmp_path, tiny_model):
    env = hub_env(hub.url, tmp_path)
    expected = {p.name: p.read_bytes() for p in Path(tiny_model).iterdir()}
    hub.cut_commits = 1  # a connection that breaks once: the client sends the commit again
    retried = script("push_to_hub.py", tiny_model, "--hub_model_id", "alice/retried", env=env)
    assert retried.returncode == 0 and "Retrying" in retried.stderr, retried.stderr[-2000:]
    assert hub.files("alice/retried") == expected
    hub.hold_commits = True  # the publishing process dies while its commit is on the way
    cut = subprocess.Popen(
        [sys.executable, str(ROOT / "push_to_hub.py"), str(tiny_model), "--hub_model_id", "alice/cut"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert hub.commit_arrived.wait(120)
    cut.kill()
    cut.wait()
    hub.hold_commits = False
    hub.release_commits.set()
    assert hub.files("alice/cut") == {}  # the repo was made; no file of a half commit
    again = script("push_to_hub.py", tiny_model, "--hub_model_id", "alice/cut", env=env)
    assert again.returncode == 0, again.stderr
    assert hub.files("alice/cut") == expected


@pytest.mark.slow
def test_private_repos_and_branches(hub, tmp_path, tiny_model):
    env = hub_env(hub.url, tmp_path)
    result = script(
        "push_to_hub.py",
        tiny_model,
        "--hub_model_id",
        "alice/secret",
        "--hub_private_repo",
        "--hub_revision",
        "dev",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert hub.repos["alice/secret"].private
    assert hub.files("alice/secret", "main") == {} and "model.safetensors" in hub.files("alice/secret", "dev")
    code = (
        "import sys; sys.modules['modeling_ebranchformer'] = None\n"
        "from transformers import AutoConfig\n"
        "print(AutoConfig.from_pretrained('alice/secret', revision='dev', trust_remote_code=True).hidden_size)"
    )
    owner = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert owner.stdout.strip() == "32", owner.stderr[-2000:]
    anonymous = subprocess.run(
        [sys.executable, "-c", code],
        env=hub_env(hub.url, tmp_path / "x", token=None),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert anonymous.returncode != 0 and "alice/secret" in anonymous.stderr


def test_a_folder_naming_a_path_of_this_machine_or_holding_the_token_is_not_published(tmp_path, tiny_model):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    check_publishable(folder, ALICE)
    (folder / "README.md").write_text(f"Trained from {tmp_path / 'data'}\n")
    with pytest.raises(PublishError, match="README.md names a path of this machine"):
        check_publishable(folder, ALICE)
    (folder / "README.md").write_text(f"token {ALICE}\n")
    with pytest.raises(PublishError, match="README.md holds the Hugging Face token"):
        check_publishable(folder, ALICE)
    (folder / "README.md").unlink()
    for name in ("training_args.bin", "checkpoint-4/optimizer.pt", "eval/results.json", ".NAME.transcribe.json"):
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text(str(tmp_path))  # never sent, so never checked
    assert publishable_files(folder) == sorted(p.name for p in Path(tiny_model).iterdir())
    check_publishable(folder, ALICE)
    (folder / "config.json").unlink()
    with pytest.raises(PublishError, match="not a model folder"):
        check_publishable(folder)


# ------------------------------------------------------------------------------------------ what is refused

KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA (a fake key of the tests)\n"


def fake_key(tmp_path) -> Path:
    key = tmp_path / "home" / ".ssh" / "id_rsa"
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_text(KEY)
    key.chmod(0o600)
    return key


def escaped(text, every=1):
    """`text` with every `every`-th character written as JSON's \\uXXXX."""
    return "".join(f"\\u{ord(c):04x}" if i % every == 0 else c for i, c in enumerate(text))


def training_args_pickle(path):
    from transformers import TrainingArguments

    torch.save(TrainingArguments(output_dir=str(path.parent / "run"), hub_token=ALICE, report_to=[]), path)


def a_zip(path, name, text):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, text)


def safetensors_with(path, metadata=None, tensor_bytes=b""):
    from safetensors.torch import save_file

    tensors = {"w": torch.zeros(4)}
    if tensor_bytes:
        tensors["bytes"] = torch.frombuffer(bytearray(tensor_bytes), dtype=torch.uint8)
    save_file(tensors, path, metadata=metadata)


# name: (what the folder gets, the file named in the error, why). Each published the file on the code before.
REFUSED = {
    "a link to a key": (lambda f, t: (f / "notes.txt").symlink_to(fake_key(t)), "notes.txt", "is a symbolic link"),
    "a link named as the key": (lambda f, t: (f / "id_rsa").symlink_to(fake_key(t)), "id_rsa", "is a symbolic link"),
    "a link to the environment": (
        lambda f, t: (f / "environment.txt").symlink_to("/proc/self/environ"),
        "environment.txt",
        "is a symbolic link",
    ),
    "a link in a subfolder": (
        lambda f, t: ((f / "language_model").mkdir(), (f / "language_model" / "lm.arpa").symlink_to(fake_key(t))),
        "language_model/lm.arpa",
        "is a symbolic link",
    ),
    "a named pipe": (lambda f, t: os.mkfifo(f / "stream.txt"), "stream.txt", "is a named pipe (FIFO)"),
    "the token in a .bin": (
        lambda f, t: (f / "credentials.bin").write_text(ALICE),
        "credentials.bin",
        "token (as text)",
    ),
    "the token in a .pt": (lambda f, t: (f / "env.pt").write_text(f"HF_TOKEN={ALICE}"), "env.pt", "token (as text)"),
    "pickled TrainingArguments": (lambda f, t: training_args_pickle(f / "args.pt"), "args.pt", "token (as text)"),
    "a torch.save pickle": (
        lambda f, t: torch.save({"w": torch.zeros(2)}, f / "pytorch_model.bin"),
        "pytorch_model.bin",
        "is a pickle (torch.save's zip archive)",
    ),
    "a raw pickle": (lambda f, t: (f / "stats.pth").write_bytes(pickle.dumps({"n": 1}, 4)), "stats.pth", "is a pickle"),
    "UTF-16 as PowerShell writes it": (
        lambda f, t: (f / "token.txt").write_bytes(f"\ufeffHF_TOKEN={ALICE}\r\n".encode("utf-16-le")),
        "token.txt",
        "token (as UTF-16 little-endian text)",
    ),
    "UTF-16 big-endian": (
        lambda f, t: (f / "token.txt").write_bytes(f"token {ALICE}".encode("utf-16-be")),
        "token.txt",
        "token (as UTF-16 big-endian text)",
    ),
    "JSON \\u escapes": (
        lambda f, t: (f / "secrets.json").write_text(json.dumps({"hub_token": "@"}).replace("@", escaped(ALICE))),
        "secrets.json",
        "token (\\u-escaped)",
    ),
    "some characters \\u-escaped": (
        lambda f, t: (f / "notes.txt").write_text(escaped(ALICE, every=3)),
        "notes.txt",
        "token (\\u-escaped)",
    ),
    "base64": (
        lambda f, t: (f / "auth.txt").write_bytes(base64.b64encode(f"Authorization: Bearer {ALICE}".encode())),
        "auth.txt",
        "token (in base64)",
    ),
    "a gzip file": (
        lambda f, t: (f / "log.gz").write_bytes(gzip.compress(f"token {ALICE}\n".encode() * 50)),
        "log.gz",
        "once decompressed (gzip)",
    ),
    "a deflated zip member": (lambda f, t: a_zip(f / "logs.zip", "log.txt", ALICE * 20), "logs.zip", "in its member"),
    "safetensors metadata": (
        lambda f, t: safetensors_with(f / "extra.safetensors", metadata={"note": ALICE}),
        "extra.safetensors",
        "token",
    ),
    "safetensors tensor bytes": (
        lambda f, t: safetensors_with(f / "extra.safetensors", tensor_bytes=ALICE.encode()),
        "extra.safetensors",
        "token (as text)",
    ),
    "a JSON-escaped path": (
        lambda f, t: (f / "paths.json").write_text(json.dumps({"data": str(f.parent)}).replace("/", "\\/")),
        "paths.json",
        "names a path of this machine",
    ),
    "a file:// URL": (
        lambda f, t: (f / "README.md").write_text(f"Trained from [data]({(f.parent / 'data').as_uri()})\n"),
        "README.md",
        "as a file:// URL",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_folder_with_a_file_that_must_not_go_up_is_refused_and_the_repo_stays_empty(
    case, here, tmp_path, tiny_model, capsys
):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    make, name, why = REFUSED[case]
    make(folder, tmp_path)
    status, out, err = push_here(capsys, folder, "alice/refused")
    assert status == 1, err
    assert err.startswith(f"error: {folder / name} ") and len(err.splitlines()) == 1, err
    assert why in err and "nothing published" in err, err
    assert ALICE not in out + err and "PRIVATE KEY" not in out + err
    assert "alice/refused" not in here.repos  # refused before the repo was made
    assert stat.S_IMODE(os.stat(fake_key(tmp_path)).st_mode) == 0o600


def test_a_file_of_the_kernels_filesystems_is_refused(tmp_path):
    """/proc/self/environ says it is empty and holds the environment, the token in it (only a mount puts such a
    file inside a folder, so the reader is tried on /proc itself)."""
    reader = publishing.Reader(Path("/proc/self"), publishing.Needles(ALICE, []), [], False, ())
    with pytest.raises(PublishError, match=r"^/proc/self/environ is a file of a kernel filesystem"):
        reader("environ", tmp_path / "copy")
    assert not (tmp_path / "copy").exists()


def test_links_inside_the_folder_are_followed_only_when_asked(here, tmp_path, tiny_model, capsys):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    (folder / "docs").mkdir()
    (folder / "docs" / "notes.md").write_text("notes\n")
    (folder / "notes.md").symlink_to("docs/notes.md")
    status, _, err = push_here(capsys, folder, "alice/linked")
    assert status == 1 and f"{folder / 'notes.md'} is a symbolic link (to docs/notes.md)" in err
    assert "--hub_follow_symlinks" in err and "alice/linked" not in here.repos
    status, _, err = push_here(capsys, folder, "alice/linked", "--hub_follow_symlinks")
    assert status == 0, err
    assert here.files("alice/linked")["notes.md"] == here.files("alice/linked")["docs/notes.md"] == b"notes\n"
    # Followed, a link still may not leave the folder, reach a file that is not published, or pass another link.
    for target, why in (
        (fake_key(tmp_path), "outside the folder"),
        (folder.parent / "model" / "training_args.bin", "a file that is not published"),
        ("../model/docs/notes.md", "outside the folder"),  # out and back in: where .. leads is not checked
        ("notes.md", "a link itself or lies behind one"),
    ):
        (folder / "training_args.bin").write_text("never sent")
        (folder / "link.txt").unlink(missing_ok=True)
        (folder / "link.txt").symlink_to(target)
        status, out, err = push_here(capsys, folder, "alice/linked", "--hub_follow_symlinks")
        assert status == 1 and err.startswith(f"error: {folder / 'link.txt'} is a symbolic link") and why in err, err
        assert "PRIVATE KEY" not in out + err
    # A link where nothing is published (eval/, checkpoints) is no matter.
    (folder / "link.txt").unlink()
    (folder / "eval").mkdir()
    (folder / "eval" / "key").symlink_to(fake_key(tmp_path))
    assert push_here(capsys, folder, "alice/linked")[0] == 1  # notes.md is still a link
    (folder / "notes.md").unlink()
    assert push_here(capsys, folder, "alice/linked")[0] == 0
    assert KEY.encode() not in here.everything()


def test_logs_and_files_named_after_this_machine_are_published_only_when_asked(
    here, tmp_path, tiny_model, capsys, monkeypatch
):
    monkeypatch.setattr(socket, "gethostname", lambda: "trainer-node-7.cluster.example")
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    runs = folder / "runs" / "Dec06_12-00-00_trainer-node-7"
    runs.mkdir(parents=True)
    (runs / "events.out.tfevents.1733480000.other-machine.123.0").write_bytes(b"\x00events")
    (folder / "notes_trainer-node-7.txt").write_text("notes\n")
    (folder / "nodes.txt").write_text("trainer-node-70 is another machine\n")  # not this host's name
    status, out, err = push_here(capsys, folder, "alice/logs")
    assert status == 0, err
    names = set(here.files("alice/logs"))
    assert "config.json" in names and "nodes.txt" in names
    assert not [n for n in names if "runs/" in n or "trainer-node-7." in n or n.startswith("notes_")]
    assert "left here" in out and "runs/Dec06_12-00-00_trainer-node-7/events.out" in out
    assert "notes_trainer-node-7.txt" in out and "--hub_include_logs" in out
    assert push_here(capsys, folder, "alice/logs", "--hub_include_logs")[0] == 0
    assert {
        "runs/Dec06_12-00-00_trainer-node-7/events.out.tfevents.1733480000.other-machine.123.0",
        "notes_trainer-node-7.txt",
    } <= set(here.files("alice/logs"))


def test_absolute_paths_of_other_machines_are_warnings_naming_the_file_and_line(here, tmp_path, tiny_model, capsys):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    card = "---\nlicense: mit\n---\nSee https://example.org/a/b and WER/CER.\nTrained on /home/someone/golos/train.\n"
    (folder / "README.md").write_text(card)
    (folder / "paths.json").write_text('{"data": "C:\\\\Users\\\\someone\\\\golos"}')
    status, _, err = push_here(capsys, folder, "alice/warned")
    assert status == 0, err
    assert f"warning: {folder / 'README.md'}, line 5: an absolute path (/home/someone/golos/train)," in err
    assert f"warning: {folder / 'paths.json'}, line 1: an absolute path (C:" in err
    assert len(err.splitlines()) == 2  # the URL and WER/CER are no paths; the model's own files hold none
    assert here.files("alice/warned")["README.md"] == card.encode()


def test_unclear_messages_a_missing_token_a_malformed_or_bare_repo(here, tmp_path, tiny_model, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    status, _, err = push_here(capsys, tiny_model, "alice/x")
    assert status == 1 and err == (
        "error: no Hugging Face token: set HF_TOKEN, or log in with `hf auth login` (a token with write access); "
        "nothing was published\n"
    )
    monkeypatch.setenv("HF_TOKEN", ALICE)
    malformed = {
        "mymodel": "'mymodel' names no user: a repo is user/name or organisation/name (e.g. YOUR_USER/mymodel)",
        "alice/my model": "'alice/my model' is not a repo id: a repo is user/name",
        "alice/a/b": "'alice/a/b' is not a repo id",
    }
    for repo, why in malformed.items():
        status, _, err = push_here(capsys, tiny_model, repo)
        assert status == 2 and f"error: argument --hub_model_id: {why}" in err and "Traceback" not in err, err
    assert not here.repos
    # The other commands' default repo is the folder's name in the token's namespace, as Transformers reads it;
    # a repo given without a user is refused as above.
    folder = tmp_path / "tiny-folder"
    shutil.copytree(tiny_model, folder)
    options = dict(push_to_hub=True, hub_private_repo=False, hub_revision=None)
    url = publishing.publish_from_args(folder, argparse_namespace(hub_model_id=None, **options))
    assert "alice/tiny-folder" in url and "config.json" in here.files("alice/tiny-folder")
    with pytest.raises(PublishError, match="'mymodel' names no user"):
        publishing.publish_from_args(folder, argparse_namespace(hub_model_id="mymodel", **options))


def argparse_namespace(**values):
    import argparse

    return argparse.Namespace(**values)


# ------------------------------------------------------------------------------------------ written meanwhile

WRITER = textwrap.dedent(
    """
    import glob, os, sys, time
    folder, token, stop = sys.argv[1:4]
    filler = b"step 10 loss 0.25 wer 0.5\\n" * 200_000  # 5 MB: long enough to be cut while it is read
    files = {}
    while not os.path.exists(stop):
        for place in [folder, *glob.glob(os.path.join(folder, "checkpoint-*"))]:
            if place not in files and os.path.isdir(place):
                try:
                    files[place] = os.open(os.path.join(place, "log.txt"), os.O_RDWR | os.O_CREAT, 0o644)
                except OSError:
                    pass
        for fd in files.values():  # rewritten in place, as a log is: the filler, cut, a line with the token, cut
            os.ftruncate(fd, 0)
            os.pwrite(fd, filler, 0)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"loss 0.5 token {token}\\n".encode(), 0)
        time.sleep(0.002)
        for fd in files.values():
            os.ftruncate(fd, 0)
        time.sleep(0.001)
    """
)

PUSHES = textwrap.dedent(
    """
    import json, os, sys, traceback
    from ebranchformer_ru.commands import push
    folder, repo, runs, logs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    statuses = []
    for n in range(runs):  # each push a process of its own (forked: the imports once), its death seen here
        pid = os.fork()
        if pid == 0:
            for stream, name in ((1, "out"), (2, "err")):
                os.dup2(os.open(os.path.join(logs, f"{n}.{name}"), os.O_WRONLY | os.O_CREAT, 0o600), stream)
            try:
                status = push.main([folder, "--hub_model_id", repo])
            except BaseException:
                traceback.print_exc()
                status = 3
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(status)
        statuses.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    print(json.dumps(statuses))
    """
)


def test_a_file_that_changes_while_it_is_read_is_read_again_or_refused(tmp_path, tiny_model, monkeypatch):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    log = folder / "log.txt"
    log.write_text("step 1\n")
    copy, writes = publishing._copy, []

    def copy_while_written(fd, target, scanner):  # another process appends a line to log.txt as it is read
        found = copy(fd, target, scanner)
        if os.fstat(fd).st_ino == log.stat().st_ino and writes:
            with open(log, "a") as file:
                file.write(writes.pop())
        return found

    monkeypatch.setattr(publishing, "_copy", copy_while_written)
    writes[:] = ["step 3\n", "step 2\n"]  # two changes: the third read is the one kept
    with publishing.take_snapshot(folder, ALICE) as snapshot:
        assert snapshot.files["log.txt"].read_text() == "step 1\nstep 2\nstep 3\n"
    writes[:] = ["more\n"] * 3
    with pytest.raises(PublishError, match=rf"^{re.escape(str(log))} changed each time it was read \(3 times\)"):
        publishing.take_snapshot(folder, ALICE)


def start_writer(folder, tmp_path):
    stop = tmp_path / "stop_writing"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(folder), ALICE, str(stop)])
    return writer, stop


def stop_writer(writer, stop):
    stop.touch()
    writer.wait(30)


@pytest.mark.slow
def test_pushes_while_another_process_rewrites_a_file_never_publish_the_token_nor_die(hub, tmp_path, tiny_model):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    logs = tmp_path / "logs"
    logs.mkdir()
    writer, stop = start_writer(folder, tmp_path)
    try:
        while not (folder / "log.txt").exists():
            time.sleep(0.01)
        result = subprocess.run(
            [sys.executable, "-c", PUSHES, str(folder), "alice/busy", "30", str(logs)],
            env=hub_env(hub.url, tmp_path),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        stop_writer(writer, stop)
    assert result.returncode == 0, result.stderr[-3000:]
    statuses = json.loads(result.stdout.splitlines()[-1])
    assert len(statuses) == 30 and set(statuses) <= {0, 1}, statuses  # no signal death, no traceback (3)
    for n, status in enumerate(statuses):
        out, err = (logs / f"{n}.out").read_text(), (logs / f"{n}.err").read_text()
        assert ALICE not in out + err
        if status == 1:
            assert err.startswith(f"error: {folder / 'log.txt'} ") and len(err.splitlines()) == 1, err
    assert ALICE.encode() not in hub.everything()
    assert 0 in statuses and "alice/busy" in hub.repos  # some versions were published: the test did push


@pytest.mark.slow
def test_a_training_run_publishing_at_every_save_survives_a_file_rewritten_meanwhile(hub, tmp_path, train_args):
    out = tmp_path / "out"
    # 12 saves: a push that reads the file while it holds the token is refused (a warning), and under load it may
    # hold it half the time; with 4 saves, in one CI run all four were refused
    args = train_args(tmp_path, "--max_steps", "12", "--save_strategy", "steps", "--save_steps", "1")
    args += ["--push_to_hub", "true", "--hub_model_id", "alice/busy-run", "--hub_strategy", "every_save"]
    writer, stop = start_writer(out, tmp_path)
    try:
        result = script("train_ctc.py", *args, env=hub_env(hub.url, tmp_path))
    finally:
        stop_writer(writer, stop)
    assert result.returncode in (0, 1), result.stderr[-3000:]  # never a signal
    assert (out / "model.safetensors").exists() and "Traceback" not in result.stderr, result.stderr[-3000:]
    if result.returncode == 1:  # the final push met the token: refused, the folder complete here
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: --push_to_hub: {out / 'log.txt'} "), last
    assert ALICE not in result.stdout + result.stderr
    assert ALICE.encode() not in hub.everything()
    commits = [path for method, path, _ in hub.requests if method == "POST" and "/commit/" in path]
    assert commits, result.stderr[-3000:]  # the checkpoints' pushes ran while the file was rewritten


# ------------------------------------------------------------------------------------------ build_lm


@pytest.mark.slow
def test_build_lm_keeps_a_link_a_link_and_its_push_refuses_it(hub, tmp_path, tiny_model):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    key = fake_key(tmp_path)
    (folder / "notes.txt").symlink_to(key)
    (folder / "ssh").symlink_to(key.parent)  # a link to a folder: copied, it would be a folder of its own here
    built = script("build_lm.py", folder, "--push_to_hub", "--hub_model_id", "alice/lm", env=hub_env(hub.url, tmp_path))
    assert built.returncode == 1, built.stderr[-2000:]
    last = built.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {folder / 'notes.txt'} is a symbolic link (to {key})"), last
    assert (folder / "language_model" / "lm.arpa").exists()  # built; the folder replaced atomically
    assert (folder / "notes.txt").is_symlink() and os.readlink(folder / "notes.txt") == str(key)
    assert (folder / "ssh").is_symlink() and os.readlink(folder / "ssh") == str(key.parent)
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600  # the replacement's chmod did not reach the key
    assert "alice/lm" not in hub.repos and KEY.encode() not in hub.everything()


# ------------------------------------------------------------------------------------------ the searches


def test_the_token_is_found_in_each_form_at_every_offset_and_across_chunks():
    rng = __import__("random").Random(0)
    needles = publishing.Needles(ALICE, ["/home/alice/models"])
    forms = {
        "text": ALICE.encode(),
        "UTF-16": f"x{ALICE}y".encode("utf-16-le"),
        "UTF-16 big": f"x{ALICE}y".encode("utf-16-be"),
        "escaped": escaped(ALICE).encode(),
        "escaped upper": escaped(ALICE).upper().replace("\\U", "\\u").encode(),
        "partly escaped": escaped(ALICE, every=2).encode(),
        "path": b"/home/alice/models/run",
        "path escaped": b"\\/home\\/alice\\/models",
        "path url": b"file:///home/alice/models",
    }
    for prefix in range(3):  # base64 of text around the token: its place modulo 3 gives three encodings
        around = bytes(rng.randrange(256) for _ in range(prefix)) + ALICE.encode() + b"tail"
        forms[f"base64 {prefix}"] = base64.b64encode(around)
        forms[f"urlsafe base64 {prefix}"] = base64.urlsafe_b64encode(b"\xfb\xff" + around)
    for name, form in forms.items():
        for chunk in (5, 17, 1 << 20):  # a needle across two chunks is found
            noise = bytes(rng.randrange(256) for _ in range(40))
            data = noise + form + noise
            scanner = needles.scanner()
            found = [scanner.feed(data[i : i + chunk]) for i in range(0, len(data), chunk)]
            assert any(found), (name, chunk)
    random = bytes(rng.randrange(256) for _ in range(1 << 22))
    scanner = needles.scanner(short_places=False)
    assert scanner.feed(random) is None  # no needle in random bytes, as tensors are
