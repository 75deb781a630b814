"""Train and evaluate a CTC speech recogniser on Golos with the Hugging Face Trainer.

    python train_ctc.py                                   # preset "mini": the embedded corpus, 2 CPU cores
    python train_ctc.py --preset overfit                  # homework step 7: overfit ~10 minutes of train
    python train_ctc.py --preset course --data_dir /data/golos   # the course recipe on real Golos
    accelerate launch train_ctc.py --preset course --data_dir /data/golos   # the same on all GPUs (DDP)

Every option of `TrainingArguments` and of the dataclasses below is a command-line flag; a preset (a YAML
file in presets/, or any .yaml/.json path given to --preset) sets defaults that flags override.
"""

import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import evaluate
import torch
import transformers
import yaml
from transformers import (
    AutoModelForCTC,
    AutoProcessor,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    set_seed,
)

from golos import (
    EMBEDDED_CORPUS,
    SelectionReport,
    course_filter,
    decode_with_soundfile,
    load_golos,
    normalize_and_check_texts,
    random_subset_by_duration,
)
from modeling_ebranchformer import (
    EBranchformerConfig,
    EBranchformerCTCTokenizer,
    EBranchformerFeatureExtractor,
    EBranchformerForCTC,
    EBranchformerProcessor,
)
from modeling_ebranchformer.summary import format_counts, parameter_counts

ROOT = Path(__file__).resolve().parent
PRESETS = ROOT / "presets"
METRICS = ROOT / "metrics"
logger = logging.getLogger("train_ctc")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A from_pretrained folder or Hub id to start from; random weights if unset."}
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
    data_dir: str = field(default=str(EMBEDDED_CORPUS), metadata={"help": "Folder with train_opus/ and test_opus/."})
    train_domains: str = field(default="all", metadata={"help": "Train on 'crowd', 'farfield' or 'all'."})
    eval_sets: str = field(
        default="crowd,farfield",
        metadata={"help": "Comma-separated test domains to evaluate on; 'train' evaluates on the train selection."},
    )
    train_subset_seconds: float | None = field(
        default=None, metadata={"help": "Train on a random subset of about this many seconds (homework step 7)."}
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


def parse_arguments(argv=None):
    # No abbreviations: a mistyped flag (--learning_rat) must be an error, not silently another option.
    parser = HfArgumentParser((ModelArguments, DataArguments, RunArguments, TrainingArguments), allow_abbrev=False)
    argv = list(sys.argv[1:] if argv is None else argv)
    preset_parser = HfArgumentParser(RunArguments, allow_abbrev=False)
    run_args, _ = preset_parser.parse_known_args(argv)
    defaults = load_preset(run_args.preset)
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(defaults) - known)
    if unknown:
        raise SystemExit(f"preset {run_args.preset}: unknown option(s) {unknown}")
    parser.set_defaults(**defaults)
    *parsed, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if remaining:
        parser.error(f"unrecognized arguments: {' '.join(remaining)} (see python train_ctc.py --help)")
    return parsed


def load_preset(preset: str) -> dict:
    path = Path(preset)
    if path.suffix not in (".yaml", ".yml", ".json"):
        path = PRESETS / f"{preset}.yaml"
        if not path.exists():
            names = sorted(p.stem for p in PRESETS.glob("*.yaml"))
            raise SystemExit(f"unknown preset {preset!r}: use one of {names} or a .yaml/.json file")
    if not path.exists():
        raise SystemExit(f"preset file not found: {path}")
    with open(path, encoding="utf-8") as f:
        values = json.load(f) if path.suffix == ".json" else yaml.safe_load(f)
    if not isinstance(values, dict):
        raise SystemExit(f"preset {path}: expected a mapping of option names to values")
    return values


def load_metric(name: str):
    """evaluate.load of the module shipped in metrics/: the same computation as the Hub's, no network."""
    return evaluate.load(str(METRICS / name))


