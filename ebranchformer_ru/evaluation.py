"""WER and CER of a model folder on the test sets of a Golos-layout folder (`ebranchformer-evaluate`,
`ebranchformer_ru.commands.evaluate`): `evaluate_model`.

Writes to `output_dir` (default MODEL/eval): `results.md` and `results.json` (one row per test set) and
`utterances_<set>.jsonl` (id, reference, hypothesis and the word errors of every utterance). Every test set
is loaded and checked before anything is written, and the files of one evaluation are written together.

When the folder holds a language model (`build_lm.py`), every set is decoded twice from the same logits,
greedily and by beam search with the LM, and the results have both: `WER`/`CER` (greedy) and
`LM WER`/`LM CER`, the LM hypothesis of every utterance, and the decoding settings (`decoder="greedy"` skips
it, `decoder="lm"` requires it; `lm_options` (beam_width, alpha, beta, ...) override the folder's attrs.json;
`update_model_card` writes both figures into the folder's README.md).

Under `torchrun` or `accelerate launch` the processes first agree that they were started on one evaluation
(`evaluation_description`: the model and decoding, the data, sets and sample count), or all refuse before any
work. Every test set is split between the processes by duration, each decodes its share (on GPU LOCAL_RANK with
`--device cuda`), and rank 0 gathers the hypotheses and writes the same files one process writes.
"""

import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

from ebranchformer_ru.golos import EMBEDDED_CORPUS
from modeling_ebranchformer.beam_search import ALPHA_RANGE, BETA_RANGE, DEFAULT_BEAM_WIDTH, check_range
from modeling_ebranchformer.ngram import LanguageModelError

from . import distributed
from .errors import Error, UsageError
from .files import atomic_write_files
from .inference import (
    InferenceError,
    TorchBackend,
    Transcriber,
    choose_test_sets,
    decode_all,
    load_decoder,
    load_test_sets,
    resolved_dtype,
    set_log_probs,
)
from .itn import InverseNormalizer
from .metrics import cer, wer, word_errors

logger = logging.getLogger("evaluate_ctc")


@dataclass(frozen=True)
class Evaluation:
    """What `evaluate_model` was asked (its parameters)."""

    model_path: str
    data_dir: str
    sets: list | None
    output_dir: Path
    batch_size: int
    max_samples: int | None
    trust_remote_code: bool
    decoder: str | None
    lm_options: dict
    update_model_card: bool
    device: str
    threads: int | None
    dtype: str = "float32"
    torch_compile: bool = False
    itn: bool = False  # the normalised hypotheses beside the spoken ones; WER stays on the spoken text
    itn_cache_dir: str | None = None


def evaluate_model(
    model_path,
    data_dir=EMBEDDED_CORPUS,
    sets=None,
    output_dir=None,
    batch_size=16,
    max_samples=None,
    trust_remote_code=False,
    decoder=None,
    lm_options=None,
    update_model_card=False,
    device="cpu",
    threads=None,
    context=None,
    dtype="float32",
    itn=False,
    itn_cache_dir=None,
    torch_compile=False,
):
    """The results of every set (rows), on every process; with several processes (`context`, default: from the
    launcher's environment) rank 0 writes the files. `decoder`: None decodes with the folder's language model
    where it has one (and greedily always), "greedy" greedily only, "lm" requires the language model."""
    if decoder not in (None, "greedy", "lm"):
        raise UsageError(f"decoder must be None, 'greedy' or 'lm', got {decoder!r}")
    job = Evaluation(
        str(model_path),
        data_dir,
        sets,
        Path(output_dir or Path(model_path) / "eval"),
        batch_size,
        max_samples,
        trust_remote_code,
        decoder,
        lm_options or {},
        update_model_card,
        device,
        threads,
        dtype,
        torch_compile,
        itn,
        itn_cache_dir,
    )
    context = distributed.Context.from_env() if context is None else context
    with distributed.process_group(context):
        # The place for the results is checked before any work; where it would lie in a model folder that is not
        # here (a Hub id, or a mistyped folder), after loading, which names a missing folder.
        place_first = output_dir is not None or Path(model_path).exists()
        sets = distributed.together(context, lambda: choose(job, place_first))
        job = replace(job, sets=sets)
        # Before any work: every process was started on this evaluation (one model, decoder, data and sets), or
        # all refuse.
        distributed.agree(context, lambda: evaluation_description(job, context.device(job.device)))
        transcriber, lm_decoder, test_sets, itn = distributed.together(context, lambda: load(job, context, place_first))
        rows, files = score(job, transcriber, lm_decoder, test_sets, itn, context)
        if context.is_main:
            write_results(job, rows, files, lm_decoder)
        return rows


