"""Publish a model folder to the Hugging Face Hub: the one path that `train_ctc.py`, `convert_checkpoint.py`,
`average_checkpoints.py` and `build_lm.py` take with `--push_to_hub` (the repo: `--hub_model_id`), and that
`push_to_hub.py` (ebranchformer-push) takes to (re)publish a folder later:

    python push_to_hub.py outputs/mini --hub_model_id user/mini [--hub_private_repo] [--hub_revision BRANCH]

What goes up: the model folder as `from_pretrained` reads it (weights, config, processor, the code for
`trust_remote_code`, the model card, `alphabet.json` and `language_model/` when it has one), run records
(`all_results.json`, `trainer_state.json`, TensorBoard logs). What stays here: `checkpoint-*/` (optimizer
states; Trainer's `--hub_strategy checkpoint` / `all_checkpoints` publish them when asked), `eval/` (per-utterance
transcripts of the test data), `training_args.bin` (a pickle holding this machine's paths and options: a reader
of the repo cannot load it without running pickled code), hidden and `_*` files. No file that names a path of
this machine or the token is published: the folder is checked before anything is sent.

The token comes from `HF_TOKEN` or `hf auth login`, as everywhere in the ecosystem, never from a command-line
option (it would stay in the shell's history and in process listings). `HF_ENDPOINT` points elsewhere than
huggingface.co (a private Hub, the tests' local server).
"""

import contextlib
import mmap
import os
from pathlib import Path

from .errors import Error

NEVER = ["training_args.bin", "**/training_args.bin", "_*", ".*", "**/.*", "**/__pycache__/**"]  # not even asked
IGNORED = ["checkpoint-*", "checkpoint-*/**", "eval/**", *NEVER]  # what a model folder's publication leaves here
WEIGHTS = {".safetensors", ".onnx", ".pt", ".pth", ".bin", ".binary"}  # tensors: not searched for paths
LATER = "python push_to_hub.py {folder} --hub_model_id {repo}"


class PublishError(Error, RuntimeError):
    """Publishing failed or was refused; the message says why and how to publish the folder later."""


def publish_from_args(folder, args) -> str | None:
    """`publish` as the command-line options say (`--push_to_hub`, `--hub_model_id`: default the folder's name,
    `--hub_private_repo`, `--hub_revision`); a failure raises `PublishError` (nothing local is touched)."""
    if not args.push_to_hub:
        return None
    repo = args.hub_model_id or Path(folder).resolve().name
    return publish(folder, repo, private=args.hub_private_repo or None, revision=args.hub_revision)


def publishable_files(folder, ignore_patterns=IGNORED) -> list[str]:
    """The folder's files that `publish` sends, relative POSIX paths, sorted."""
    from huggingface_hub.utils import filter_repo_objects

    folder = Path(folder)
    paths = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    return sorted(filter_repo_objects(paths, ignore_patterns=ignore_patterns))


def check_publishable(folder, token=None, ignore_patterns=IGNORED):
    """Refuses a folder that is no model folder, or whose files name a path of this machine or hold the token:
    a Hub repo is public or shared, and what it holds cannot be taken back from those who downloaded it."""
    folder = Path(folder)
    files = publishable_files(folder, ignore_patterns)
    if "config.json" not in files:
        raise PublishError(f"{folder} is not a model folder (no config.json): nothing published")
    places = {str(folder.resolve()), str(folder.resolve().parent), os.getcwd(), str(Path.home())}
    places = sorted((p for p in places if len(p) > 1), key=len, reverse=True)  # "/" alone is in every file
    for name in files:
        path = folder / name
        if path.suffix in WEIGHTS:
            continue
        if path.stat().st_size == 0:
            continue
        # Text files and binary records alike (TensorBoard events hold the options as text); mapped, not read,
        # as a language model can be gigabytes.
        with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as content:
            for place in places:
                if content.find(place.encode()) >= 0:
                    raise PublishError(
                        f"{path} names a path of this machine ({place}): not published; remove it "
                        "from the file (model cards and records name folders, not paths)"
                    )
            if token and content.find(token.encode()) >= 0:
                raise PublishError(f"{path} holds the Hugging Face token: not published")


