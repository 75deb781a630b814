"""Publish a model folder to the Hugging Face Hub: again, or later than the command that made it.

    ebranchformer-push outputs/mini --hub_model_id user/ebranchformer-ru-mini
    ebranchformer-push outputs/mini --hub_model_id user/ebranchformer-ru-mini --hub_private_repo --hub_revision dev

What goes up: the model folder as `from_pretrained` reads it (weights, config, processor, the code for
`trust_remote_code`, the model card, the language model when it has one) and the run's records. What stays here:
`checkpoint-*/`, `eval/`, `training_args.bin`, Trainer's optimizer and random states, hidden and `_*` files, and
unless --hub_include_logs TensorBoard event files and files named after this machine. The files are read once
into private copies, and those bytes are checked and sent; the folder is refused, before the repo is made, when
a file is a symbolic link (unless --hub_follow_symlinks, for links to files inside the folder), a pipe, a device
or a procfs file, holds the token (as text, UTF-16, JSON escapes or base64), names a path of this machine, or is
a pickle (docs/publishing.md). The upload is one commit (several for a very large folder): an interrupted or
refused one leaves the repo as it was, and the same command run again completes it.

The token comes from HF_TOKEN or `hf auth login`, never from an option; HF_ENDPOINT points elsewhere than
huggingface.co. `ebranchformer-train`, `-convert`, `-average` and `-build-lm` publish their output themselves
with --push_to_hub.
"""

from pathlib import Path

from ebranchformer_ru.errors import Error
from ebranchformer_ru.publishing import publish

from . import cli


def build_parser():
    parser = cli.parser(__doc__)
    cli.add_model(parser, "a model folder (ebranchformer-train, -convert, -average)")
    # The options of `cli.add_publishing` less --push_to_hub (pushing is this command's job), the repo required.
    group = parser.add_argument_group("publishing to the Hugging Face Hub (token: HF_TOKEN or `hf auth login`)")
    group.add_argument(
        "--hub_model_id",
        metavar="REPO",
        type=cli.repo_id,
        required=True,
        help="the repo, user/name or organisation/name",
    )
    cli.add_switch(group, "hub_private_repo", "create the repo private (if it is new)")
    group.add_argument("--hub_revision", metavar="BRANCH", help="publish to this branch (made from main if new)")
    group.add_argument("--commit_message", help="default: Upload MODEL's folder name")
    cli.add_switch(
        group,
        "hub_follow_symlinks",
        "publish a symbolic link to a file inside the folder as that file (default: a link refuses the folder)",
    )
    cli.add_switch(
        group,
        "hub_include_logs",
        "publish TensorBoard event files and files named after this machine too (they carry its host name)",
    )
    return parser


def push(args) -> str:
    """The commit's URL."""
    if not Path(args.model).is_dir():
        raise Error(
            f"model folder not found: {args.model} (give the folder that ebranchformer-train, -convert or "
            "-average wrote)"
        )
    return publish(
        args.model,
        args.hub_model_id,
        private=args.hub_private_repo or None,
        revision=args.hub_revision,
        commit_message=args.commit_message,
        follow_symlinks=args.hub_follow_symlinks,
        include_logs=args.hub_include_logs,
    )


def main(argv=None) -> int:
    return cli.run(build_parser(), push, argv)


if __name__ == "__main__":  # python -m ebranchformer_ru.commands.<name>
    raise SystemExit(main())