def choose(job: Evaluation, place_first: bool) -> list[str]:
    if place_first:
        check_results_place(job.output_dir)
    return choose_test_sets(job.data_dir, job.sets)


def load(job: Evaluation, context, place_first: bool) -> tuple:
    """The transcriber, the LM decoder (None: greedy only), the test sets and the inverse normaliser (--itn, on
    the main process), each checked before any work."""
    backend = TorchBackend.from_folder(
        job.model_path,
        context.device(job.device),
        context.threads(job.threads),
        trust_remote_code=job.trust_remote_code,
        language_model=False,
        dtype=job.dtype,
        torch_compile=job.torch_compile,
    )
    if not place_first:
        check_results_place(job.output_dir)
    options = {"beam_width": DEFAULT_BEAM_WIDTH, **{k: v for k, v in job.lm_options.items() if v is not None}}
    alpha, beta = options.pop("alpha", None), options.pop("beta", None)
    try:
        check_range("alpha", alpha, *ALPHA_RANGE)
        check_range("beta", beta, *BETA_RANGE)
    except LanguageModelError as error:
        raise UsageError(str(error)) from None
    try:  # with a language model: the same logits decoded greedily and with the LM
        lm_decoder = load_decoder(job.model_path, job.decoder or "auto", alpha, beta, **options)
    except InferenceError as error:
        raise Error(f"--decoder {job.decoder}: {error}" if job.decoder else str(error)) from None
    test_sets = load_test_sets(job.data_dir, job.sets, backend.processor.tokenizer, job.max_samples)
    for name, (_, report) in test_sets.items():
        logger.info("%s: %s", name, report)
    itn = InverseNormalizer(job.itn_cache_dir, log=logger.info) if job.itn and context.is_main else None
    return Transcriber(backend, job.batch_size), lm_decoder, test_sets, itn


def score(job: Evaluation, transcriber, lm_decoder, test_sets, itn, context) -> tuple[list, dict]:
    """The rows of the results and the files that hold them, {path: text}."""
    rows, files = [], {}
    for name, (dataset, report) in test_sets.items():
        row, utterances = score_set(
            name, dataset, report, *decode_set(transcriber, dataset, lm_decoder, context), itn=itn
        )
        rows.append(row)
        files[job.output_dir / f"utterances_{name}.jsonl"] = utterances
    decoding = lm_decoder.settings if lm_decoder is not None else None
    header = f"Model: `{job.model_path}`, data: `{job.data_dir}`\n\n"
    if itn is not None:
        header += (
            "WER on the spoken-form text (as the references are written); the hypotheses with numbers as digits "
            "(--itn) are in utterances_*.jsonl as itn_hypothesis\n\n"
        )
    if decoding:
        settings = ", ".join(f"{k} {v}" for k, v in decoding.items())
        header += f"WER/CER: greedy decoding; LM WER/CER: beam search with the language model ({settings})\n\n"
    files[job.output_dir / "results.md"] = header + "\n".join(results_table(rows, decoding is not None)) + "\n"
    results = {"model": job.model_path, "data_dir": str(job.data_dir)}
    results |= {"lm_decoding": decoding} if decoding else {}
    if transcriber.backend.dtype != "float32":  # as --dtype auto chose
        results["dtype"] = transcriber.backend.dtype
    if job.torch_compile:
        results["torch_compile"] = True
    files[job.output_dir / "results.json"] = json.dumps(results | {"results": rows}, indent=1)
    return rows, files


def write_results(job: Evaluation, rows, files, lm_decoder):
    """The results' files, written together; the model card's figures when asked; the table printed."""
    job.output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_files(files)
    decoding = lm_decoder.settings if lm_decoder is not None else None
    if job.update_model_card:
        from ebranchformer_ru.model_card import write_decoding_results

        write_decoding_results(job.model_path, rows, decoding, job.data_dir)
    print("\n".join(results_table(rows, decoding is not None)))


