"""Writing outputs so that a reader never sees half of them: a temporary sibling, then a rename.

Temporary files made by `tempfile` are private (0600, folders 0700) and keep that mode after the rename;
these helpers give every output the mode a plain `open(..., "w")` or `mkdir` would (the umask applies),
so another user or a serving process can read what was written.
"""

import os
import shutil
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_files(texts: dict) -> None:
    """Write several text files {path: text} together: all are written to temporary siblings first and
    renamed into place only when every one of them is complete."""
    temporary = {}
    try:
        for path, text in texts.items():
            path = Path(path)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_text(text, encoding="utf-8")  # a plain open(): the umask gives the mode
            temporary[path] = tmp
        for path, tmp in temporary.items():
            os.replace(tmp, path)
    finally:
        for tmp in temporary.values():
            tmp.unlink(missing_ok=True)


def atomic_write_text(path, text: str) -> None:
    atomic_write_files({path: text})


def write_folder_atomically(output_dir, write, overwrite: bool = False) -> None:
    """`write(tmp_folder)` fills a temporary sibling of `output_dir`, which is then renamed into place:
    the folder appears complete or not at all. An existing `output_dir` is replaced only with `overwrite`
    (it is moved aside first and removed only once the new folder is in place)."""
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"{output_dir} exists; pass --overwrite to replace it")
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    old = None
    try:
        write(tmp)
        publish_modes(tmp)
        if output_dir.exists():
            if not overwrite:
                raise FileExistsError(f"{output_dir} exists; pass --overwrite to replace it")
            old = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}")
            os.replace(output_dir, old)
            try:
                os.replace(tmp, output_dir)
            except BaseException:
                os.replace(old, output_dir)  # the earlier folder goes back: nothing is lost
                old = None
                raise
        else:
            os.replace(tmp, output_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
        if old is not None and old.exists():
            shutil.rmtree(old)


def publish_modes(folder, recursive: bool = True) -> None:
    """Give `folder` and the files in it (and below, if `recursive`) the modes a normal write would have
    given (see the module docstring). safetensors' `save_file` (0.8) also leaves its file at 0600."""
    mask = _umask()
    for root, folders, files in os.walk(folder):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            path = os.path.join(root, name)
            executable = os.stat(path).st_mode & 0o111
            os.chmod(path, (0o777 if executable else 0o666) & ~mask)
        if not recursive:
            break
