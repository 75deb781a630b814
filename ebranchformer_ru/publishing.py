"""Publish a model folder to the Hugging Face Hub: the one path that `train_ctc.py`, `convert_checkpoint.py`,
`average_checkpoints.py` and `build_lm.py` take with `--push_to_hub` (the repo: `--hub_model_id`), and that
`push_to_hub.py` (ebranchformer-push) takes to (re)publish a folder later:

    python push_to_hub.py outputs/mini --hub_model_id user/mini [--hub_private_repo] [--hub_revision BRANCH]

What goes up: the model folder as `from_pretrained` reads it (weights, config, processor, the code for
`trust_remote_code`, the model card, `alphabet.json` and `language_model/` when it has one), run records
(`all_results.json`, `trainer_state.json`). What stays here: `checkpoint-*/` and Trainer's resume state
(optimizer, scheduler, random states: Trainer's `--hub_strategy checkpoint` / `all_checkpoints` publish them when
asked), `eval/` (per-utterance transcripts of the test data), `training_args.bin` (a pickle holding this
machine's paths, options and the token), hidden and `_*` files, and unless asked (`--hub_include_logs`)
TensorBoard event files and files named after this machine.

The upload set is decided once, from a snapshot this process owns (`take_snapshot`): each published file is read
once, through a descriptor that follows no link, into a private copy, and those bytes are checked and sent. A
folder is refused, before the repo is even made, when a file to publish is a symbolic link (`--hub_follow_symlinks`
publishes a link to a file inside the folder as that file), a pipe, a device or a procfs file; holds the token
(as UTF-8, UTF-16, JSON-escaped or base64); names a path of this machine; or is a pickle. docs/publishing.md says
exactly what is checked and what is not.

The token comes from `HF_TOKEN` or `hf auth login`, as everywhere in the ecosystem, never from a command-line
option (it would stay in the shell's history and in process listings). `HF_ENDPOINT` points elsewhere than
huggingface.co (a private Hub, the tests' local server).
"""

import bz2
import concurrent.futures
import contextlib
import errno
import gzip
import json
import lzma
import os
import posixpath
import re
import shutil
import socket
import stat
import sys
import tempfile
import zipfile
from base64 import b64encode
from pathlib import Path

from .errors import Error

NEVER = ["training_args.bin", "**/training_args.bin", "_*", ".*", "**/.*", "**/__pycache__/**"]  # not even asked
RESUME_STATE = ["optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth"]  # Trainer's pickles, to resume
IGNORED = ["checkpoint-*", "checkpoint-*/**", "eval/**", *RESUME_STATE, *NEVER]  # what a model folder leaves here
TENSORBOARD = "events.out.tfevents."  # an event file's name: ...tfevents.TIME.HOST.PID.N
WEIGHTS = {".safetensors", ".onnx", ".pt", ".pth", ".bin", ".binary"}  # tensor bytes: see SHORT_PLACE
SHORT_PLACE = 8  # shorter paths are searched in text only: in tensor bytes they would match numbers by chance
TEXT = {".md", ".txt", ".json", ".jsonl", ".yaml", ".yml", ".py", ".cfg", ".ini", ".toml", ".csv", ".tsv", ".log"}
CHUNK = 4 << 20  # bytes read (and searched) at a time: a language model or weights can be gigabytes
PSEUDO_FILESYSTEMS = {"proc", "sysfs", "debugfs", "tracefs", "securityfs", "configfs", "efivarfs", "bpf", "cgroup"}
LATER = "python push_to_hub.py {folder} --hub_model_id {repo}"
REPO_SHAPE = "user/name or organisation/name"
TOKEN_FOUND = "holds the Hugging Face token"  # how a finding of the token begins (it comes before a path)


class PublishError(Error, RuntimeError):
    """Publishing failed or was refused; the message says why and how to publish the folder later."""


def publish_from_args(folder, args) -> str | None:
    """`publish` as the command-line options say (`--push_to_hub`, `--hub_model_id`: default the folder's name
    in the token's namespace, `--hub_private_repo`, `--hub_revision`, and where the command has them
    `--hub_follow_symlinks`, `--hub_include_logs`); a failure raises `PublishError` (nothing local is touched)."""
    if not args.push_to_hub:
        return None
    repo = args.hub_model_id or Path(folder).resolve().name
    try:
        check_repo_id(repo, bare=not args.hub_model_id)
    except PublishError as error:
        if args.hub_model_id:
            raise
        raise PublishError(f"the folder's name {repo!r} is no repo name; pass --hub_model_id user/name") from error
    return publish(
        folder,
        repo,
        private=args.hub_private_repo or None,
        revision=args.hub_revision,
        follow_symlinks=getattr(args, "hub_follow_symlinks", False),
        include_logs=getattr(args, "hub_include_logs", False),
    )