def evaluation_description(job: Evaluation, device: str) -> dict:
    """What makes an evaluation's results as this process sees it, for the processes to agree on before any
    work (`distributed.agree`): the model's files by content (and its language model's unless decoding greedily),
    the decoding options, the data folder, its test sets and their manifests by content, the sample count and
    where the results go. Not --batch_size, --device or --threads, which give the same results."""
    manifests = [f"test_opus/{name}/manifest.jsonl" for name in job.sets]
    greedy = job.decoder == "greedy"
    return {
        "model": distributed.model_digest(job.model_path),
        "language model": distributed.language_model_digest(job.model_path) if not greedy else None,
        "--decoder": job.decoder,
        "LM decoding": {name: value for name, value in job.lm_options.items() if value is not None},
        "--data_dir": os.path.abspath(os.path.expanduser(job.data_dir)),
        "--sets": list(job.sets),
        "manifests": distributed.files_digest(Path(job.data_dir).expanduser(), manifests),
        "--max_samples": job.max_samples,
        "--output_dir": os.path.abspath(job.output_dir),
        "--update_model_card": job.update_model_card,
        "--dtype": resolved_dtype(job.model_path, job.dtype, device),  # as this machine resolves auto
        "--torch_compile": job.torch_compile,
    }


def score_set(name, dataset, report, hypotheses, lm_hypotheses, itn=None) -> tuple[dict, str]:
    """A test set's row of the results and its `utterances_<set>.jsonl` text (with `itn`, an `InverseNormalizer`,
    each hypothesis normalised beside it; the scores stay on the spoken-form text)."""
    references = dataset["text"]
    lines = []
    for index, (id_, reference, hypothesis) in enumerate(zip(dataset["id"], references, hypotheses)):
        lines.append(
            {"id": id_, "reference": reference, "hypothesis": hypothesis, **word_errors(reference, hypothesis)}
        )
        if lm_hypotheses is not None:
            lines[-1]["lm_hypothesis"] = lm_hypotheses[index]
            lines[-1]["lm_errors"] = word_errors(reference, lm_hypotheses[index])
            del lines[-1]["lm_errors"]["reference_words"]
        if itn is not None:
            lines[-1]["itn_hypothesis"] = itn(lm_hypotheses[index] if lm_hypotheses is not None else hypothesis)
    row = {
        "set": name,
        "utterances": len(references),
        "words": sum(len(r.split()) for r in references),
        "hours": sum(dataset["duration"]) / 3600,
        "excluded": report.total - report.kept,
        "wer": wer(references, hypotheses),
        "cer": cer(references, hypotheses),
    }
    if lm_hypotheses is not None:
        row["lm_wer"] = wer(references, lm_hypotheses)
        row["lm_cer"] = cer(references, lm_hypotheses)
    return row, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines)


def results_table(rows, lm: bool) -> list[str]:
    """The Markdown table of the results, a line each."""
    table = [
        "| test set | utterances | words | hours | WER | CER |" + (" LM WER | LM CER |" if lm else ""),
        "|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if lm else ""),
    ]
    table += [
        f"| {r['set']} | {r['utterances']} | {r['words']} | {r['hours']:.3f} | {100 * r['wer']:.2f} % | "
        f"{100 * r['cer']:.2f} % |" + (f" {100 * r['lm_wer']:.2f} % | {100 * r['lm_cer']:.2f} % |" if lm else "")
        for r in rows
    ]
    return table


def check_results_place(output_dir: Path):
    """Refuses a results folder that cannot be made (it is made only when the results are written)."""
    existing = next(p for p in [output_dir, *output_dir.parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise Error(
            f"--output_dir {output_dir}: {existing} is {'a file' if not existing.is_dir() else 'not writable'};"
            " choose another folder for the results"
        )


def decode_set(transcriber, dataset, lm_decoder, context) -> tuple[list[str], list[str] | None]:
    """Greedy (and LM) hypotheses of every utterance of a test set, in the dataset's order; with several
    processes each decodes its share (`split_by_duration`) and every one gets all hypotheses."""
    if context.world_size == 1:
        share, subset = range(len(dataset)), dataset
    else:
        share = distributed.split_by_duration(dataset["duration"], context.world_size)[context.rank]
        subset = dataset.select(share)
    log_probs = set_log_probs(transcriber, subset) if len(share) else []
    hypotheses = decode_all(transcriber, log_probs)
    lm_hypotheses = decode_all(transcriber, log_probs, lm_decoder) if lm_decoder is not None else None
    if context.world_size == 1:
        return hypotheses, lm_hypotheses
    merged, merged_lm = [None] * len(dataset), [None] * len(dataset) if lm_decoder is not None else None
    for indices, greedy, lm in context.all_gather((list(share), hypotheses, lm_hypotheses)):
        for position, index in enumerate(indices):
            merged[index] = greedy[position]
            if merged_lm is not None:
                merged_lm[index] = lm[position]
    return merged, merged_lm
