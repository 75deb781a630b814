"""Train and evaluate an E-Branchformer (or QuartzNet) CTC model with Transformers' Trainer on a Golos-layout folder.

    ebranchformer-train                                          # preset mini: the embedded corpus, 2 CPU cores
    ebranchformer-train --preset overfit                         # overfit ~10 minutes of train from random weights
    ebranchformer-train --preset course --data_dir /data/golos   # the course recipe on real Golos
    ebranchformer-train --resume_from_checkpoint last            # continue the run in --output_dir
    torchrun --nproc_per_node 2 train_ctc.py ...                 # data-parallel (DDP) on 2 processes, CPU or GPU
    accelerate launch --multi_gpu --num_processes 8 train_ctc.py ...   # the same with accelerate

Every option of Transformers' `TrainingArguments` is an option here, as are those of the run below (model, data,
augmentation). A preset (presets/NAME.yaml, or any .yaml/.json path given to --preset) sets defaults that the
command line overrides. An output folder that holds an earlier run is never replaced silently: continue it with
--resume_from_checkpoint last, or replace it with --overwrite. --push_to_hub publishes the model folder (the repo:
--hub_model_id, default the folder's name; checkpoints as --hub_strategy says), never training_args.bin. Under a
launcher the processes first agree that they were started on one run (the same options, starting model and data
manifests); else all refuse, naming what differs.
"""

import argparse
import sys

from ebranchformer_ru import training

from . import cli


def build_parser():
    """Transformers' `HfArgumentParser` over the run's dataclasses (`training.build_parser`)."""
    parser = training.build_parser(__doc__)
    _shared_forms(parser)
    return parser


def _shared_forms(parser):
    """The options that train shares with the other commands (dataclass fields here) take the form that `cli`
    gives them everywhere else: the same metavar and type in every --help."""
    forms = argparse.ArgumentParser(add_help=False)
    cli.add_overwrite(forms)
    cli.add_trust_remote_code(forms)
    cli.add_publishing(forms)
    for form in forms._actions:
        action = parser._option_string_actions[form.option_strings[0]]
        action.type, action.metavar, action.nargs, action.const = form.type, form.metavar, form.nargs, form.const


def parse_args(argv=None):
    """The run's options: the preset's values, then the command line; checked (`training.parse_args`)."""
    return training.parse_args(argv, build_parser())


def train(args):
    """The job: the run that the command line `args.argv` asks for. Returns the trainer and the final metrics."""
    return training.train(*parse_args(args.argv))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    # The options depend on the preset, which the job reads (an error there is the job's): only --debug is
    # needed before it starts. --help, and what the command line alone gets wrong, end here.
    given = parser.parse_known_args(argv)[0]
    return cli.run_job(parser, train, argparse.Namespace(argv=argv, debug=given.traceback))


if __name__ == "__main__":  # python -m ebranchformer_ru.commands.<name>
    raise SystemExit(main())
