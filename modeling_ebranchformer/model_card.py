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
        f"| test set | metric | value |\n|---|---|---|\n{table or '| - | - | not evaluated |'}\n\n"
        "Greedy CTC decoding, no language model. Text normalised as the tokenizer does (lower case, ё -> е).\n\n"
        + USAGE.format(model=model_id or name)
        + "\n"
    )
    atomic_write_text(Path(folder) / "README.md", text)
    return text
