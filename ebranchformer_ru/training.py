"""Train and evaluate a CTC speech recogniser on Golos with the Hugging Face Trainer: the job of
`ebranchformer-train` (`train_ctc.py`).

    ebranchformer-train                                   # preset "mini": the embedded corpus, 2 CPU cores
    ebranchformer-train --preset overfit                  # overfit ~10 minutes of train from random weights
    ebranchformer-train --preset course --data_dir /data/golos   # the course recipe on real Golos
    torchrun --nproc_per_node 2 train_ctc.py ...          # data-parallel (DDP) on 2 processes, CPU or GPU
    accelerate launch --multi_gpu --num_processes 8 train_ctc.py ...   # the same with accelerate

Every option of `TrainingArguments` and of the dataclasses below is a command-line flag; a preset (a YAML
file in presets/, or any .yaml/.json path given to --preset) sets defaults that flags override. An output
folder that holds an earlier run is never replaced silently: continue it with
`--resume_from_checkpoint last`, or replace it with `--overwrite true`.

`run(argv)` parses and trains (`parse_args`, then `train`); errors are raised (`ebranchformer_ru.errors`): a
`UsageError` for options that contradict each other or values no run can use, an `Error` for a file or folder
at fault.
"""

import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
import transformers
import yaml
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.debug_utils import DebugOption
from transformers.hf_argparser import string_to_bool
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, HubStrategy

from ebranchformer_ru.golos import (
    EMBEDDED_CORPUS,
    course_filter,
    decode_with_soundfile,
    find_test_sets,
    load_golos,
    normalize_and_check_texts,
    random_subset_by_duration,
)
from ebranchformer_ru.golos.selection import column, ctc_feasible
from modeling_ebranchformer import DataCollatorCTC, EBranchformerConfig, EBranchformerForCTC, EBranchformerProcessor
from modeling_ebranchformer.ctc import output_frames

from . import distributed
from .augmentation import AudioAugmentation, AugmentationArguments, AugmentationCallback
from .errors import Error, UsageError
from .files import publish_modes
from .hub import ModelLoadError, load_ctc_model, load_processor
from .metrics import cer, wer
from .model_card import describe_data, write_model_card
from .onnx_runtime import CTCVocabulary
from .publishing import IGNORED, NEVER, Publisher, PublishError
from .summary import model_summary

PRESETS = Path(__file__).resolve().parent / "presets"  # package data
logger = logging.getLogger("train_ctc")

# What every preset shares; a preset holds only what differs from these (and from the defaults below).
COMMON_DEFAULTS = {
    "do_train": True,
    "do_eval": True,
    "learning_rate": 1e-3,
    "weight_decay": 0.0,
    "lr_scheduler_type": "cosine",
    "max_grad_norm": 1.0,
    "train_sampling_strategy": "group_by_length",
    "report_to": "tensorboard",
    "seed": 42,
}
# What this script needs whatever the options say: the collator reads the `audio` and `text` columns (which
# the Trainer would otherwise drop, as the model's forward does not name them), batches are grouped by the
# `duration` column (no need to decode every file to measure it).
REQUIRED = {"remove_unused_columns": False, "length_column_name": "duration"}
MODEL_FILES = ("model.safetensors", "pytorch_model.bin", "trainer_state.json", "all_results.json")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A from_pretrained folder or Hub id to start from; random weights if unset."}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Run the Python code of a model folder or Hub repo that this package does not provide. "
            "Our own model types load without it."
        },
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "For random weights: config fields to change, e.g. 'num_hidden_layers=4,dropout=0.05'."},
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "E-Branchformer attention: 'sdpa' (the default) or 'eager'."}
    )


