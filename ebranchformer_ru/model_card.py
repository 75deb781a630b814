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
GOLOS_TEST_FILES = {"crowd": 9994, "farfield": 1916}  # Golos's own test sets (REFERENCE: the dataset's page)


def describe_data(data_dir) -> tuple[str, str]:
    """(dataset type, name) of a Golos-layout folder for the card: what the data is, never where it lies. The
    embedded corpus is synthesised speech, not Golos; a folder is called Golos only when its crowd and farfield
    test manifests have Golos's line counts; any other folder is named by its folder name."""
    from ebranchformer_ru.golos import EMBEDDED_CORPUS

    folder = Path(data_dir).resolve()
    if folder == EMBEDDED_CORPUS:
        return "ebranchformer-ru-embedded", "the embedded synthetic corpus (not Golos)"
    if all(_manifest_lines(folder, name) == count for name, count in GOLOS_TEST_FILES.items()):
        return "golos", "Golos"
    return "local", f"the Golos-layout folder `{folder.name}`"


def _manifest_lines(data_dir, test_set) -> int | None:
    try:
        with open(Path(data_dir) / "test_opus" / test_set / "manifest.jsonl", "rb") as file:
            return sum(1 for line in file if line.strip())
    except OSError:
        return None


def eval_results(rows: list, data_dir, lm_name: str | None = None) -> list:
    """Hub `EvalResult`s of `rows` ({"set", "utterances", "wer", "cer"} and, with `lm_name`, "lm_wer", "lm_cer"):
    each names the data and the test set it comes from, and how much of the set was evaluated."""
    from huggingface_hub import EvalResult

    dataset_type, data = describe_data(data_dir)
    results = []
    for row in rows:
        total = _manifest_lines(data_dir, row["set"])
        part = (
            f", {row['utterances']} of its {total} utterances" if total and row.get("utterances", total) < total else ""
        )
        for metric in ("wer", "cer"):
            keys = [(metric, metric.upper())] + ([(f"lm_{metric}", f"{metric.upper()} ({lm_name})")] if lm_name else [])
            for key, name in keys:
                results.append(
                    EvalResult(
                        task_type="automatic-speech-recognition",
                        task_name="Speech recognition",
                        dataset_type=dataset_type,
                        dataset_name=f"{data}: test set {row['set']}{part}",
                        dataset_config=row["set"],
                        dataset_split="test",
                        metric_type=metric,
                        metric_name=name,
                        metric_value=round(row[key], 4),
                    )
                )
    return results


def training_rows(metrics: dict) -> list:
    """`eval_<set>_wer`, `_cer`, `_utterances` (what `train_ctc.py` logs) as `eval_results` rows."""
    sets = sorted(
        key[len("eval_") : -len("_wer")] for key in metrics if key.startswith("eval_") and key.endswith("_wer")
    )
    return [
        {
            "set": name,
            "wer": metrics[f"eval_{name}_wer"],
            "cer": metrics[f"eval_{name}_cer"],
            **({"utterances": int(metrics[f"eval_{name}_utterances"])} if f"eval_{name}_utterances" in metrics else {}),
        }
        for name in sets
        if f"eval_{name}_cer" in metrics
    ]


def write_model_card(
    folder, description: str, tags=(), metrics=None, data_dir=None, base_model=None, model_id=None
) -> str:
    """Writes `folder/README.md`: Hub metadata (model-index with the WER/CER of every test set evaluated during
    training, `metrics`, on `data_dir`), `description` (Markdown), the results table and a usage snippet that
    needs no FFmpeg. Returns the text."""
    from huggingface_hub import ModelCardData

    name = Path(folder).resolve().name
    rows = training_rows(metrics or {})
    results = eval_results(rows, data_dir) if rows else []
    data = ModelCardData(
        language="ru",
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="automatic-speech-recognition",
        tags=["ctc", *tags],
        base_model=base_model,
        model_name=name,
        eval_results=results or None,
    )
    table = "\n".join(f"| {r.dataset_name} | {r.metric_name} | {100 * r.metric_value:.2f} % |" for r in results)
    text = (
        f"---\n{data.to_yaml()}\n---\n\n# {name}\n\n{description.strip()}\n\n"
        f"{RESULTS_START}\n| test set | metric | value |\n|---|---|---|\n{table or '| - | - | not evaluated |'}\n\n"
        "Greedy CTC decoding, no language model. Text normalised as the tokenizer does (lower case, ё -> е).\n"
        f"{RESULTS_END}\n\n" + USAGE.format(model=model_id or name) + "\n"
    )
    atomic_write_text(Path(folder) / "README.md", text)
    return text


