"""The one command-line dialect every command builds on.

- The folder a command reads is its first positional argument, `model` (a model folder, an ONNX export folder, a
  training run's folder); what it writes is an option (`--output_dir`, `--output`).
- Options are snake_case, as Transformers' `TrainingArguments` spells them, and switches take Transformers' form:
  `--overwrite` alone, or `--overwrite true|false`.
- The options that several commands share are made here, once: `--overwrite`, `--trust_remote_code`, `--device`,
  `--threads`, `--decoder`, `--sets`, the publishing options (`--push_to_hub`, `--hub_model_id`,
  `--hub_private_repo`, `--hub_revision`) and `--debug`.
- Exit status: 0 done; 2 a usage error (argparse's `usage:` and `error:` lines; also a `UsageError` raised by the
  job); 1 a runtime error, reported as one `error: ` line that names the file or value and the fix, without a
  traceback (`--debug` shows it). Library code raises (`ebranchformer_ru.errors`); only `run` here turns an
  exception into an exit status.
"""

import argparse
import sys
import traceback
from collections.abc import Callable

from ebranchformer_ru.errors import Error, UsageError
from modeling_ebranchformer.ngram import LanguageModelError

# What a job raises for a fault of its input (a file, a folder, a value): reported in one line, exit 1.
# Anything else is a bug of ours, and keeps its traceback.
RUNTIME_ERRORS = (Error, LanguageModelError, OSError)

DEVICES = ("cpu", "cuda")
DECODERS = ("greedy", "lm")


def string_to_bool(text) -> bool:
    """A switch's value read as Transformers' `HfArgumentParser` reads it (its own function is not imported: the
    ONNX path of transcribe and serve runs without Transformers)."""
    if isinstance(text, bool):
        return text
    if text.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if text.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false (yes/no, 1/0), got {text!r}")


def positive_int(text: str) -> int:
    """An integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def names(text: str) -> list[str]:
    """A comma-separated list of names (test sets): `crowd,farfield`."""
    values = [name.strip() for name in text.split(",") if name.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return values


def repo_id(text: str) -> str:
    """A Hub repo id with its user or organisation (`--hub_model_id`: a name alone would land in whichever
    namespace the token has)."""
    from ebranchformer_ru.publishing import PublishError, check_repo_id

    try:
        return check_repo_id(text, bare=False)
    except PublishError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--hub_model_id ")) from None


def parser(doc: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """A command's parser: its module's docstring as the description, no abbreviations (a mistyped option is an
    error, not another option), and `--debug`."""
    made = argparse.ArgumentParser(
        description=doc, epilog=epilog, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_debug(made)
    return made


def add_debug(parser: argparse.ArgumentParser):
    parser.add_argument(
        "--debug",
        type=string_to_bool,
        nargs="?",
        const=True,
        default=False,
        help="on an error, show the traceback instead of one line",
    )


def add_switch(parser, name: str, help: str):
    """A switch in Transformers' form: `--NAME` or `--NAME true|false`, default false."""
    parser.add_argument(
        f"--{name}", type=string_to_bool, nargs="?", const=True, default=False, metavar="BOOL", help=help
    )


def add_streaming(parser):
    """Chunk-by-chunk recognition with a streaming model (docs/streaming.md): the switch, the chunk, the endpoints."""
    add_switch(parser, "streaming", "a streaming model, chunk by chunk: segments cut at endpoints (docs/streaming.md)")
    parser.add_argument(
        "--chunk_ms", type=positive_int, default=None, help="--streaming: audio per step (default: the model's, 640)"
    )
    parser.add_argument(
        "--left_chunks", type=int, default=None, help="--streaming: earlier chunks attended to (default the model's)"
    )
    for name, default, what in (
        ("silence_after_speech_s", 0.8, "blank after speech that ends a segment"),
        ("silence_without_speech_s", 2.4, "blank without speech that restarts a segment"),
        ("max_segment_s", 20.0, "longest segment"),
    ):
        parser.add_argument(
            f"--{name}", type=positive_float, default=default, help=f"--streaming: {what} ({default:g} s)"
        )


def add_model(parser, help: str = "a model folder (or an export_onnx output folder where the command runs one)"):
    parser.add_argument("model", metavar="MODEL", help=help)


def add_overwrite(parser, what: str = "an existing output"):
    add_switch(parser, "overwrite", f"replace {what} (default: refuse, and keep it)")


def add_trust_remote_code(parser):
    add_switch(
        parser,
        "trust_remote_code",
        "run the model folder's own code for model types this package lacks (only for folders you trust)",
    )


def add_device(parser):
    parser.add_argument("--device", choices=DEVICES, default="cpu", help="where the model runs (default cpu)")


def add_threads(parser):
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="CPU threads for the model (default: torch's, one per core)"
    )


def add_dtype(parser):
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "auto"),
        default="float32",
        help="the model's precision: auto is bfloat16 on a CPU with AMX or AVX-512 BF16 or a CUDA device of "
        "compute capability 8 or later, float32 elsewhere (default float32)",
    )


def add_torch_compile(parser):
    add_switch(
        parser,
        "torch_compile",
        "compile the model with torch.compile (Inductor, weights frozen): faster calls after compiling at loading "
        "and at the first batch of more than one (about 40 s each on 2 cores); needs a C++ compiler on a CPU "
        "(docs/precision.md)",
    )


def add_decoder(parser, default: str = "greedy", help: str = ""):
    parser.add_argument(
        "--decoder",
        choices=DECODERS,
        default=default,
        help=f"greedy CTC, or lm: beam search with the folder's language model (build_lm); default {default}{help}",
    )


def add_sets(parser, default: str | None, help: str = ""):
    parser.add_argument(
        "--sets",
        type=names,
        default=names(default) if default else None,
        metavar="SET[,SET...]",
        help=f"test sets: folders of DATA_DIR/test_opus/ with a manifest.jsonl{help}",
    )


def add_publishing(parser, what: str = "the output folder"):
    """Publishing as `TrainingArguments` spells it."""
    group = parser.add_argument_group("publishing to the Hugging Face Hub (token: HF_TOKEN or `hf auth login`)")
    add_switch(group, "push_to_hub", f"publish {what} to the Hub")
    group.add_argument(
        "--hub_model_id",
        metavar="REPO",
        type=repo_id,
        help="the repo, user/name or organisation/name (default: the folder's name in your namespace)",
    )
    add_switch(group, "hub_private_repo", "create the repo private (if it is new)")
    group.add_argument("--hub_revision", metavar="BRANCH", help="publish to this branch (made from main if new)")
    return group


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def run(parser: argparse.ArgumentParser, job: Callable, argv=None) -> int:
    """Parse `argv`, run `job(args)`, and turn what it raises into the exit status (see the module's docstring)."""
    args = parser.parse_args(argv)
    return run_job(parser, job, args)


def run_job(parser: argparse.ArgumentParser, job: Callable, args) -> int:
    """`job(args)` with this module's exit statuses; the job's own integer status, if it returns one, is kept."""
    try:
        status = job(args)
    except UsageError as error:
        parser.error(one_line(error))  # exit 2
    except RUNTIME_ERRORS as error:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 1
    return status if isinstance(status, int) else 0