@dataclass
class DataArguments:
    data_dir: str = field(
        default=str(EMBEDDED_CORPUS),
        metadata={"help": "Golos folder: train_opus/manifest.jsonl, test_opus/{crowd,farfield}/manifest.jsonl."},
    )
    train_domains: str = field(default="all", metadata={"help": "Train on 'crowd', 'farfield' or 'all'."})
    eval_sets: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated test sets to evaluate on (default: all of data_dir's test_opus/, e.g. "
            "crowd,farfield,heldout_voice); 'train' evaluates on the train selection."
        },
    )
    train_subset_seconds: float | None = field(
        default=None,
        metadata={"help": "Train on a random subset of about this many seconds; 0: no subset."},
    )
    subset_seed: int = field(default=0, metadata={"help": "Seed of the random subset."})
    course_filter: bool = field(default=True, metadata={"help": "Apply the course's train filter."})
    min_duration: float = field(default=1.0, metadata={"help": "Course filter: shortest utterance, s."})
    max_duration: float = field(default=16.7, metadata={"help": "Course filter: longest utterance, s."})
    max_text_length: int = field(default=68, metadata={"help": "Course filter: longest transcript, characters."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on the first N of each set."})
    skip_invalid: bool = field(default=False, metadata={"help": "Skip bad manifest lines and audio (counted)."})
    verify_audio: str = field(default="header", metadata={"help": "'header', 'full' or 'none' (see golos)."})
    dataset_cache_dir: str | None = field(default=None, metadata={"help": "Where datasets caches Golos."})


@dataclass
class RunArguments:
    preset: str = field(
        default="mini", metadata={"help": "A preset in presets/ (mini, overfit, course) or a .yaml/.json path."}
    )
    eval_every_epochs: float | None = field(
        default=None, metadata={"help": "Evaluate every N epochs (sets eval_steps from the train set's size)."}
    )
    logged_predictions: int = field(default=3, metadata={"help": "reference/prediction pairs logged per evaluation."})
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Replace an earlier run in --output_dir (its checkpoints are deleted). Without it, such "
            "a folder is refused; --resume_from_checkpoint last continues it."
        },
    )


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written (its examples keep their lines), and every option's default (HfArgumentParser's
    way)."""


DEBUG_FEATURES = [option.value for option in DebugOption]


class DebugAction(argparse.Action):
    """`--debug`, where two dialects meet: alone or `--debug true|false`, the switch of every command (an error
    shows its traceback instead of one line); Transformers' debug features by name (`TrainingArguments.debug`:
    underflow_overflow, tpu_metrics_debug), which show tracebacks too. Sets `debug` (the features, as
    `TrainingArguments` reads them) and `traceback`."""

    def __call__(self, parser, namespace, values, option_string=None):
        features = [value for value in values if value in DEBUG_FEATURES]
        switch = [value for value in values if value not in DEBUG_FEATURES]
        try:
            traceback = string_to_bool(switch[0]) if switch else True
        except argparse.ArgumentTypeError:
            traceback = None
        if traceback is None or len(switch) > 1 or (switch and features):
            raise argparse.ArgumentError(
                self,
                f"expected true, false or Transformers' debug features "
                f"({', '.join(DEBUG_FEATURES)}), got {' '.join(values)}",
            )
        namespace.debug = " ".join(features)
        namespace.traceback = traceback


def build_parser(description: str | None = None) -> HfArgumentParser:
    """The options of a run: the fields of the dataclasses, in snake_case only, and `--debug` (`DebugAction`)."""
    # No abbreviations: a mistyped flag (--learning_rat) must be an error, not silently another option.
    parser = HfArgumentParser(
        (ModelArguments, DataArguments, AugmentationArguments, RunArguments, TrainingArguments),
        allow_abbrev=False,
        description=description,
        formatter_class=HelpFormatter,
    )
    # One spelling per option: HfArgumentParser adds a kebab-case one (--output-dir) to every snake_case field.
    for action in parser._actions:
        for option in [o for o in action.option_strings if o.startswith("--") and "-" in o[2:]]:
            action.option_strings.remove(option)
            del parser._option_string_actions[option]
    trainers = parser._option_string_actions.pop("--debug")  # DebugAction takes it over
    trainers.container._remove_action(trainers)
    parser.add_argument(
        "--debug",
        action=DebugAction,
        nargs="*",
        default="",
        metavar="true|false|FEATURE",
        help="on an error, show the traceback instead of one line (--debug, or --debug true|false); "
        f"or Transformers' debug features: {', '.join(DEBUG_FEATURES)} (these show "
        "tracebacks too)",
    )
    parser.set_defaults(traceback=False)
    return parser


def parse_args(argv=None, parser: HfArgumentParser | None = None):
    """The options of a run: the preset's values as defaults, then the command line (`argv`, default sys.argv),
    parsed by `parser` (default `build_parser()`); checked. Returns the five dataclasses."""
    parser = parser or build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    early = HfArgumentParser(RunArguments, allow_abbrev=False)
    early.add_argument("--do_eval", type=string_to_bool, default=None)
    early.add_argument("--eval_strategy", default=None)
    given = early.parse_known_args(argv)[0]
    preset = load_preset(given.preset)
    defaults = {**COMMON_DEFAULTS, **preset}
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(defaults) - known)
    if unknown:
        raise Error(f"preset {given.preset}: unknown option(s) {unknown}")
    check_preset_types(parser, preset, given.preset)
    # TrainingArguments turns do_eval on whenever an eval strategy is set, so `--do_eval false` on a preset
    # that evaluates every N steps would be ignored: switch the strategy off too, unless asked for explicitly.
    do_eval = given.do_eval if given.do_eval is not None else defaults.get("do_eval", True)
    if not do_eval:
        if given.eval_strategy not in (None, "no"):
            raise UsageError(f"--do_eval false contradicts --eval_strategy {given.eval_strategy}: drop one of them")
        defaults["eval_strategy"] = "no"
    bf16 = any(a == "--bf16" or a.startswith("--bf16=") for a in argv) or defaults.get("bf16")
    if not _accelerator_available() and (int(os.environ.get("WORLD_SIZE", "1")) > 1 or bf16):
        # No accelerator: only use_cpu makes Accelerate set up CPU data parallelism (gloo) for a process group of
        # torchrun or `accelerate launch` (without it each process would train its own copy), and lets --bf16
        # run as CPU autocast (TrainingArguments otherwise refuses bf16 without a GPU).
        defaults["use_cpu"] = True
    parser.set_defaults(**defaults)
    try:
        *parsed, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except Error:
        raise  # a folder that an option names is missing (--noise_dir): not a usage error
    except ValueError as error:  # a dataclass's own check (augmentation ranges, TrainingArguments)
        raise UsageError(f"{error}") from None
    if remaining:
        raise UsageError(f"unrecognized arguments: {' '.join(remaining)} (see ebranchformer-train --help)")
    # After the dataclasses, a namespace of what is no field: `traceback` (--debug), the command's concern.
    model_args, data_args, augment_args, run_args, training_args = parsed[:5]
    for name, value in REQUIRED.items():
        setattr(training_args, name, value)
    if training_args.dataloader_num_workers == 0:
        training_args.dataloader_persistent_workers = False  # torch refuses persistent workers without workers
    check_arguments(data_args, run_args, training_args)
    return model_args, data_args, augment_args, run_args, training_args


def check_preset_types(parser, values: dict, preset: str):
    """A preset's values become the parser's defaults, which argparse never converts: a value of the wrong type
    would pass unnoticed (a list for num_train_epochs) or fail deep inside. Check them as the command line is."""
    actions = {action.dest: action for action in parser._actions}
    for key, value in values.items():
        action = actions[key]
        many = action.nargs in ("+", "*") or (isinstance(action.nargs, int) and action.nargs > 1)
        if isinstance(value, list) and not many:
            raise Error(f"preset {preset}: {key} takes one value, got the list {value!r}")
        for item in value if isinstance(value, list) else [value]:
            if item is None or not callable(action.type):
                continue
            kind = getattr(action.type, "__name__", "value")
            if (action.type in (int, float) and isinstance(item, bool)) or not isinstance(
                item, (str, int, float, bool)
            ):
                raise Error(f"preset {preset}: {key}: {item!r} is not a {kind}")
            try:
                converted = action.type(item)
            except (TypeError, ValueError, argparse.ArgumentTypeError):
                raise Error(f"preset {preset}: {key}: {item!r} is not a valid {kind}") from None
            if action.type is int and isinstance(item, float) and converted != item:
                raise Error(f"preset {preset}: {key}: {item!r} is not a whole number")


def _accelerator_available() -> bool:
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def check_arguments(data_args, run_args, training_args):
    """Values that the libraries would accept and then fail on deep inside (or silently misuse)."""
    checks = [
        ("per_device_train_batch_size", training_args.per_device_train_batch_size, 1),
        ("per_device_eval_batch_size", training_args.per_device_eval_batch_size, 1),
        ("gradient_accumulation_steps", training_args.gradient_accumulation_steps, 1),
        ("max_eval_samples", data_args.max_eval_samples, 1),
        ("logged_predictions", run_args.logged_predictions, 0),
    ]
    for name, value, least in checks:
        if value is not None and value < least:
            raise UsageError(f"--{name} must be at least {least}, got {value}")
    if training_args.max_steps == 0 and training_args.do_train:
        raise UsageError("--max_steps 0 trains nothing: use --do_train false to only evaluate, or a positive number")
    if training_args.do_train and training_args.max_steps < 0 and training_args.num_train_epochs <= 0:
        raise UsageError(f"--num_train_epochs must be positive, got {training_args.num_train_epochs}")
    if data_args.train_subset_seconds is not None and not data_args.train_subset_seconds >= 0:
        raise UsageError(
            f"--train_subset_seconds must be positive (0: no subset), got {data_args.train_subset_seconds}"
        )
    if run_args.eval_every_epochs is not None and not run_args.eval_every_epochs > 0:
        raise UsageError(f"--eval_every_epochs must be positive, got {run_args.eval_every_epochs}")
    if data_args.verify_audio not in ("none", "header", "full"):
        raise UsageError(f"--verify_audio must be 'none', 'header' or 'full', got {data_args.verify_audio!r}")


def load_preset(preset: str, _seen=()) -> dict:
    """A preset's values; `base: NAME` in a preset starts from another preset's values."""
    path = Path(preset)
    if path.suffix not in (".yaml", ".yml", ".json"):
        path = PRESETS / f"{preset}.yaml"
        if not path.exists():
            names = sorted(p.stem for p in PRESETS.glob("*.yaml"))
            raise UsageError(f"unknown preset {preset!r}: use one of {names} or a .yaml/.json file")
    if not path.exists():
        raise Error(f"preset file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f) if path.suffix == ".json" else yaml.safe_load(f)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as error:
        raise Error(f"preset {path}: not valid {path.suffix[1:].upper()} ({error})") from None
    if not isinstance(values, dict):
        raise Error(f"preset {path}: expected a mapping of option names to values")
    if "base" in values:
        base = str(values.pop("base"))
        if Path(base).suffix in (".yaml", ".yml", ".json") and not Path(base).is_absolute():
            base = str(path.parent / base)  # a file named by a preset file: next to that file
        if base in _seen or base == preset or Path(base).resolve() == path.resolve():
            raise Error(f"preset {path}: 'base: {base}' makes a loop ({' -> '.join((*_seen, preset, base))})")
        values = {**load_preset(base, (*_seen, preset)), **values}
    return values


# --- the output folder --------------------------------------------------------------------------------


def last_complete_checkpoint(output_dir) -> str | None:
    """The newest checkpoint-N folder that was written to the end (the Trainer saves trainer_state.json last,
    so a save that was killed midway has none)."""
    folder = Path(output_dir)
    steps = []
    for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        suffix = path.name.rsplit("-", 1)[1]
        if suffix.isdigit() and (path / "trainer_state.json").is_file():
            steps.append((int(suffix), path))
    return str(max(steps)[1]) if steps else None


def prepare_output_dir(training_args, run_args) -> str | None:
    """Decides what happens to an earlier run in the output folder; returns the checkpoint to resume from.

    Refuses to train into a folder that holds an earlier run (its model would be replaced and the Trainer's
    `save_total_limit` rotation would delete its checkpoints) unless the user asks to resume or overwrite."""
    out = Path(training_args.output_dir)
    resume = training_args.resume_from_checkpoint
    if resume is not None and resume.lower() in ("last", "true"):
        resume = last_complete_checkpoint(out) if out.is_dir() else None
        if resume is None:
            raise Error(f"--resume_from_checkpoint last: no complete checkpoint in {out}")
        logger.info("resuming from the last complete checkpoint: %s", resume)
    if resume is not None:
        check_checkpoint(resume)
        return resume
    earlier = sorted(p.name for p in out.glob(f"{PREFIX_CHECKPOINT_DIR}-*")) if out.is_dir() else []
    earlier += [name for name in MODEL_FILES if (out / name).exists()]
    if not earlier or not training_args.do_train:
        return None
    if not run_args.overwrite:
        last = last_complete_checkpoint(out)
        resume_hint = f"--resume_from_checkpoint last (continues from {last}), " if last else ""
        raise Error(
            f"{out} holds an earlier run ({', '.join(earlier[:6])}{', ...' if len(earlier) > 6 else ''}). Pass "
            f"{resume_hint}--overwrite true (replaces it and deletes its checkpoints), or another "
            "--output_dir."
        )
    for name in earlier:
        if name.startswith(PREFIX_CHECKPOINT_DIR) and training_args.should_save:
            logger.warning("--overwrite: deleting the earlier run's %s", out / name)
            shutil.rmtree(out / name)
    return None


def check_checkpoint(path):
    """A checkpoint folder that resuming can read; errors name the folder and the file at fault."""
    from safetensors import SafetensorError, safe_open

    folder = Path(path)
    if not folder.is_dir():
        raise Error(f"--resume_from_checkpoint: no folder {folder}")
    if not (folder / "trainer_state.json").is_file():
        raise Error(
            f"--resume_from_checkpoint: {folder} is incomplete (no trainer_state.json; was the "
            "save interrupted?); use an earlier checkpoint or `last`"
        )
    weights = folder / "model.safetensors"
    if weights.is_file():
        try:
            with safe_open(weights, "pt") as f:
                for key in f.keys():  # noqa: SIM118 (a safetensors file, not a dict)
                    f.get_slice(key)
        except (SafetensorError, OSError) as error:
            raise Error(
                f"--resume_from_checkpoint: {weights} cannot be read ({error}); the file is corrupt "
                "or truncated, use an earlier checkpoint"
            ) from None


# --- data -----------------------------------------------------------------------------------------------


def prepare_train(data_args, processor, model, fastest=1.0):
    """The train selection. `fastest`: the highest speed-perturbation factor, which shortens audio and with
    it the CTC frames that the transcript must fit in."""
    dataset = load_golos(data_args.data_dir, data_args.train_domains, "train", decode="none", **_load_kwargs(data_args))
    reports = []
    if data_args.course_filter:
        dataset, report = course_filter(
            dataset, data_args.min_duration, data_args.max_duration, data_args.max_text_length
        )
        reports.append(report)
    if data_args.train_subset_seconds:
        dataset, report = random_subset_by_duration(dataset, data_args.train_subset_seconds, data_args.subset_seed)
        reports.append(report)
    dataset, report = normalize_and_check_texts(dataset, processor.tokenizer)
    reports.append(report)
    dataset, report = ctc_feasible(
        dataset, lambda durations: output_frames(model, processor.feature_extractor, [d / fastest for d in durations])
    )
    reports.append(report)
    for report in reports:
        logger.info("train selection: %s", report)
    if len(dataset) == 0:
        raise Error(
            f"the train set of {data_args.data_dir} is empty after the filters: "
            + "; ".join(str(r).split("\n")[0] for r in reports)
        )
    return dataset


def prepare_eval(data_args, tokenizer, train_dataset):
    sets = {}
    available = find_test_sets(data_args.data_dir)
    if data_args.eval_sets is None and not available:
        raise Error(
            f"{data_args.data_dir} has no test set (test_opus/<set>/manifest.jsonl) to evaluate on: "
            "pass --eval_sets train, or --do_eval false"
        )
    names = data_args.eval_sets.split(",") if data_args.eval_sets is not None else available
    for name in [s.strip() for s in names if s.strip()]:
        if name == "train":
            if train_dataset is None:
                raise UsageError("--eval_sets train needs --do_train true (it evaluates on the train selection)")
            sets[name] = train_dataset
            continue
        if name not in available:
            raise Error(
                f"unknown eval set {name!r}: use {', '.join(available)} (the test sets of "
                f"{data_args.data_dir}) or train"
            )
        dataset = load_golos(data_args.data_dir, name, "test", decode="none", **_load_kwargs(data_args))
        dataset, report = normalize_and_check_texts(dataset, tokenizer)
        logger.info("eval set %s: %s", name, report)
        if data_args.max_eval_samples:
            dataset = dataset.select(range(min(data_args.max_eval_samples, len(dataset))))
        if len(dataset) == 0:
            raise Error(f"eval set {name} of {data_args.data_dir} is empty")
        sets[name] = dataset
    return sets


def _load_kwargs(data_args):
    return {
        "skip_invalid": data_args.skip_invalid,
        "verify_audio": data_args.verify_audio,
        "cache_dir": data_args.dataset_cache_dir,
    }


# --- training -------------------------------------------------------------------------------------------


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Transformers' length-grouped order, drawn from (seed, epoch) alone. The Trainer's own sampler draws
    from the global torch generator, whose state at an epoch's start depends on what ran before it: a
    run resumed mid-epoch drew another order for that epoch (and skipped the wrong batches), and DataLoader
    workers shift the generator differently in a resumed run. The Trainer calls `set_epoch` (through
    Accelerate's DataLoaderShard) before every epoch."""

    def __init__(self, batch_size, lengths, seed):
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __iter__(self):
        seed = int(np.random.SeedSequence((self.seed, self.epoch)).generate_state(1, np.uint64)[0] >> 1)
        self.generator = torch.Generator().manual_seed(seed)  # (seed, epoch) as a pair: seed 1 epoch 2 != 2, 1
        return super().__iter__()