def set_model_id(folder, repo_id):
    """Points the card's usage snippet at `repo_id` (where the folder is being published), so that it runs as
    written there. A card without our snippet is left as it is."""
    import re

    path = Path(folder) / "README.md"
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    new = re.sub(r'(pipeline\("automatic-speech-recognition", model=)"[^"]*"', rf'\1"{repo_id}"', text)
    if new != text:
        atomic_write_text(path, new)


# --- language model decoding ---------------------------------------------------------------------------------


def write_decoding_results(folder, rows: list, decoding: dict | None, data_dir) -> str:
    """Puts `evaluate_ctc.py`'s results into `folder/README.md`: greedy WER/CER and, where `decoding` says how the
    LM decoded, the LM's WER/CER beside them, in the table and in the Hub `model-index` (LM results are named
    "WER (n-gram LM)" etc.). Replaces the results block of a card written by `write_model_card`; a folder
    without a card gets one."""
    from huggingface_hub import ModelCard

    path = Path(folder) / "README.md"
    if not path.exists():
        write_model_card(folder, "A CTC speech recogniser for Russian.")
    card = ModelCard.load(path)
    lm = decoding is not None
    lm_name = f"{decoding.get('order', 'n')}-gram LM" if lm else ""
    results = eval_results(rows, data_dir, lm_name or None)
    card.data.eval_results = results
    if lm:
        table = [
            "| test set | WER, greedy | WER, with the LM | CER, greedy | CER, with the LM |",
            "|---|---:|---:|---:|---:|",
        ]
        table += [
            f"| {r['set']} | {100 * r['wer']:.2f} % | {100 * r['lm_wer']:.2f} % | {100 * r['cer']:.2f} % | "
            f"{100 * r['lm_cer']:.2f} % |"
            for r in rows
        ]
        settings = ", ".join(f"{k} {v}" for k, v in decoding.items() if k != "language_model")
        note = (
            f"Greedy: greedy CTC decoding. With the LM: CTC beam search with the word {lm_name} in "
            f"`language_model/` ({settings}); `AutoProcessor` and, with the ebranchformer-ru package installed, "
            "`pipeline` use it (with `trust_remote_code=True` alone, pass `decoder=AutoProcessor.from_pretrained("
            "model, trust_remote_code=True).decoder` to `pipeline`). Text normalised as the tokenizer does (lower "
            "case, ё -> е)."
        )
    else:
        table = ["| test set | metric | value |", "|---|---|---|"]
        table += [f"| {r['set']} | {m.upper()} | {100 * r[m]:.2f} % |" for r in rows for m in ("wer", "cer")]
        note = "Greedy CTC decoding, no language model. Text normalised as the tokenizer does (lower case, ё -> е)."
    counts = ", ".join(f"{r['set']} {r['utterances']}" for r in rows if "utterances" in r)
    source = f"Measured by `evaluate_ctc.py` on the test sets of {describe_data(data_dir)[1]}" + (
        f" (utterances: {counts})." if counts else "."
    )
    block = f"{RESULTS_START}\n{source}\n\n" + "\n".join(table) + f"\n\n{note}\n{RESULTS_END}"
    body = card.text
    if RESULTS_START in body and RESULTS_END in body:
        before, rest = body.split(RESULTS_START, 1)
        body = before + block + rest.split(RESULTS_END, 1)[1]
    else:
        body = body.rstrip("\n") + "\n\n## Results\n\n" + block + "\n"
    card.text = body
    atomic_write_text(path, str(card))
    return str(card)
