"""The model card (README.md with Hub metadata) that `train_ctc.py` and `convert_checkpoint.py` write."""

from pathlib import Path

from .files import atomic_write_text

USAGE = """```python
import soundfile as sf
from transformers import pipeline

asr = pipeline("automatic-speech-recognition", model="{model}", trust_remote_code=True)
audio, rate = sf.read("speech.opus", dtype="float32")  # 16 kHz mono; soundfile reads Opus, FLAC, WAV
asr({{"raw": audio, "sampling_rate": rate}})
```

`asr("speech.wav")` (a path) also works where FFmpeg is installed: the pipeline decodes paths with it."""


RESULTS_START, RESULTS_END = "<!-- results -->", "<!-- /results -->"  # the block write_decoding_results replaces


def eval_results(metrics: dict) -> list:
    """Hub `EvalResult`s from metrics named `eval_<test set>_<wer|cer>` (what `train_ctc.py` logs)."""
    from huggingface_hub import EvalResult

    results = []
    for key, value in sorted(metrics.items()):
        parts = key.split("_")
        if len(parts) == 3 and parts[0] == "eval" and parts[2] in ("wer", "cer"):
            results.append(EvalResult(
                task_type="automatic-speech-recognition", task_name="Speech recognition",
                dataset_type="golos", dataset_name=f"Golos ({parts[1]})", dataset_config=parts[1],
                dataset_split="test", metric_type=parts[2], metric_name=parts[2].upper(), metric_value=round(value, 4),
            ))  # fmt: skip
    return results


def write_model_card(folder, description: str, tags=(), metrics=None, base_model=None, model_id=None) -> str:
    """Writes `folder/README.md`: Hub metadata (model-index with the WER/CER of every evaluated test set),
    `description` (Markdown), the results table and a usage snippet that needs no FFmpeg. Returns the text."""
    from huggingface_hub import ModelCardData

    name = Path(folder).resolve().name
    results = eval_results(metrics or {})
    data = ModelCardData(
        language="ru", license="apache-2.0", library_name="transformers", pipeline_tag="automatic-speech-recognition",
        tags=["ctc", *tags], base_model=base_model, model_name=name, eval_results=results or None,
    )  # fmt: skip
    table = "\n".join(f"| {r.dataset_config} | {r.metric_name} | {100 * r.metric_value:.2f} % |" for r in results)
    text = (
        f"---\n{data.to_yaml()}\n---\n\n# {name}\n\n{description.strip()}\n\n"
        f"{RESULTS_START}\n| test set | metric | value |\n|---|---|---|\n{table or '| - | - | not evaluated |'}\n\n"
        "Greedy CTC decoding, no language model. Text normalised as the tokenizer does (lower case, ё -> е).\n"
        f"{RESULTS_END}\n\n"
        + USAGE.format(model=model_id or name)
        + "\n"
    )
    atomic_write_text(Path(folder) / "README.md", text)
    return text


# --- language model decoding (issue #11) ---------------------------------------------------------------------


def write_decoding_results(folder, rows: list, decoding: dict | None) -> str:
    """Puts `evaluate_ctc.py`'s results into `folder/README.md`: greedy WER/CER and, where `decoding` says how the
    LM decoded, the LM's WER/CER beside them, in the table and in the Hub `model-index` (LM results are named
    "WER (n-gram LM)" etc.). Replaces the results block of a card written by `write_model_card`; a folder
    without a card gets one."""
    from huggingface_hub import EvalResult, ModelCard

    path = Path(folder) / "README.md"
    if not path.exists():
        write_model_card(folder, "A CTC speech recogniser for Russian.")
    card = ModelCard.load(path)
    results = []
    lm = decoding is not None
    lm_name = f"{decoding.get('order', 'n')}-gram LM" if lm else ""
    for row in rows:
        for metric in ("wer", "cer"):
            for key, name in [(metric, metric.upper())] + ([(f"lm_{metric}", f"{metric.upper()} ({lm_name})")] if lm else []):
                results.append(EvalResult(
                    task_type="automatic-speech-recognition", task_name="Speech recognition", dataset_type="golos",
                    dataset_name=f"Golos ({row['set']})", dataset_config=row["set"], dataset_split="test",
                    metric_type=metric, metric_name=name, metric_value=round(row[key], 4),
                ))  # fmt: skip
    card.data.eval_results = results
    if lm:
        table = ["| test set | WER, greedy | WER, with the LM | CER, greedy | CER, with the LM |", "|---|---:|---:|---:|---:|"]
        table += [f"| {r['set']} | {100 * r['wer']:.2f} % | {100 * r['lm_wer']:.2f} % | {100 * r['cer']:.2f} % | "
                  f"{100 * r['lm_cer']:.2f} % |" for r in rows]  # fmt: skip
        settings = ", ".join(f"{k} {v}" for k, v in decoding.items() if k != "language_model")
        note = (f"Greedy: greedy CTC decoding. With the LM: CTC beam search with the word {lm_name} in "
                f"`language_model/` ({settings}); `AutoProcessor` and, with the ebranchformer-ru package installed, "
                "`pipeline` use it (with `trust_remote_code=True` alone, pass `decoder=AutoProcessor.from_pretrained("
                "model, trust_remote_code=True).decoder` to `pipeline`). Text normalised as the tokenizer does (lower "
                "case, ё -> е).")  # fmt: skip
    else:
        table = ["| test set | metric | value |", "|---|---|---|"]
        table += [f"| {r['set']} | {m.upper()} | {100 * r[m]:.2f} % |" for r in rows for m in ("wer", "cer")]
        note = "Greedy CTC decoding, no language model. Text normalised as the tokenizer does (lower case, ё -> е)."
    block = f"{RESULTS_START}\n" + "\n".join(table) + f"\n\n{note}\n{RESULTS_END}"
    body = card.text
    if RESULTS_START in body and RESULTS_END in body:
        before, rest = body.split(RESULTS_START, 1)
        body = before + block + rest.split(RESULTS_END, 1)[1]
    else:
        body = body.rstrip("\n") + "\n\n## Results\n\n" + block + "\n"
    card.text = body
    atomic_write_text(path, str(card))
    return str(card)
