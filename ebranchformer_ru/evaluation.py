"""WER and CER of a model folder on the Golos test sets (homework step 5).

    python evaluate_ctc.py MODEL_FOLDER [--data_dir ebranchformer_ru/golos/golos_mini] [--sets crowd,farfield,heldout_voice] [--output_dir DIR]

Writes to DIR (default MODEL_FOLDER/eval): `results.md` and `results.json` (one row per test set) and
`utterances_<set>.jsonl` (id, reference, hypothesis and the word errors of every utterance). Every test set
is loaded and checked before anything is written, and the files of one evaluation are written together.

When the folder holds a language model (`build_lm.py`), every set is decoded twice from the same logits,
greedily and by beam search with the LM, and the results have both: `WER`/`CER` (greedy) and
`LM WER`/`LM CER`, the LM hypothesis of every utterance, and the decoding settings (`--no_lm` skips it;
`--beam_width`, `--alpha`, `--beta` override the folder's attrs.json; `--update_model_card` writes both
figures into the folder's README.md).

Under `torchrun` or `accelerate launch` every test set is split between the processes by duration, each
decodes its share (on GPU LOCAL_RANK with `--device cuda`), and rank 0 gathers the hypotheses and writes the
same files one process writes.
"""

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from ebranchformer_ru.golos import EMBEDDED_CORPUS, decode_with_soundfile, find_test_sets, load_golos, normalize_and_check_texts
from modeling_ebranchformer.beam_search import DEFAULT_BEAM_WIDTH

from . import distributed
from .files import atomic_write_files
from .inference import InferenceError, LMDecoder, TorchBackend, Transcriber
from .metrics import cer, wer, word_errors
from .commands.cli import positive_int

logger = logging.getLogger("evaluate_ctc")
DATA_DIR_HELP = ("Golos-layout folder holding test_opus/<set>/manifest.jsonl (crowd, farfield, and any other set) "
                 "(NeMo manifests: one JSON object per line with audio_filepath, text, duration); "
                 "default: the embedded corpus")  # fmt: skip


def set_log_probs(transcriber, dataset) -> list:
    """Log-probabilities (frames, labels) of every utterance of a test set, in the dataset's order, through the
    inference core; audio is read a batch at a time, shortest first (batches of similar length). Greedy and LM
    decoding, and every LM setting being tuned, then decode the same logits."""
    order = sorted(range(len(dataset)), key=dataset["duration"].__getitem__)
    audio = decode_with_soundfile(dataset)
    log_probs = [None] * len(dataset)
    for start in range(0, len(order), transcriber.batch_size):
        indices = order[start : start + transcriber.batch_size]
        for index, (values, _) in zip(indices, transcriber.log_probs([audio[i]["audio"]["array"] for i in indices])):
            log_probs[index] = values
    return log_probs


def decode_all(transcriber, log_probs, decoder="greedy") -> list[str]:
    """Texts of `set_log_probs`' output with `decoder` ("greedy" or an `LMDecoder`)."""
    return [transcriber.decode(values, None, decoder)["text"] for values in log_probs]


def lm_decoder_of(processor, alpha=None, beta=None, **options):
    """An `LMDecoder` over the processor's language model (None without one); `alpha`/`beta` override attrs.json."""
    decoder = getattr(processor, "decoder", None)
    if decoder is None:
        return None
    from modeling_ebranchformer.ngram import LanguageModelError

    try:
        decoder.reset_params(alpha=alpha, beta=beta)
        return LMDecoder(decoder, **{"beam_width": DEFAULT_BEAM_WIDTH, **{k: v for k, v in options.items() if v is not None}})
    except (LanguageModelError, InferenceError) as error:
        raise SystemExit(str(error)) from None


def load_test_sets(data_dir, sets, tokenizer, max_samples=None) -> dict:
    """Each requested test set, normalised and checked; raises before any work if one is missing or empty."""
    loaded = {}
    for name in sets:
        dataset = load_golos(data_dir, name, "test", decode="none")
        dataset, report = normalize_and_check_texts(dataset, tokenizer)
        logger.info("%s: %s", name, report)
        if max_samples:
            dataset = dataset.select(range(min(max_samples, len(dataset))))
        if len(dataset) == 0:
            raise SystemExit(f"test set {name} of {data_dir} has no utterances left to evaluate ({report})")
        loaded[name] = (dataset, report)
    return loaded


