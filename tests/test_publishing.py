"""Publishing to the Hub, end to end, against a local server that speaks the Hub's HTTP API (tests/hub_server.py):
the real huggingface_hub client publishes (Trainer runs, push_to_hub.py, convert/average/build_lm) and a fresh
process without this package loads the repo with trust_remote_code and transcribes as the local folder does."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import soundfile as sf
import torch
from hub_server import HubServer, Repo
from project import CORPUS, ROOT, SHARED_EXAMPLE

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


def assert_no_machine_path(files: dict, *places):
    for name, content in files.items():
        for place in places:
            assert str(place).encode() not in content, f"{name} names {place}"


# ------------------------------------------------------------------------------------------ training


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


def test_a_repo_that_cannot_be_written_stops_training_before_it_starts(hub, tmp_path, train_args):
    hub.repos["alice/taken"] = Repo("alice", private=False)  # bob may not write to it
    result = script(
        "train_ctc.py",
        *train_args(tmp_path, "--max_steps", "2", "--push_to_hub", "true", "--hub_model_id", "alice/taken"),
        env=hub_env(hub.url, tmp_path, BOB),
    )
    assert result.returncode != 0
    assert "the token's user bob may not write to alice/taken" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "out" / "model.safetensors").exists()  # it stopped before training
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