def check_repo_id(repo_id: str, bare: bool = True) -> str:
    """`repo_id` if it is one (`bare`: a name alone, in the token's namespace, is one too); else `PublishError`
    (the Hub would answer with a traceback, or a name of the wrong user's)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not bare and "/" not in repo_id:
        raise PublishError(
            f"--hub_model_id {repo_id!r} names no user: a repo is {REPO_SHAPE} (e.g. YOUR_USER/{repo_id})"
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise PublishError(
            f"--hub_model_id {repo_id!r} is not a repo id: a repo is {REPO_SHAPE}, each part letters, digits, "
            "'-', '_' and '.' (not at either end), at most 96 characters"
        ) from None
    return repo_id


def check_token(token) -> str:
    """`token`, or `PublishError` saying where a token comes from (the Hub's own answer would blame the network)."""
    if not token:
        raise PublishError(
            "no Hugging Face token: set HF_TOKEN, or log in with `hf auth login` (a token with write access); "
            "nothing was published"
        )
    return token


def publishable_files(folder, ignore_patterns=IGNORED) -> list[str]:
    """The folder's files (and links, pipes...) that `publish` would send, relative POSIX paths, sorted; nothing
    is read (`take_snapshot` reads and checks them)."""
    from huggingface_hub.utils import filter_repo_objects

    return sorted(filter_repo_objects(sorted(_listing(Path(folder))), ignore_patterns=ignore_patterns))


def check_publishable(folder, token=None, ignore_patterns=IGNORED, **options):
    """Refuses a folder that is no model folder, or whose files to publish are not plain files of the folder, hold
    the token, name a path of this machine or are pickles (see `take_snapshot`): a Hub repo is public or shared,
    and what it holds cannot be taken back from those who downloaded it."""
    with take_snapshot(folder, token, ignore_patterns, **options):
        pass


# ------------------------------------------------------------------------------------------ the snapshot


class Snapshot:
    """The files to publish: {name in the folder: a private copy whose bytes were checked}, laid out as in the
    folder under `tree`, a temporary folder of this process (0700), so that nothing written into the model folder
    meanwhile reaches the repo. `left_here`: logs and files named after this machine, left out as not asked for.
    `close` removes the copies."""

    def __init__(self, folder, reader):
        self.folder, self.reader = Path(folder), reader
        self.root = Path(tempfile.mkdtemp(prefix="ebranchformer-publish-"))
        self.tree = self.root / "tree"
        self.files: dict[str, Path] = {}
        self.left_here: list[str] = []

    def take(self, name):
        """(Re)reads `name` of the folder into its private copy (the card again, after `set_model_id` rewrote it);
        a copy that is refused never takes the place of the one before."""
        fresh = self.root / "fresh"
        self.reader(name, fresh)
        copy = self.tree / name
        copy.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.replace(fresh, copy)
        self.files[name] = copy

    def close(self):
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def take_snapshot(
    folder, token=None, ignore_patterns=IGNORED, *, follow_symlinks=False, include_logs=False, allow_pickles=()
) -> Snapshot:
    """The folder's files to publish (`ignore_patterns` left out, and unless `include_logs` TensorBoard event
    files and files named after this machine), each read once into a private copy and checked; refuses
    (`PublishError`, naming the file and why) the whole folder for one file that is not a plain file of the folder
    (a link, unless `follow_symlinks` and it names a published file inside the folder; a pipe, device, socket or
    procfs file), holds the token, names a path of this machine, or is a pickle (unless it matches
    `allow_pickles`). Absolute paths of other machines in text files are warnings, on stderr."""
    from huggingface_hub.utils import filter_repo_objects

    folder = Path(folder)
    kinds = _listing(folder)
    names = list(filter_repo_objects(sorted(kinds), ignore_patterns=ignore_patterns))
    if "config.json" not in names:
        raise PublishError(f"{folder} is not a model folder (no config.json): nothing published")
    reader = Reader(folder, Needles(token, _places(folder)), ignore_patterns, follow_symlinks, allow_pickles)
    hosts = _host_names()
    snapshot = Snapshot(folder, reader)
    try:
        for name in names:
            if not include_logs and _is_log(name, hosts):
                snapshot.left_here.append(name)
            else:
                snapshot.take(name)
    except BaseException:
        snapshot.close()
        raise
    return snapshot


def _listing(folder: Path) -> dict[str, int]:
    """{relative POSIX path: lstat mode} of everything in `folder` but folders, walked through descriptors that
    follow no link (a folder swapped for a link meanwhile is not entered)."""
    found = {}

    def walk(fd, prefix):
        with os.scandir(fd) as entries:
            for entry in entries:
                mode = entry.stat(follow_symlinks=False).st_mode
                if not stat.S_ISDIR(mode):
                    found[prefix + entry.name] = mode
                    continue
                inner = os.open(entry.name, _DIRECTORY, dir_fd=fd)
                try:
                    walk(inner, f"{prefix}{entry.name}/")
                finally:
                    os.close(inner)

    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            walk(fd, "")
        finally:
            os.close(fd)
    except OSError as error:
        raise PublishError(f"cannot read the folder {folder}: {error.strerror} ({error.filename or folder})") from None
    return found


_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a pipe put in place of a file after the listing opens without waiting for a writer (then refused).
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class Reader:
    """Reads a file of `folder` into a private copy and checks it (`reader(name, copy)`), by the rules of one
    snapshot."""

    def __init__(self, folder: Path, needles, ignore_patterns, follow_symlinks, allow_pickles, tries=3):
        self.folder, self.needles, self.ignore_patterns = folder, needles, ignore_patterns
        self.follow_symlinks, self.allow_pickles, self.tries = follow_symlinks, allow_pickles, tries
        self.pseudo = _pseudo_devices()
        self.warned = set()

    def __call__(self, name: str, copy: Path):
        """Copies `name` to `copy`, searching the bytes on the way, then checks what they are; a file that changes
        while it is read is read again (`tries` times in all)."""
        path = self.folder / name
        source = _link_target(self.folder, name, self.ignore_patterns) if self.follow_symlinks else name
        for _ in range(self.tries):
            with _open_inside(self.folder, source, path, following=source != name) as fd:
                before = os.fstat(fd)
                _check_plain_file(path, before.st_mode, before.st_dev in self.pseudo)
                weights = Path(name).suffix in WEIGHTS or _is_safetensors(fd)
                try:
                    found = _copy(fd, copy, self.needles.scanner(short_places=not weights))
                except OSError as error:  # a disk error, or no room left for the copy in TMPDIR
                    raise PublishError(
                        f"cannot copy {path} to {copy.parent} (the private copy that is sent): {error.strerror}"
                    ) from None
                after = os.fstat(fd)
            if found:
                raise PublishError(f"{path} {found}: nothing published; {self.needles.fix(found)}")
            if _same(before, after) and copy.stat().st_size == after.st_size:
                break
        else:
            raise PublishError(
                f"{path} changed each time it was read ({self.tries} times): nothing published; publish the folder "
                "when nothing writes to that file"
            )
        _check_content(path, name, copy, self.needles, self.allow_pickles)
        if name not in self.warned and Path(name).suffix.lower() in TEXT and copy.stat().st_size <= 16 << 20:
            self.warned.add(name)  # once, though the card is read again after `set_model_id`
            _warn_absolute_paths(path, copy)


def _link_target(folder: Path, name: str, ignore_patterns) -> str:
    """`name` itself, or where the link `name` points (`--hub_follow_symlinks`): a file of the folder that is
    itself published, reached through no other link; else refused."""
    from huggingface_hub.utils import filter_repo_objects

    path = folder / name
    if not path.is_symlink():
        return name
    target = os.readlink(path)
    if os.path.isabs(target):
        inside = next(
            (
                os.path.relpath(target, base)
                for base in {os.path.abspath(folder), os.path.realpath(folder)}
                if os.path.commonpath([base, os.path.normpath(target)]) == base
            ),
            None,
        )
    else:
        inside = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    if inside is None or inside == ".." or inside.startswith("../"):
        raise PublishError(f"{path} is a symbolic link to {target}, outside the folder: nothing published")
    inside = Path(inside).as_posix()
    if not list(filter_repo_objects([inside], ignore_patterns=ignore_patterns)):
        raise PublishError(f"{path} is a symbolic link to {inside}, a file that is not published: nothing published")
    return inside


@contextlib.contextmanager
def _open_inside(folder: Path, name: str, path: Path, following=False):
    """A descriptor of the file `name` of `folder`, opened one folder at a time following no link."""
    *parents, last = name.split("/")
    opened = []
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        opened.append(fd)
        for part in parents:
            fd = os.open(part, _DIRECTORY, dir_fd=fd)
            opened.append(fd)
        opened.append(os.open(last, _FILE, dir_fd=fd))
    except OSError as error:
        for fd in opened:
            os.close(fd)
        raise _unreadable(path, name, error, following) from None
    try:
        yield opened[-1]
    finally:
        for fd in opened:
            os.close(fd)


def _unreadable(path: Path, name: str, error: OSError, following: bool) -> PublishError:
    if error.errno in (errno.ELOOP, errno.EMLINK, errno.ENOTDIR) and following:
        return PublishError(
            f"{path} is a symbolic link to {name}, which is a link itself or lies behind one: nothing published"
        )
    if error.errno in (errno.ELOOP, errno.EMLINK, errno.ENOTDIR):  # O_NOFOLLOW met a link
        target = os.readlink(path) if path.is_symlink() else "a link on the way"
        return PublishError(
            f"{path} is a symbolic link (to {target}): nothing published, as the file it names may lie outside "
            "the folder (a key, /proc/self/environ...); put the file itself in the folder, or publish with "
            "`push_to_hub.py --hub_follow_symlinks`, which sends a link to a file inside the folder as that file"
        )
    return PublishError(f"cannot read {path}: {error.strerror}: nothing published")


def _check_plain_file(path: Path, mode: int, kernel: bool):
    if not stat.S_ISREG(mode):
        kinds = {stat.S_ISFIFO: "a named pipe (FIFO)", stat.S_ISCHR: "a device", stat.S_ISBLK: "a device"}
        kinds.update({stat.S_ISSOCK: "a socket", stat.S_ISDIR: "a folder"})
        kind = next((kind for test, kind in kinds.items() if test(mode)), "no plain file")
        raise PublishError(f"{path} is {kind}, not a file: nothing published; remove it from the folder")
    if kernel:
        # procfs and sysfs files say they are empty, and hold what the kernel writes when read: an environment
        # with the token in it, say.
        raise PublishError(
            f"{path} is a file of a kernel filesystem (procfs, sysfs): nothing published; remove it from the folder"
        )


def _pseudo_devices() -> set[int]:
    """The device numbers of the kernel's own filesystems mounted here (Linux; elsewhere none is known)."""
    devices = set()
    with contextlib.suppress(OSError), open("/proc/self/mountinfo", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            kind = fields[fields.index("-") + 1]
            if kind.split(".")[0] in PSEUDO_FILESYSTEMS or kind.startswith("cgroup"):
                major, minor = fields[2].split(":")
                devices.add(os.makedev(int(major), int(minor)))
    return devices


def _same(before: os.stat_result, after: os.stat_result) -> bool:
    return (before.st_ino, before.st_size, before.st_mtime_ns) == (after.st_ino, after.st_size, after.st_mtime_ns)


def _copy(fd: int, copy: Path, scanner) -> str | None:
    """Reads `fd` to its end (plain reads: a memory map dies with SIGBUS when another process truncates the
    file), writing `copy` (0600) and searching each chunk; what was found, or None."""
    os.lseek(fd, 0, os.SEEK_SET)
    with open(os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600), "wb") as out:
        while chunk := os.read(fd, CHUNK):
            found = scanner.feed(chunk)
            if found:
                return found
            out.write(chunk)
    return None


def _is_safetensors(fd: int) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then the JSON header."""
    head = os.pread(fd, 9, 0)
    return len(head) == 9 and head[8:] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= 100 << 20


def _check_content(path: Path, name: str, copy: Path, needles, allow_pickles):
    """The checks that need the whole copy: what a safetensors header, a JSON file or a compressed archive says once
    decoded, and pickles."""
    for what, chunks in _decoded(copy, name):
        scanner = needles.scanner(short_places=True)
        found = next(filter(None, map(scanner.feed, _safely(chunks))), None)
        if found:
            raise PublishError(f"{path} {found}, {what}: nothing published; {needles.fix(found)}")
    pickle = _pickle_kind(copy)
    if pickle and not any(Path(name).match(pattern) for pattern in allow_pickles):
        raise PublishError(
            f"{path} is {pickle}: nothing published, as loading it runs whatever code it names, and it may hold "
            "anything of this machine (TrainingArguments hold the token); save tensors with safetensors instead "
            "(save_pretrained(..., safe_serialization=True), safetensors.torch.save_file)"
        )


def _decoded(copy: Path, name: str):
    """(what it is, an iterator of bytes) for each decoded view of `copy`: the strings of a safetensors header or
    of a JSON file (escapes undone), the members of a zip archive, the content of a gzip, bzip2 or xz file."""
    size = copy.stat().st_size
    with open(copy, "rb") as file:
        head = file.read(9)
        length = int.from_bytes(head[:8], "little")
        if len(head) == 9 and head[8:] == b"{" and length <= min(size - 8, 100 << 20):
            file.seek(8)
            yield "in its safetensors header", _json_strings(file.read(length))
        elif Path(name).suffix == ".json" and size <= 64 << 20:
            yield "in a JSON string", _json_strings(copy.read_bytes())
    if zipfile.is_zipfile(copy):
        yield from _zip_members(copy)
    for magic, opener, kind in DECOMPRESSED:
        if head.startswith(magic):
            with opener(copy, "rb") as content:
                yield f"once decompressed ({kind})", iter(lambda content=content: content.read(CHUNK), b"")


DECOMPRESSED = ((b"\x1f\x8b", gzip.open, "gzip"), (b"BZh", bz2.open, "bzip2"), (b"\xfd7zXZ\x00", lzma.open, "xz"))


def _zip_members(copy: Path):
    # An encrypted member (RuntimeError) or a compression zipfile lacks (NotImplementedError) cannot be read: what
    # it holds stays encrypted or compressed (docs/publishing.md, what is not checked).
    errors = (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError, ValueError)
    with contextlib.suppress(*errors), zipfile.ZipFile(copy) as archive:
        for member in archive.infolist():
            if member.compress_type != zipfile.ZIP_STORED:  # stored members were searched as they are
                with archive.open(member) as content:
                    yield f"in its member {member.filename}", iter(lambda content=content: content.read(CHUNK), b"")


def _json_strings(data: bytes):
    """The strings of a JSON document, decoded (a file that only looks like JSON gives nothing)."""
    with contextlib.suppress(ValueError, RecursionError):
        yield _strings(json.loads(data))


def _safely(chunks):
    """The chunks of a decoding until it fails: data that only begins like an archive (its bytes were searched as
    they are); whatever the decoder raises (zlib.error, BadZipFile, LZMAError, EOFError...) means that."""
    with contextlib.suppress(Exception):
        yield from chunks


def _strings(value) -> bytes:
    """Every string of a JSON value (keys too), one a line, as UTF-8."""
    found = []

    def visit(item):
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            for key, inner in item.items():
                found.append(key)
                visit(inner)
        elif isinstance(item, list):
            for inner in item:
                visit(inner)

    visit(value)
    return "\n".join(found).encode("utf-8", "surrogatepass")


def _pickle_kind(copy: Path) -> str | None:
    """What kind of pickle `copy` is (torch.save's zip archive, a raw pickle of protocol 2 or later), or None."""
    with open(copy, "rb") as file:
        head = file.read(9)
    if len(head) == 9 and head[8:] == b"{":
        return None  # safetensors: its header's length may begin with \x80
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a pickle"
    if zipfile.is_zipfile(copy):
        with contextlib.suppress(zipfile.BadZipFile, OSError), zipfile.ZipFile(copy) as archive:
            if any(name.endswith(".pkl") for name in archive.namelist()):
                return "a pickle (torch.save's zip archive)"
    return None


ABSOLUTE_PATH = re.compile(
    r"(?<![\w.:/~\\-])(/(?:[\w.+@-]+/)+[\w.+@-]*)"  # /home/someone/data: two parts at least, not a URL's path
    r"|(?<![\w])([A-Za-z]:\\\\?(?:[^\\\s\"'<>|:*?]+\\\\?)+[^\\\s\"'<>|:*?]*)"  # C:\Users\someone\data
)


def _warn_absolute_paths(path: Path, copy: Path, most: int = 3):
    """Absolute paths in a text file: not this machine's (those refuse the file), but maybe another's (the data
    folder of the machine that trained): a warning naming the file and line, the file is published."""
    seen = []
    with open(copy, encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            for match in ABSOLUTE_PATH.finditer(line.replace("\\/", "/")):
                seen.append((number, match.group(0).rstrip(".")))  # the end of a sentence
    for number, found in seen[:most]:
        print(
            f"warning: {path}, line {number}: an absolute path ({found}), of another machine? published as written",
            file=sys.stderr,
        )
    if len(seen) > most:
        print(f"warning: {path}: {len(seen) - most} more absolute paths", file=sys.stderr)


def _host_names() -> set[str]:
    """This machine's host name (and its first label), where long enough to mean it in a file name."""
    host = socket.gethostname().lower()
    return {name for name in (host, host.split(".")[0]) if len(name) >= 4 and not name.startswith("localhost")}


def _is_log(name: str, hosts) -> bool:
    """A TensorBoard event file (its name carries the host name of the machine that wrote it), or a file or folder
    name that carries this machine's host name (Trainer's runs/DATE_HOST/) between separators."""
    if Path(name).name.startswith(TENSORBOARD):
        return True
    return any(re.search(rf"(?<![a-z0-9]){re.escape(host)}(?![a-z0-9])", name.lower()) for host in hosts)


# ------------------------------------------------------------------------------------------ what is searched


class Needles:
    """The token and this machine's paths in the forms they take in files, and a `scanner` for each file."""

    def __init__(self, token, places):
        self.token, self.pattern, self.span = {}, None, 0
        if token:
            self.token = token_forms(token)
            self.pattern, self.span = _escaped_pattern(token), 6 * len(token)  # \\uXXXX: 6 bytes a character
        self.places = {form: (place, how) for place in places for form, how in place_forms(place).items()}

    def scanner(self, short_places=True):
        places = {
            form: f"names a path of this machine ({place}{how})"
            for form, (place, how) in self.places.items()
            if short_places or len(place) >= SHORT_PLACE
        }
        tokens = {form: f"{TOKEN_FOUND} ({how})" for form, how in self.token.items()}
        return Scanner({**tokens, **places}, self.pattern, self.span)

    @staticmethod
    def fix(found: str) -> str:
        if found.startswith(TOKEN_FOUND):
            return "remove the token from it (or the file from the folder) and revoke the token if it left this machine"
        return "remove the path from it (model cards and records name folders, not paths)"


class Scanner:
    """Finds `needles` ({bytes: what it means}) in a stream fed in chunks; each window keeps the end of the one
    before, so a needle across two chunks is found. `pattern`: the token with any of its characters \\u-escaped.

    Only the needles that hold no other needle are searched (a folder's path holds its parent's, a file:// URL the
    path): each search is a pass over the bytes, and weights and language models are gigabytes. When one is
    found, the needle in the window that says most says what it is: the token before a path, the longer first."""

    def __init__(self, needles: dict, pattern=None, span=0):
        self.needles, self.pattern = needles, pattern
        self.searched = [n for n in needles if not any(other != n and other in n for other in needles)]
        self.keep = max([len(n) for n in needles] + [span]) - 1
        self.tail = b""

    def feed(self, chunk: bytes) -> str | None:
        window = self.tail + chunk
        if any(needle in window for needle in self.searched):
            found = (n for n in self.needles if n in window)
            return self.needles[max(found, key=lambda n: (self.needles[n].startswith(TOKEN_FOUND), len(n)))]
        if self.pattern is not None and b"\\u00" in window and self.pattern.search(window):
            return f"{TOKEN_FOUND} (\\u-escaped)"
        self.tail = window[-self.keep :] if self.keep > 0 else b""
        return None


def token_forms(token: str) -> dict[bytes, str]:
    """{the bytes that carry `token` in a file: how it is written there}."""
    raw = token.encode()
    forms = {
        raw: "as text",
        # Both byte orders hold this (one search finds either): the characters with the zero bytes between them.
        token.encode("utf-16-le")[:-1]: "as UTF-16 text",
        token.encode("utf-16-le"): "as UTF-16 little-endian text",
        token.encode("utf-16-be"): "as UTF-16 big-endian text",
    }  # \\u-escaped: `_escaped_pattern`
    urlsafe = bytes.maketrans(b"+/", b"-_")
    for shift in range(3):  # the token's place in the encoded bytes modulo 3: three encodings
        encoded = b64encode(b"\0" * shift + raw)
        # Only the characters made of the token's bits alone: those before depend on what precedes it, those
        # after on what follows.
        core = encoded[-(-8 * shift // 6) : 8 * (shift + len(raw)) // 6]
        forms[core] = forms[core.translate(urlsafe)] = "in base64"
    return forms


def _escaped_pattern(token: str) -> re.Pattern:
    """The token with any of its characters written as JSON's \\uXXXX (either case of hex digits)."""
    parts = []
    for character in token:
        digits = "".join(f"[{d.lower()}{d.upper()}]" if d.isalpha() else d for d in f"{ord(character):04x}")
        parts.append(f"(?:{re.escape(character)}|\\\\u{digits})")
    return re.compile("".join(parts).encode())


def place_forms(place: str) -> dict[bytes, str]:
    """{the bytes that name `place` in a file: how}: as written, JSON-escaped (\\/, \\uXXXX), as a file:// URL."""
    forms = {place: ""}
    for escaped in (json.dumps(place)[1:-1], json.dumps(place, ensure_ascii=False)[1:-1]):
        forms.setdefault(escaped, ", JSON-escaped")
        forms.setdefault(escaped.replace("/", "\\/"), ", JSON-escaped")
    forms.setdefault(Path(place).as_uri(), ", as a file:// URL")
    forms.setdefault("file://" + place, ", as a file:// URL")
    return {form.encode("utf-8", "surrogateescape"): how for form, how in forms.items()}


def _places(folder: Path) -> list[str]:
    """This machine's paths that a published file must not name: the folder, its parent, the working folder and
    home, as given and with links resolved; "/" alone is in every file."""
    places = set()
    for place in (folder, folder.parent, Path.cwd(), Path.home()):
        places |= {os.path.abspath(place), os.path.realpath(place)}
    return sorted((p for p in places if len(p) > 1), key=len, reverse=True)


# ------------------------------------------------------------------------------------------ the Hub


class Publisher:
    """One Hub repo (created if needed, private if asked; the branch `revision` made from main if needed) and
    the uploads to it, each one commit (several for a very large folder: docs/publishing.md): an interrupted or
    refused upload leaves the repo as it was, and `push_to_hub.py` run again completes it. Errors are
    `PublishError`s that name the folder and the repo. A repo id without a user is in the token's namespace, as
    `TrainingArguments.hub_model_id` reads it."""

    def __init__(self, repo_id, *, private=None, revision=None, token=None, folder=None):
        from huggingface_hub import HfApi

        self.repo_id, self.revision = check_repo_id(repo_id), revision
        self.token = check_token(token or _token())
        self.api = HfApi(token=self.token)
        with self.errors(folder):
            # The Hub answers "exists" for a repo one may read but not write, so the namespace is checked here:
            # a refusal must come now, not at the first upload after hours of training.
            me = self.api.whoami()
            if "/" not in repo_id:
                self.repo_id = f"{me['name']}/{repo_id}"
            namespace = self.repo_id.split("/")[0]
            if namespace != me["name"] and namespace not in {org.get("name") for org in me.get("orgs", [])}:
                raise PublishError(
                    f"the token's user {me['name']} may not write to {self.repo_id} ({namespace} is another "
                    f"user or an organisation it is not a member of).{self.later(folder)}"
                )
            self.api.create_repo(self.repo_id, private=private, exist_ok=True)
            if revision:
                self.api.create_branch(self.repo_id, branch=revision, exist_ok=True)

    def upload(
        self,
        folder,
        commit_message=None,
        path_in_repo=None,
        ignore_patterns=IGNORED,
        blocking=True,
        *,
        follow_symlinks=False,
        include_logs=False,
        allow_pickles=None,
    ):
        """Uploads `folder` (a snapshot of it: `take_snapshot`); returns the commit's URL, or a Future of the commit
        when not `blocking` (the snapshot is taken now, the uploads run one after another in the order asked,
        and a refused folder is a failed Future: training goes on). Trainer's resume state (RESUME_STATE) is
        published only under `path_in_repo`, where `--hub_strategy checkpoint|all_checkpoints` put it."""
        folder = Path(folder)
        if path_in_repo is None:
            from .model_card import set_model_id

            set_model_id(folder, self.repo_id)  # the card's snippet names the repo it is read from
        if allow_pickles is None:
            allow_pickles = RESUME_STATE if path_in_repo else ()
        options = dict(follow_symlinks=follow_symlinks, include_logs=include_logs, allow_pickles=allow_pickles)
        try:
            snapshot = take_snapshot(folder, self.token, ignore_patterns, **options)
        except PublishError as error:
            if blocking:
                raise
            failed = concurrent.futures.Future()
            failed.set_exception(error)
            return failed
        return self.commit(snapshot, commit_message, path_in_repo, blocking)

    def commit(self, snapshot: Snapshot, commit_message=None, path_in_repo=None, blocking=True):
        """Sends `snapshot` (one commit) and closes it; the commit's URL, or its Future when not `blocking`."""
        message = commit_message or f"Upload {snapshot.folder.resolve().name}"
        if snapshot.left_here:
            print(
                f"left here, not asked for (--hub_include_logs publishes them): {', '.join(snapshot.left_here)} "
                "(TensorBoard event files and names that carry this machine's host name)"
            )
        if not blocking:
            return self.api.run_as_future(self._commit, snapshot, message, path_in_repo)
        commit = self._commit(snapshot, message, path_in_repo)
        where = f"{self.repo_id}" + (f" (branch {self.revision})" if self.revision else "")
        print(f"published {snapshot.folder} to {where}: {commit.commit_url}")
        return commit.commit_url

    def _commit(self, snapshot: Snapshot, message, path_in_repo):
        """The private copies go up (huggingface_hub's folder upload: it retries a broken connection), never the
        folder's files, which may have changed since they were checked."""
        try:
            with self.errors(snapshot.folder):
                return self.api.upload_folder(
                    repo_id=self.repo_id,
                    folder_path=snapshot.tree,
                    path_in_repo=path_in_repo,
                    revision=self.revision,
                    commit_message=message,
                )
        finally:
            snapshot.close()

    def later(self, folder) -> str:
        """How to publish `folder` later; nothing where it is no model folder yet (a run that has not trained)."""
        if folder is None or not (Path(folder) / "config.json").is_file():
            return ""
        repo = self.repo_id if "/" in self.repo_id else f"YOUR_USER/{self.repo_id}"  # the token was not read
        return f" {folder} is complete here; publish it later with `{LATER.format(folder=folder, repo=repo)}`"

    @contextlib.contextmanager
    def errors(self, folder):
        from huggingface_hub import constants
        from huggingface_hub.errors import HfHubHTTPError

        later = self.later(folder)
        try:
            yield
        except ValueError as error:
            # huggingface_hub has the Hub validate the card's metadata first, and raises a ValueError
            if not str(error).startswith("Invalid metadata in README.md"):
                raise
            why = " ".join(str(error).split("\n")[1:]).strip("- ")
            raise PublishError(
                f"the Hub refused the model card's metadata (README.md of {folder}): {why}; nothing published"
            ) from None
        except HfHubHTTPError as error:
            status = error.response.status_code if error.response is not None else None
            why = {
                401: "the token is not valid (HF_TOKEN, or `hf auth login`)",
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


def publish(
    folder,
    repo_id,
    *,
    private=None,
    revision=None,
    token=None,
    commit_message=None,
    follow_symlinks=False,
    include_logs=False,
) -> str:
    """Publishes a model folder to `repo_id` (see `Publisher` and the module docstring); returns the commit URL.
    The folder is read and checked before the repo is made: a refused folder leaves no trace."""
    token = check_token(token or _token())
    check_repo_id(repo_id)
    options = dict(follow_symlinks=follow_symlinks, include_logs=include_logs)
    with take_snapshot(folder, token, **options) as snapshot:
        publisher = Publisher(repo_id, private=private, revision=revision, token=token, folder=folder)
        if "README.md" in snapshot.files:
            from .model_card import set_model_id

            set_model_id(folder, publisher.repo_id)  # the card's snippet names the repo it is read from
            snapshot.take("README.md")
        return publisher.commit(snapshot, commit_message)


def _token():
    from huggingface_hub import get_token

    return get_token()
