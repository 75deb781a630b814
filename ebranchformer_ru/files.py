"""Writing outputs so that a reader never sees half of them: a temporary sibling, then a rename.

Temporary files made by `tempfile` are private (0600, folders 0700) and keep that mode after the rename, and
safetensors' `save_file` (0.8) also leaves its file at 0600; these helpers give every output the mode a plain
`open(..., "w")` or `mkdir` would (0666/0777 less the umask), so another user or a serving process can read it.
"""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import Error


class OutputFolderError(Error, OSError):
    """The output folder cannot be made where it was asked for (read-only place, a file in the path...)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_modes(folder, recursive: bool = True) -> None:
    """Give `folder` and the files in it (and below, if `recursive`) the modes a plain write would have given.
    Symbolic links are left alone: chmod follows them, and would open up the file they name (a key of ~/.ssh)."""
    mask = _umask()
    for root, _, files in os.walk(folder):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            executable = os.stat(path).st_mode & 0o111
            os.chmod(path, (0o777 if executable else 0o666) & ~mask)
        if not recursive:
            break


def atomic_write_files(texts: dict) -> None:
    """Write several text files {path: text} together: all are written to temporary siblings first and
    renamed into place only when every one of them is complete."""
    temporary = {}
    try:
        for path, text in texts.items():
            path = Path(path)
            tmp = temporary[path] = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # removed below if not renamed
            tmp.write_text(text, encoding="utf-8")  # a plain open(): the umask gives the mode
        for path, tmp in temporary.items():
            os.replace(tmp, path)
    finally:
        for tmp in temporary.values():
            tmp.unlink(missing_ok=True)


def atomic_write_text(path, text: str) -> None:
    atomic_write_files({path: text})


@contextlib.contextmanager
def staged_folder(output_dir, overwrite: bool = False, check=None):
    """Yields a hidden temporary sibling of `output_dir` to fill; when the block ends without an error, the
    folder is renamed into place with plain modes, so it appears complete or not at all.

    The sibling (and any missing parent folder) is made at once, so a place where nothing can be written
    fails before any work. An existing `output_dir` is replaced only with `overwrite`: it is moved aside
    first, put back if the rename fails, and deleted only once the new folder is in place. `check()`, if
    given, runs again just before the rename (the folder may have changed meanwhile). On an error the
    sibling is removed, and so are the parent folders made for it."""
    output_dir = Path(os.path.abspath(output_dir))
    made = []
    try:
        for folder in reversed([output_dir.parent, *output_dir.parent.parents]):
            if not folder.exists():
                folder.mkdir()
                made.append(folder)
        staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    except OSError as error:
        _remove_if_empty(made)
        raise OutputFolderError(
            error.errno, f"cannot write the output folder {output_dir}: {error.strerror}", error.filename
        ) from None
    try:
        yield staging
        publish_modes(staging)
        if check is not None:
            check()
        _move_into_place(staging, output_dir, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_if_empty(made)
        raise


def write_folder_atomically(output_dir, write, overwrite: bool = False) -> None:
    """`write(folder)` fills a temporary folder that then replaces `output_dir` (see `staged_folder`)."""
    with staged_folder(output_dir, overwrite) as staging:
        write(staging)


def _move_into_place(staging: Path, output_dir: Path, overwrite: bool):
    if not output_dir.exists():
        os.replace(staging, output_dir)
        return
    if not overwrite:
        raise FileExistsError(f"{output_dir} exists; pass --overwrite to replace it")
    old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old.", dir=output_dir.parent))
    try:
        os.replace(output_dir, old)  # onto the empty placeholder, in the same parent folder
    except OSError:
        old.rmdir()
        raise
    try:
        os.replace(staging, output_dir)
    except OSError:
        os.replace(old, output_dir)  # the earlier folder goes back: nothing is lost
        raise
    shutil.rmtree(old)


def _remove_if_empty(folders: list[Path]):
    for folder in reversed(folders):
        if folder.exists() and not any(folder.iterdir()):
            folder.rmdir()


def check_output_folder(output_dir, inputs: dict, overwrite: bool, kind: str, is_kind, may_hold=()) -> None:
    """Refuses, before any work, an output folder whose writing would lose what the user did not ask to lose:
    one that is or contains an input ({path: what it is}), or lies inside one (except the inputs in
    `may_hold`, a run folder that holds its averages, say), an existing one without `overwrite`, and with
    `overwrite` one that `is_kind(folder)` does not recognise as a `kind` this script writes."""
    output = Path(os.path.abspath(output_dir))
    for path, what in inputs.items():
        path = Path(os.path.abspath(path))
        for out, given in ((output, path), (output.resolve(), path.resolve())):
            if out == given or out in given.parents:
                raise OutputFolderError(
                    f"{output_dir} {'is' if out == given else 'contains'} {what}: writing it "
                    "would replace that; choose another output folder"
                )
            if given in out.parents and path not in (Path(os.path.abspath(p)) for p in may_hold):
                raise OutputFolderError(f"{output_dir} lies inside {what}; choose an output folder outside it")
    if output.is_symlink() or (output.exists() and not output.is_dir()):
        raise OutputFolderError(f"{output_dir} exists and is not a folder; choose another output folder")
    if output.exists():
        if not overwrite:
            raise OutputFolderError(f"{output_dir} exists; pass --overwrite to replace it")
        if not is_kind(output):
            raise OutputFolderError(
                f"{output_dir} is not {kind}, so --overwrite does not replace it (it would "
                "delete what it holds); choose another output folder"
            )