class Publisher:
    """One Hub repo (created if needed, private if asked; the branch `revision` made from main if needed) and
    the uploads to it, each one commit: an interrupted or refused upload leaves the repo as it was, and
    `push_to_hub.py` run again completes it. Errors are `PublishError`s that name the folder and the repo."""

    def __init__(self, repo_id, *, private=None, revision=None, token=None, folder=None):
        from huggingface_hub import HfApi

        self.repo_id, self.revision = repo_id, revision
        self.token = token or _token()
        self.api = HfApi(token=self.token)
        with self.errors(folder):
            # The Hub answers "exists" for a repo one may read but not write, so the namespace is checked here:
            # a refusal must come now, not at the first upload after hours of training.
            me = self.api.whoami()
            namespace = repo_id.split("/")[0] if "/" in repo_id else me["name"]
            if namespace != me["name"] and namespace not in {org.get("name") for org in me.get("orgs", [])}:
                raise PublishError(
                    f"the token's user {me['name']} may not write to {repo_id} ({namespace} is another "
                    f"user or an organisation it is not a member of).{self.later(folder)}"
                )
            self.api.create_repo(repo_id, private=private, exist_ok=True)
            if revision:
                self.api.create_branch(repo_id, branch=revision, exist_ok=True)

    def upload(self, folder, commit_message=None, path_in_repo=None, ignore_patterns=IGNORED, blocking=True):
        """Uploads `folder` (checked by `check_publishable`); returns the commit's URL, or a Future of the commit
        when not `blocking` (uploads then run one after another, in the order asked)."""
        folder = Path(folder)
        if path_in_repo is None:
            from .model_card import set_model_id

            set_model_id(folder, self.repo_id)  # the card's snippet names the repo it is read from
        check_publishable(folder, self.token, ignore_patterns)
        with self.errors(folder):
            commit = self.api.upload_folder(
                repo_id=self.repo_id,
                folder_path=folder,
                path_in_repo=path_in_repo,
                revision=self.revision,
                ignore_patterns=ignore_patterns,
                commit_message=commit_message or f"Upload {folder.resolve().name}",
                run_as_future=not blocking,
            )
        if not blocking:
            return commit
        where = f"{self.repo_id}" + (f" (branch {self.revision})" if self.revision else "")
        print(f"published {folder} to {where}: {commit.commit_url}")
        return commit.commit_url

    def later(self, folder) -> str:
        if folder is None:
            return ""
        return f" {folder} is complete here; publish it later with `{LATER.format(folder=folder, repo=self.repo_id)}`"

    @contextlib.contextmanager
    def errors(self, folder):
        from huggingface_hub import constants
        from huggingface_hub.errors import HfHubHTTPError

        later = self.later(folder)
        try:
            yield
        except HfHubHTTPError as error:
            status = error.response.status_code if error.response is not None else None
            why = {
                401: "the token is missing or not valid (HF_TOKEN, or `hf auth login`)",
                403: f"the token's user may not write to {self.repo_id} (another user's or organisation's repo?)",
            }
            reason = why.get(status, str(error).splitlines()[0])
            raise PublishError(f"the Hub refused {self.repo_id} ({status}): {reason}.{later}") from None
        except Exception as error:
            # httpx's ConnectError, ReadError, RemoteProtocolError and timeouts: the server is down or the
            # connection broke midway. A commit is all or nothing, so the repo is as it was.
            if not isinstance(error, OSError) and not type(error).__module__.startswith("httpx"):
                raise
            raise PublishError(
                f"cannot reach the Hub at {constants.ENDPOINT}, or the connection broke "
                f"({type(error).__name__}: {error}).{later}"
            ) from None


def publish(folder, repo_id, *, private=None, revision=None, token=None, commit_message=None) -> str:
    """Publishes a model folder to `repo_id` (see `Publisher` and the module docstring); returns the commit URL."""
    check_publishable(folder, token or _token())  # before the repo is made: a refused folder leaves no trace
    publisher = Publisher(repo_id, private=private, revision=revision, token=token, folder=folder)
    return publisher.upload(folder, commit_message)


def _token():
    from huggingface_hub import get_token

    return get_token()