class CTCTrainer(Trainer):
    """Trainer with greedy CTC predictions that ignore padded frames, and non-finite losses skipped.

    Infinite CTC losses: utterances whose transcript cannot fit their frames are removed before training
    (`ctc_feasible`, counted), so the loss is finite unless something else is wrong (bad audio, a numerical
    problem). Such a batch is skipped, with no gradient, and counted (`nonfinite_losses` in the logs and
    results) instead of spoiling the weights; `config.ctc_zero_infinity` stays as the model's option for
    users of the model alone. Checking the loss reads one scalar on the host per step, the same read
    Trainer's own `logging_nan_inf_filter` makes."""

    def __init__(self, *args, card_metadata=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.card_metadata = card_metadata or {}
        self.nonfinite_losses = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = result[0] if return_outputs else result
        if model.training and not torch.isfinite(loss):
            # A zero that still touches every parameter: no gradient from this batch, and under DDP every
            # rank still takes part in the gradient all-reduce, so none waits forever.
            self.nonfinite_losses += 1
            logger.warning(
                "non-finite loss (%s) at step %d: batch skipped (no gradient); %d so far",
                loss.item(),
                self.state.global_step,
                self.nonfinite_losses,
            )
            loss = sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
            self.log({"nonfinite_losses": float(self.nonfinite_losses)})
            result = (loss, *result[1:]) if return_outputs else loss
        return result

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        sampler = self._plain_lengths(super()._get_train_sampler(train_dataset), dataset)
        if type(sampler) is LengthGroupedSampler:
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            sampler = EpochSeededLengthGroupedSampler(sampler.batch_size, lengths=sampler.lengths, seed=seed)
        return sampler

    def _get_eval_sampler(self, eval_dataset):
        return self._plain_lengths(super()._get_eval_sampler(eval_dataset), eval_dataset)

    def _plain_lengths(self, sampler, dataset):
        # The Trainer reads the lengths as `dataset["duration"]`: with datasets >= 4 a lazy column that
        # the length-grouped sampler indexes one row at a time, through decode_with_soundfile's transform,
        # which decodes that row's audio: every epoch (and every evaluation) would decode the whole set once
        # more just for the lengths (hours at the 1.1 M Golos lines). The plain column, read once through
        # Arrow, is the same list (0.1 s).
        if isinstance(getattr(sampler, "lengths", None), datasets.arrow_dataset.Column):
            sampler.lengths = column(dataset, self.args.length_column_name)
        return sampler

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        if logits is not None:
            logits = self.accelerator.unwrap_model(model).greedy_ids(logits, inputs["attention_mask"])
        return loss, logits, labels

    def _save(self, output_dir=None, state_dict=None):
        super()._save(output_dir, state_dict)
        publish_modes(output_dir or self.args.output_dir, recursive=False)  # safetensors writes 0600 files

    def create_model_card(self, *args, **kwargs):
        if self.is_world_process_zero():
            write_model_card(self.args.output_dir, **self.card_metadata)


class HubPushCallback(TrainerCallback):
    """Publishes while training as `--hub_strategy` says, through `ebranchformer_ru.publishing` (Trainer's own push would
    send `training_args.bin`, a pickle holding this machine's paths, and during training a repo without the model
    code): `every_save` each checkpoint's model folder; `checkpoint` also the checkpoint itself, optimizer state
    included, as `last-checkpoint/` (to resume elsewhere); `all_checkpoints` every checkpoint as
    `checkpoint-STEP/`; `end` nothing before the end. Uploads run in the background, one after another."""

    MODEL_ONLY = IGNORED + ["optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth", "trainer_state.json"]

    def __init__(self, publisher: Publisher, strategy: str):
        self.publisher, self.strategy, self.pending = publisher, strategy, []

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or self.strategy == "end":
            return
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        message = f"Training in progress, step {state.global_step}"
        self.pending.append(self.publisher.upload(checkpoint, message, ignore_patterns=self.MODEL_ONLY, blocking=False))
        if self.strategy in ("checkpoint", "all_checkpoints"):
            where = "last-checkpoint" if self.strategy == "checkpoint" else checkpoint.name
            self.pending.append(
                self.publisher.upload(
                    checkpoint, f"{message}, checkpoint", path_in_repo=where, ignore_patterns=NEVER, blocking=False
                )
            )

    def wait(self):
        """Waits for the uploads made while training; a failed one is a warning (the final upload follows)."""
        for future in self.pending:
            try:
                future.result()
            except Exception as error:
                logger.warning("a push to the Hub during training failed: %s: %s", type(error).__name__, error)
        self.pending = []


def make_compute_metrics(tokenizer, logged_predictions):
    """WER and CER of the Trainer's evaluation. The hypotheses are decoded greedily by `CTCVocabulary`, the one
    greedy decoding of the commands and `evaluate_model`: the WER training reports is the one they report."""
    vocabulary = CTCVocabulary.from_tokenizer(tokenizer)

    def compute_metrics(prediction):
        # The Trainer pads predictions and labels of different lengths with -100 when it gathers them.
        ids = np.where(prediction.predictions < 0, vocabulary.blank_id, prediction.predictions)
        hypotheses = [vocabulary.decode(row) for row in ids]
        labels = torch.as_tensor(prediction.label_ids)
        references = tokenizer.batch_decode(labels.masked_fill(labels < 0, tokenizer.pad_token_id), group_tokens=False)
        for reference, hypothesis in list(zip(references, hypotheses))[:logged_predictions]:
            logger.info("reference : %s", reference)
            logger.info("prediction: %s", hypothesis)
        return {
            "wer": wer(references, hypotheses),
            "cer": cer(references, hypotheses),
            "utterances": len(references),
        }

    return compute_metrics


def parse_overrides(text: str) -> dict:
    """'num_hidden_layers=4,dropout=0.05,streaming_chunk_size=none' -> values of the config's fields. (Transformers'
    `update_from_string` cannot set a field whose default is None.)"""
    known, values = EBranchformerConfig().to_dict(), {}
    for item in text.split(","):
        name, equals, value = (part.strip() for part in item.partition("="))
        if not equals or name not in known:
            raise ValueError(f"{item.strip()!r} is not field=value of a field of EBranchformerConfig")
        values[name] = value if isinstance(known[name], str) else parse_value(value)  # position_embedding_type=none
    return values


def parse_value(value: str):
    """true/false and none as such, integers and numbers as numbers, anything else as the string."""
    words = {"true": True, "false": False, "none": None, "null": None}
    if value.lower() in words:
        return words[value.lower()]
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def load_model_and_processor(model_args):
    if model_args.model_name_or_path:
        # Only passed when asked for: QuartzNet has no attention, and transformers picks SDPA where it exists.
        extra = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
        try:
            # float32 whatever the folder holds (Transformers loads a bf16 one in bf16): Trainer's mixed precision
            # keeps float32 weights and optimizer state, and float32 features would meet bf16 weights without it.
            model = load_ctc_model(
                model_args.model_name_or_path, model_args.trust_remote_code, dtype=torch.float32, **extra
            )
            processor = load_processor(model_args.model_name_or_path, model_args.trust_remote_code)
        except ModelLoadError as error:
            raise Error(f"--model_name_or_path: {error}") from None
        return model, processor
    config = EBranchformerConfig()
    if model_args.config_overrides:
        try:
            config = EBranchformerConfig(**{**config.to_dict(), **parse_overrides(model_args.config_overrides)})
        except ValueError as error:
            raise UsageError(f"--config_overrides {model_args.config_overrides!r}: {error}") from None
    model = EBranchformerForCTC._from_config(config, attn_implementation=model_args.attn_implementation or "sdpa")
    return model, EBranchformerProcessor()


def final_evaluation(trainer, eval_sets) -> dict:
    """Metrics of every eval set for the final model: those of an evaluation the Trainer ran at the last
    step, or a new evaluation when there was none (evaluating the same weights twice costs minutes)."""
    step = trainer.state.global_step
    logged = {}
    for entry in trainer.state.log_history:
        if entry.get("step") == step:
            logged.update({k: v for k, v in entry.items() if k.startswith("eval_")})
    if all(f"eval_{name}_wer" in logged for name in eval_sets):
        logger.info("final evaluation: the one at step %d", step)
        return logged
    return trainer.evaluate()


def run(argv=None):
    """Train and/or evaluate as the command line `argv` says (`parse_args`, then `train`); returns the trainer and
    the final metrics."""
    return train(*parse_args(argv))


def train(model_args, data_args, augment_args, run_args, training_args):
    """Train and/or evaluate as the options (`parse_args`) say; returns the trainer and the final metrics."""
    set_up_logging(training_args)
    # The world size makes Accelerate's process group, which the processes agree through before any work: one
    # run, started with the same options and data on every process, or all refuse.
    logger.info("processes: %d (%s)", training_args.world_size, training_args.parallel_mode.value)
    context = distributed.Context.from_env()
    with distributed.process_group(context):
        distributed.agree(
            context, lambda: run_description(model_args, data_args, augment_args, run_args, training_args)
        )
    check_data_dir(data_args)
    resume = prepare_output_dir(training_args, run_args) if training_args.do_train else None
    set_seed(training_args.seed)
    if training_args.device.type == "cpu":
        training_args.dataloader_pin_memory = False  # page-locked memory only helps copies to an accelerator

    model, processor = load_model_and_processor(model_args)
    logger.info("model summary:\n%s", model_summary(model))
    train_dataset, eval_sets = prepare_datasets(data_args, augment_args, run_args, training_args, processor, model)
    publisher, pusher = make_publisher(training_args)
    augmentation = None
    if train_dataset is not None and augment_args.enabled:
        # Training audio only: the eval sets (even --eval_sets train) are decoded separately, untouched.
        seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
        augmentation = AudioAugmentation(
            augment_args, seed=seed, sampling_rate=processor.feature_extractor.sampling_rate
        )
    logger.info("augmentation: %s; SpecAugment: %s", augment_args.describe(), spec_augment_summary(model.config))
    if train_dataset is not None:
        train_dataset = decode_with_soundfile(train_dataset, augmentation.transform if augmentation else None)
    eval_sets = {name: decode_with_soundfile(dataset) for name, dataset in eval_sets.items()}

    trainer = CTCTrainer(
        model=model,
        args=training_args,
        data_collator=DataCollatorCTC(processor),
        train_dataset=train_dataset,
        eval_dataset=eval_sets or None,
        processing_class=processor,
        compute_metrics=make_compute_metrics(processor.tokenizer, run_args.logged_predictions),
        card_metadata=card_metadata(
            model, model_args, data_args, augment_args, run_args, publisher.repo_id if publisher is not None else None
        ),
        callbacks=[c for c in (pusher, AugmentationCallback(augmentation) if augmentation else None) if c],
    )
    metrics = train_and_evaluate(trainer, eval_sets, resume)
    if publisher is not None:
        pusher.wait()  # the checkpoints' uploads, in the background until now
        try:
            publisher.upload(training_args.output_dir, "End of training")
        except PublishError as error:
            raise Error(f"--push_to_hub: {error}") from None
    return trainer, metrics


def set_up_logging(training_args):
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO,
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    # Our own messages (summary, selections, reference/prediction pairs) from the main process only.
    logger.setLevel(logging.INFO if training_args.should_log else logging.WARNING)
    datasets.utils.logging.set_verbosity_warning()
    transformers.utils.logging.set_verbosity_warning()


def prepare_datasets(data_args, augment_args, run_args, training_args, processor, model) -> tuple:
    """The train set (None without --do_train) and the eval sets, prepared once (the main process first); sets
    `eval_steps` from --eval_every_epochs."""
    with training_args.main_process_first(desc="preparing Golos"):
        try:
            fastest = max(augment_args.speed_perturbation, default=1.0)
            train_dataset = prepare_train(data_args, processor, model, fastest) if training_args.do_train else None
            eval_sets = prepare_eval(data_args, processor.tokenizer, train_dataset) if training_args.do_eval else {}
        except (OSError, ValueError) as error:  # golos names the folder, manifest, line or file at fault
            raise Error(f"{type(error).__name__}: {error}") from None
    if train_dataset is not None:
        logger.info("train: %d utterances, %.1f min", len(train_dataset), sum(column(train_dataset, "duration")) / 60)
        if run_args.eval_every_epochs:
            per_step = training_args.per_device_train_batch_size * training_args.world_size
            per_step *= training_args.gradient_accumulation_steps
            training_args.eval_steps = max(
                1, round(run_args.eval_every_epochs * math.ceil(len(train_dataset) / per_step))
            )
    return train_dataset, eval_sets


def make_publisher(training_args) -> tuple:
    """(Publisher, HubPushCallback) with --push_to_hub on the main process, else (None, None). Publishing is ours
    (`ebranchformer_ru.publishing`), so Trainer's own push is turned off. The repo is made (or checked) now: a
    refusal or an unreachable Hub stops the run before hours of training."""
    if not training_args.push_to_hub:
        return None, None
    training_args.push_to_hub = False
    if training_args.process_index != 0:
        return None, None
    repo = training_args.hub_model_id or Path(training_args.output_dir).resolve().name
    try:
        publisher = Publisher(
            repo,
            private=training_args.hub_private_repo,
            revision=training_args.hub_revision,
            token=training_args.hub_token,
            folder=training_args.output_dir,
        )
    except PublishError as error:
        raise Error(f"--push_to_hub: {error}") from None
    return publisher, HubPushCallback(publisher, HubStrategy(training_args.hub_strategy).value)


def train_and_evaluate(trainer, eval_sets, resume) -> dict:
    """Trains (with --do_train) and saves the model and its log; evaluates; writes the metrics and the card."""
    metrics = {}
    if trainer.args.do_train:
        with backward_outside_autocast(trainer.args.torch_compile):
            result = trainer.train(resume_from_checkpoint=resume)
        metrics.update(result.metrics)
        metrics["nonfinite_losses"] = trainer.nonfinite_losses
        trainer.save_model()  # model.safetensors, config, processor and the code for trust_remote_code
        trainer.save_state()  # trainer_state.json: the log history that scripts/plot_training.py draws
    if eval_sets:
        metrics.update(final_evaluation(trainer, eval_sets) if trainer.args.do_train else trainer.evaluate())
    trainer.log_metrics("all", metrics)
    if trainer.is_world_process_zero():
        trainer.save_metrics("all", metrics)
        trainer.card_metadata["metrics"] = metrics
        trainer.create_model_card()
    return metrics


def backward_outside_autocast(compiled: bool):
    """For a compiled model (--torch_compile), its backward traced without autocast, as Trainer runs the backward:
    eager PyTorch's semantics. By default AOTAutograd traces it under the forward's autocast, which made --bf16's
    float32 products (the CTC head, the subsampling: `Float32Linear`) bf16 ones in the backward (PyTorch's
    `backward_pass_autocast`; pytorch/pytorch#179804)."""
    from torch._functorch import config

    if not compiled or not hasattr(config, "backward_pass_autocast"):  # torch < 2.8 has no such setting
        return contextlib.nullcontext()
    return config.patch(backward_pass_autocast="off")


def check_data_dir(data_args):
    if not os.path.isdir(data_args.data_dir):
        raise Error(f"data folder not found: {data_args.data_dir} (expected train_opus/ and test_opus/ inside)")


# Options that differ between the processes of one run by design (each process's own GPU), or that say where a
# process caches the data, not what it trains on.
PER_PROCESS_OPTIONS = {"local_rank", "dataset_cache_dir"}
DATA_MANIFESTS = ("train_opus/manifest.jsonl", "test_opus/*/manifest.jsonl")


def run_description(model_args, data_args, augment_args, run_args, training_args) -> dict:
    """What makes a run as this process sees it, for the processes of a data-parallel run to agree on before any
    work (`distributed.agree`): every option as parsed (`PER_PROCESS_OPTIONS` aside), the files of the model it
    starts from by content, and the data folder's manifests by content."""
    check_data_dir(data_args)
    options = {}
    for arguments in (model_args, data_args, augment_args, run_args):
        options.update(asdict(arguments))
    options.update(training_args.to_dict())  # enums as their values, tokens hidden
    described = {f"--{name}": value for name, value in options.items() if name not in PER_PROCESS_OPTIONS}
    if model_args.model_name_or_path:
        described["model"] = distributed.model_digest(model_args.model_name_or_path)
    described["data"] = distributed.files_digest(Path(data_args.data_dir), DATA_MANIFESTS)
    return described


def spec_augment_summary(config) -> str:
    if not getattr(config, "apply_spec_augment", False):
        return "off"
    return (
        f"time masks {config.mask_time_length} frames covering ~{config.mask_time_prob:.0%}, "
        f"frequency masks {config.mask_feature_length} bins covering ~{config.mask_feature_prob:.0%}"
    )


def card_metadata(model, model_args, data_args, augment_args, run_args, model_id=None) -> dict:
    """What the model card says of this run. Local paths are written as names only: the card is published
    by `push_to_hub`, and a path of this machine means nothing elsewhere (and may say too much). The data is
    named for what it is (`describe_data`: the embedded corpus is synthesised speech, not Golos)."""
    dataset_type, data = describe_data(data_args.data_dir)
    base = model_args.model_name_or_path
    if base and os.path.isdir(base):
        base = None  # a local folder: no Hub id to link as base_model
    start = f", starting from `{Path(model_args.model_name_or_path).name}`" if model_args.model_name_or_path else ""
    preset = Path(run_args.preset).stem
    augmented = ""
    if augment_args.enabled or getattr(model.config, "apply_spec_augment", False):
        augmented = f" Augmentation: {augment_args.describe()}; SpecAugment: {spec_augment_summary(model.config)}."
    architecture = "e-branchformer" if model.config.model_type == "ebranchformer" else model.config.model_type
    return {
        "description": f"A CTC speech recogniser for Russian ({type(model).__name__}), trained with `train_ctc.py` "
        f"(preset `{preset}`) on the train set of {data}{start}.{augmented}",
        "tags": [architecture] + (["golos"] if dataset_type == "golos" else []),
        "base_model": base,
        "data_dir": data_args.data_dir,
        "model_id": model_id,
    }
