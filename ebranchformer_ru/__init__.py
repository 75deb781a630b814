"""Everything an E-Branchformer speech-recognition job needs that is not the model itself.

`modeling_ebranchformer` is the model (what `save_pretrained` copies into a folder for `trust_remote_code`);
this package is the rest, in layers that import one way (declared in pyproject.toml, checked by `lint-imports`):

| layer | modules |
|---|---|
| base | `errors` (the errors a user can fix), `audio`, `manifest`, `files`, `hub`, `metrics`, `summary`, `distributed`, `onnx_runtime` |
| data | `golos` (the Golos `datasets` builder and the embedded corpus) |
| jobs | `inference` (the one path from audio to text), `training`, `evaluation`, `lm_tuning`, `lm_building`, `transcription`, `serving`, `onnx_export`, `conversion`, `averaging`, `publishing`, `model_card`, `augmentation` |
| commands | `commands` (the command lines, one dialect: `ebranchformer-train`, `ebranchformer-transcribe`, ...) |

Importing `ebranchformer_ru` imports nothing else; each module imports what it needs (the torch-free ones never
import torch).
"""
