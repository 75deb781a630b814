"""The errors a user can fix. Library code raises them; only a command's `main` turns them into an exit status
(`ebranchformer_ru.commands.cli`): a `UsageError` exits 2 with argparse's `usage:` and `error:` lines, any other
`Error` exits 1 with one `error:` line. Each message names the file, option or value at fault and the fix.

Every module's own error class derives from `Error` (and from the builtin it always was, so `except ValueError`
still catches an `InferenceError`): `ModelLoadError`, `ManifestError`, `OutputFolderError`, `InferenceError`,
`PublishError`, `DistributedError`, `ConversionError`, `ExportError`, `TextError`.
"""


class Error(Exception):
    """A failure of the job that the user can fix (a missing file, a folder that is not a model, a bad value)."""


class UsageError(Error, ValueError):
    """Options that contradict each other or a value the command line should have refused."""