def evaluate_model(model_path, data_dir=EMBEDDED_CORPUS, sets=None, output_dir=None,
                   batch_size=16, max_samples=None, trust_remote_code=False, use_lm=True, lm_options=None,
                   update_model_card=False, device="cpu", threads=None, context=None):  # fmt: skip
    """The results of every set (rows), on every process; with several processes (`context`, default: from the
    launcher's environment) rank 0 writes the files."""
    context = distributed.Context.from_env() if context is None else context
    with distributed.process_group(context):
        return _evaluate_model(model_path, data_dir, sets, output_dir, batch_size, max_samples, trust_remote_code,
                               use_lm, lm_options, update_model_card, device, threads, context)  # fmt: skip


def _evaluate_model(model_path, data_dir, sets, output_dir, batch_size, max_samples, trust_remote_code, use_lm,
                    lm_options, update_model_card, device, threads, context):  # fmt: skip
    output_dir = Path(output_dir or Path(model_path) / "eval")
    # the place for the results, checked before hours of transcription (made only when they are written)
    existing = next(p for p in [output_dir, *output_dir.parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise SystemExit(f"--output_dir {output_dir}: {existing} is {'a file' if not existing.is_dir() else 'not writable'};"
                         " choose another folder for the results")  # fmt: skip
    try:
        backend = TorchBackend.from_folder(model_path, context.device(device), context.threads(threads),
                                           trust_remote_code=trust_remote_code)  # fmt: skip
    except InferenceError as error:
        raise SystemExit(str(error)) from None
    processor = backend.processor
    sets = sets or find_test_sets(data_dir)
    try:
        test_sets = load_test_sets(data_dir, sets, processor.tokenizer, max_samples)
    except (OSError, ValueError) as error:  # the message names the folder, manifest or line
        raise SystemExit(f"{type(error).__name__}: {error}") from None
    transcriber = Transcriber(backend, batch_size)
    # with a language model: the same logits decoded greedily and with the LM
    lm_decoder = lm_decoder_of(processor, **(lm_options or {})) if use_lm else None
    decoding = lm_decoder.settings if lm_decoder is not None else None
    rows, files = [], {}
    for name, (dataset, report) in test_sets.items():
        references = dataset["text"]
        hypotheses, lm_hypotheses = decode_set(transcriber, dataset, lm_decoder, context)
        lines = []
        for index, (id_, reference, hypothesis) in enumerate(zip(dataset["id"], references, hypotheses)):
            lines.append({"id": id_, "reference": reference, "hypothesis": hypothesis,
                          **word_errors(reference, hypothesis)})  # fmt: skip
            if lm_hypotheses is not None:
                lines[-1]["lm_hypothesis"] = lm_hypotheses[index]
                lines[-1]["lm_errors"] = word_errors(reference, lm_hypotheses[index])
                del lines[-1]["lm_errors"]["reference_words"]
        files[output_dir / f"utterances_{name}.jsonl"] = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines)
        rows.append({
            "set": name, "utterances": len(references), "words": sum(len(r.split()) for r in references),
            "hours": sum(dataset["duration"]) / 3600, "excluded": report.total - report.kept,
            "wer": wer(references, hypotheses), "cer": cer(references, hypotheses),
        })  # fmt: skip
        if lm_hypotheses is not None:
            rows[-1]["lm_wer"] = wer(references, lm_hypotheses)
            rows[-1]["lm_cer"] = cer(references, lm_hypotheses)
    lm = decoding is not None
    table = ["| test set | utterances | words | hours | WER | CER |" + (" LM WER | LM CER |" if lm else ""),
             "|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if lm else "")]  # fmt: skip
    table += [f"| {r['set']} | {r['utterances']} | {r['words']} | {r['hours']:.3f} | {100 * r['wer']:.2f} % | "
              f"{100 * r['cer']:.2f} % |" + (f" {100 * r['lm_wer']:.2f} % | {100 * r['lm_cer']:.2f} % |" if lm else "")
              for r in rows]  # fmt: skip
    header = f"Model: `{model_path}`, data: `{data_dir}`\n\n"
    if lm:
        header += ("WER/CER: greedy decoding; LM WER/CER: beam search with the language model ("
                   + ", ".join(f"{k} {v}" for k, v in decoding.items()) + ")\n\n")  # fmt: skip
    files[output_dir / "results.md"] = header + "\n".join(table) + "\n"
    files[output_dir / "results.json"] = json.dumps({"model": str(model_path), "data_dir": str(data_dir),
                                                     **({"lm_decoding": decoding} if lm else {}),
                                                     "results": rows}, indent=1)  # fmt: skip
    if not context.is_main:
        return rows
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_files(files)
    if update_model_card:
        from ebranchformer_ru.model_card import write_decoding_results

        write_decoding_results(model_path, rows, decoding, data_dir)
    print("\n".join(table))
    return rows


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




def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a from_pretrained folder (or Hub id)")
    parser.add_argument("--data_dir", default=str(EMBEDDED_CORPUS), help=DATA_DIR_HELP)
    parser.add_argument("--sets", help="comma-separated test sets (folders of DATA_DIR/test_opus/ with a manifest.jsonl; "
                                        "default: all of them, e.g. crowd,farfield,heldout_voice for the embedded corpus)")
    parser.add_argument("--output_dir", help="where the results go; default: MODEL/eval")
    parser.add_argument("--batch_size", type=positive_int, default=16, help="utterances per forward pass")
    parser.add_argument("--max_samples", type=positive_int, help="evaluate on the first N utterances of each set")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: with several processes (torchrun), each on the GPU numbered LOCAL_RANK")  # fmt: skip
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads per process (default: the library's; with several processes, this "
                             "machine's cores divided between them)")  # fmt: skip
    parser.add_argument("--trust_remote_code", action="store_true",
                        help="run Python code from the model folder or repo (only for model types this package "
                             "does not provide; only if you trust it)")  # fmt: skip
    # language model (issue #11)
    parser.add_argument("--no_lm", action="store_true", help="greedy decoding only, even where the folder has an LM")
    parser.add_argument("--beam_width", type=positive_int, help="beam width of LM decoding (default 32)")
    parser.add_argument("--alpha", type=float, help="LM weight (default: the folder's attrs.json)")
    parser.add_argument("--beta", type=float, help="word insertion bonus (default: the folder's attrs.json)")
    parser.add_argument("--best_alignment", action="store_true",
                        help="score a text by its best CTC alignment instead of the sum of all (Viterbi); with "
                             "--alpha 0 --beta 0 this reproduces greedy decoding")  # fmt: skip
    parser.add_argument("--update_model_card", action="store_true",
                        help="write the greedy (and LM) figures into the model folder's README.md")  # fmt: skip
    return parser


def run(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    if not os.path.isdir(args.data_dir):
        raise SystemExit(f"data folder not found: {args.data_dir}")
    available = find_test_sets(args.data_dir)
    if args.sets is None:
        sets = available
    else:
        sets = list(dict.fromkeys(s.strip() for s in args.sets.split(",") if s.strip()))
        if not sets:
            parser.error(f"--sets names no test set: the test sets of {args.data_dir} are {', '.join(available)}")
        if unknown := [s for s in sets if s not in available]:
            parser.error(f"unknown test set(s) {unknown}: the test sets of {args.data_dir} are {', '.join(available)}")
    if not sets:
        raise SystemExit(f"{args.data_dir}: no test set (no test_opus/<set>/manifest.jsonl)")
    return evaluate_model(args.model, args.data_dir, sets, args.output_dir, args.batch_size, args.max_samples,
                          args.trust_remote_code, use_lm=not args.no_lm, update_model_card=args.update_model_card,
                          device=args.device, threads=args.threads,
                          lm_options={"beam_width": args.beam_width, "alpha": args.alpha, "beta": args.beta,
                                      "sum_alignments": False if args.best_alignment else None})  # fmt: skip


def main(argv=None) -> int:
    """The command line: `run`, exit status 0 (errors exit with their message)."""
    run(argv)
    return 0
