"""The command lines: one module per command, each a console script (`ebranchformer-NAME`, `[project.scripts]`)
and a thin top-level file of the checkout (`train_ctc.py`, ...). Each builds its parser from `cli` (the one
dialect) and calls its job's functions; nothing imports a command module.

| command | module | top-level file | job |
|---|---|---|---|
| `ebranchformer-train` | `train` | `train_ctc.py` | `ebranchformer_ru.training` |
| `ebranchformer-evaluate` | `evaluate` | `evaluate_ctc.py` | `ebranchformer_ru.evaluation` |
| `ebranchformer-transcribe` | `transcribe` | `transcribe.py` | `ebranchformer_ru.transcription` |
| `ebranchformer-serve` | `serve` | `serve.py` | `ebranchformer_ru.serving` |
| `ebranchformer-export-onnx` | `export_onnx` | `export_onnx.py` | `ebranchformer_ru.onnx_export` |
| `ebranchformer-convert` | `convert` | `convert_checkpoint.py` | `ebranchformer_ru.conversion` |
| `ebranchformer-average` | `average` | `average_checkpoints.py` | `ebranchformer_ru.averaging` |
| `ebranchformer-build-lm` | `build_lm` | `build_lm.py` | `ebranchformer_ru.lm_building` |
| `ebranchformer-tune-lm` | `tune_lm` | `tune_lm.py` | `ebranchformer_ru.lm_tuning` |
| `ebranchformer-push` | `push` | `push_to_hub.py` | `ebranchformer_ru.publishing` |
"""