def output_frames(duration: float, stride: int = 4) -> int:
    """CTC frames for an utterance of `duration` seconds: ceil((1 + samples // 160) / stride)."""
    return math.ceil((1 + int(round(duration * 16000)) // 160) / stride)


def ctc_feasible(dataset: datasets.Dataset, stride: int):
    """Remove utterances whose transcript cannot fit their frames: CTC needs one frame per character
    plus a blank between repeated characters. Such labels give an infinite loss."""
    keep = []
    for index, (duration, text) in enumerate(zip(dataset["duration"], dataset["text"])):
        needed = len(text) + sum(a == b for a, b in zip(text, text[1:]))
        if needed <= output_frames(duration, stride):
            keep.append(index)
    report = SelectionReport("CTC length check", len(dataset))
    report.removed = {"with a transcript longer than the output frames": len(dataset) - len(keep)}
    return dataset.select(keep), report


def prepare_train(data_args, tokenizer, stride):
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
    for step in (lambda d: normalize_and_check_texts(d, tokenizer), lambda d: ctc_feasible(d, stride)):
        dataset, report = step(dataset)
        reports.append(report)
    for report in reports:
        logger.info("train selection: %s", report)
    if len(dataset) == 0:
        raise SystemExit(
            f"the train set of {data_args.data_dir} is empty after the filters: "
            + "; ".join(str(r).split("\n")[0] for r in reports)
        )
    return dataset


def prepare_eval(data_args, tokenizer, train_dataset):
    sets = {}
    for name in [s.strip() for s in data_args.eval_sets.split(",") if s.strip()]:
        if name == "train":
            sets[name] = train_dataset
            continue
        if name not in ("crowd", "farfield"):
            raise SystemExit(f"unknown eval set {name!r}: use crowd, farfield or train")
        dataset = load_golos(data_args.data_dir, name, "test", decode="none", **_load_kwargs(data_args))
        dataset, report = normalize_and_check_texts(dataset, tokenizer)
        logger.info("eval set %s: %s", name, report)
        if data_args.max_eval_samples:
            dataset = dataset.select(range(min(data_args.max_eval_samples, len(dataset))))
        if len(dataset) == 0:
            raise SystemExit(f"eval set {name} of {data_args.data_dir} is empty")
        sets[name] = dataset
    return sets


def _load_kwargs(data_args):
    return {"skip_invalid": data_args.skip_invalid, "verify_audio": data_args.verify_audio,
            "cache_dir": data_args.dataset_cache_dir}  # fmt: skip


@dataclass
class CTCCollator:
    """Decoded examples -> padded log-mel features, frame mask and -100-padded labels."""

    processor: EBranchformerProcessor

    def __call__(self, examples):
        audio = [example["audio"]["array"] for example in examples]
        batch = self.processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt")
        if "text" in examples[0]:
            batch["labels"] = self.processor.labels([e["text"] for e in examples], return_tensors="pt")["input_ids"]
        return batch


def greedy_ids(logits, attention_mask, model) -> torch.Tensor:
    """Best class per frame, -100 on frames that are padding (they would otherwise add junk characters)."""
    lengths = model.get_output_lengths(attention_mask.sum(-1))
    ids = logits.argmax(-1)
    return ids.masked_fill(torch.arange(ids.shape[1], device=ids.device) >= lengths[:, None], -100)


def decode_ids(tokenizer, ids, group_tokens=True) -> list[str]:
    ids = [[i for i in row if i >= 0] for row in ids.tolist()]
    return tokenizer.batch_decode(ids, group_tokens=group_tokens)


class CTCTrainer(Trainer):
    """Trainer with greedy CTC predictions that ignore padded frames, and non-finite losses skipped."""

    def __init__(self, *args, logged_predictions=3, card_metadata=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.logged_predictions = logged_predictions
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
                loss.item(), self.state.global_step, self.nonfinite_losses,
            )  # fmt: skip
            loss = sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
            self.log({"nonfinite_losses": float(self.nonfinite_losses)})
            result = (loss, *result[1:]) if return_outputs else loss
        return result

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        if logits is not None:
            logits = greedy_ids(logits, inputs["attention_mask"], self.accelerator.unwrap_model(model))
        return loss, logits, labels

    def create_model_card(self, *args, **kwargs):
        if self.is_world_process_zero():
            write_model_card(self.args.output_dir, **self.card_metadata)


def make_compute_metrics(tokenizer, logged_predictions):
    wer, cer = load_metric("wer"), load_metric("cer")

    def compute_metrics(prediction):
        hypotheses = decode_ids(tokenizer, torch.as_tensor(prediction.predictions))
        references = decode_ids(tokenizer, torch.as_tensor(prediction.label_ids), group_tokens=False)
        for reference, hypothesis in list(zip(references, hypotheses))[:logged_predictions]:
            logger.info("reference : %s", reference)
            logger.info("prediction: %s", hypothesis)
        return {
            "wer": wer.compute(predictions=hypotheses, references=references),
            "cer": cer.compute(predictions=hypotheses, references=references),
            "utterances": len(references),
        }

    return compute_metrics


def write_model_card(output_dir, base_model=None, data_dir=None, metrics=None, preset=None, source=None):
    """README.md with Hub metadata: model-index holds the WER/CER of every evaluated domain."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    metrics = metrics or {}
    results = []
    for key, value in sorted(metrics.items()):
        parts = key.split("_")  # eval_<domain>_<metric>
        if len(parts) == 3 and parts[0] == "eval" and parts[2] in ("wer", "cer"):
            results.append(EvalResult(
                task_type="automatic-speech-recognition", task_name="Speech recognition",
                dataset_type="golos", dataset_name=f"Golos ({parts[1]})", dataset_config=parts[1],
                dataset_split="test", metric_type=parts[2], metric_name=parts[2].upper(), metric_value=round(value, 4),
            ))  # fmt: skip
    data = ModelCardData(
        language="ru", license="apache-2.0", library_name="transformers", pipeline_tag="automatic-speech-recognition",
        tags=["ctc", "e-branchformer", "golos"], base_model=base_model, model_name=Path(output_dir).name,
        eval_results=results or None,
    )  # fmt: skip
    table = "\n".join(f"| {r.dataset_config} | {r.metric_name} | {100 * r.metric_value:.2f} % |" for r in results)
    text = f"""---
{data.to_yaml()}
---

# {Path(output_dir).name}

A CTC speech recogniser for Russian ({source or 'E-Branchformer'}), trained with `train_ctc.py`
(preset `{preset}`) on `{data_dir}`{f', starting from `{base_model}`' if base_model else ''}.

| test set | metric | value |
|---|---|---|
{table or '| - | - | not evaluated |'}

Greedy CTC decoding, no language model. Text normalised as the tokenizer does (lower case, ё -> е).

```python
from transformers import pipeline
asr = pipeline("automatic-speech-recognition", model="PATH_OR_REPO", trust_remote_code=True)
asr("speech.wav")  # 16 kHz mono
```
"""
    os.makedirs(output_dir, exist_ok=True)
    path = Path(output_dir) / "README.md"
    path.with_suffix(".md.tmp").write_text(text, encoding="utf-8")
    os.replace(path.with_suffix(".md.tmp"), path)
    return ModelCard(text)


def load_model_and_processor(model_args):
    if model_args.model_name_or_path:
        processor = AutoProcessor.from_pretrained(model_args.model_name_or_path, trust_remote_code=True)
        # Only passed when asked for: QuartzNet has no attention, and transformers picks SDPA where it exists.
        extra = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
        model = AutoModelForCTC.from_pretrained(model_args.model_name_or_path, trust_remote_code=True, **extra)
        return model, processor
    config = EBranchformerConfig()
    if model_args.config_overrides:
        config.update_from_string(model_args.config_overrides)
        config._validate()
    model = EBranchformerForCTC._from_config(config, attn_implementation=model_args.attn_implementation or "sdpa")
    processor = EBranchformerProcessor(EBranchformerFeatureExtractor(), EBranchformerCTCTokenizer())
    return model, processor


def model_summary(model) -> str:
    lines = [f"{'module':<40} {'type':<34} {'parameters':>12}"]
    for name, module in model.named_modules():
        if name.count(".") > 1 or not name or (name.count(".") == 1 and not name.startswith(model.base_model_prefix)):
            continue
        count = sum(p.numel() for p in module.parameters())
        kind = type(module).__name__ + (f" x{len(module)}" if isinstance(module, torch.nn.ModuleList) else "")
        lines.append(f"{name:<40} {kind:<34} {count:>12,}")
    return "\n".join(lines) + "\n" + format_counts(parameter_counts(model))


def run(argv=None):
    """Train and/or evaluate as the arguments say; returns the trainer and the final metrics."""
    model_args, data_args, run_args, training_args = parse_arguments(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO,
                        handlers=[logging.StreamHandler(sys.stdout)])  # fmt: skip
    # Our own messages (summary, selections, reference/prediction pairs) from the main process only.
    logger.setLevel(logging.INFO if training_args.should_log else logging.WARNING)
    datasets.utils.logging.set_verbosity_warning()
    transformers.utils.logging.set_verbosity_warning()
    if not os.path.isdir(data_args.data_dir):
        raise SystemExit(f"data folder not found: {data_args.data_dir} (expected train_opus/ and test_opus/ inside)")
    set_seed(training_args.seed)
    if training_args.device.type == "cpu":
        training_args.dataloader_pin_memory = False  # page-locked memory only helps copies to an accelerator

    model, processor = load_model_and_processor(model_args)
    logger.info("model summary:\n%s", model_summary(model))
    stride = getattr(model.config, "subsampling_stride", None) or model.config.inputs_to_logits_ratio // 160

    with training_args.main_process_first(desc="preparing Golos"):
        train_dataset = prepare_train(data_args, processor.tokenizer, stride) if training_args.do_train else None
        eval_sets = prepare_eval(data_args, processor.tokenizer, train_dataset) if training_args.do_eval else {}
    if train_dataset is not None:
        logger.info("train: %d utterances, %.1f min", len(train_dataset), sum(train_dataset["duration"]) / 60)
        if run_args.eval_every_epochs:
            per_step = training_args.per_device_train_batch_size * training_args.world_size
            per_step *= training_args.gradient_accumulation_steps
            training_args.eval_steps = max(1, round(run_args.eval_every_epochs * math.ceil(len(train_dataset) / per_step)))
    train_dataset = decode_with_soundfile(train_dataset) if train_dataset is not None else None
    eval_sets = {name: decode_with_soundfile(dataset) for name, dataset in eval_sets.items()}

    trainer = CTCTrainer(
        model=model,
        args=training_args,
        data_collator=CTCCollator(processor),
        train_dataset=train_dataset,
        eval_dataset=eval_sets or None,
        processing_class=processor,
        compute_metrics=make_compute_metrics(processor.tokenizer, run_args.logged_predictions),
        logged_predictions=run_args.logged_predictions,
        card_metadata={"base_model": model_args.model_name_or_path, "data_dir": data_args.data_dir,
                       "preset": run_args.preset, "source": type(model).__name__},  # fmt: skip
    )

    metrics = {}
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        metrics.update(result.metrics)
        metrics["nonfinite_losses"] = trainer.nonfinite_losses
        trainer.save_model()  # model.safetensors, config, processor and the code for trust_remote_code
        trainer.save_state()  # trainer_state.json: the log history that scripts/plot_training.py draws
    if eval_sets:
        metrics.update(trainer.evaluate())
    trainer.log_metrics("all", metrics)
    if trainer.is_world_process_zero():
        trainer.save_metrics("all", metrics)
        trainer.card_metadata["metrics"] = metrics
        trainer.create_model_card()
    if training_args.push_to_hub:
        trainer.push_to_hub()
    return trainer, metrics


if __name__ == "__main__":
    run()
