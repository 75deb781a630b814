"""The application around the model package: everything a speech-recognition job needs that is not the model.

`modeling_ebranchformer` is the model (what `save_pretrained` copies into a folder for `trust_remote_code`);
`golos` is the dataset; this package is the rest, one module per job, each with the command line of its
script (`python transcribe.py ...` is `ebranchformer_ru.transcription.main`):

| module | job |
|---|---|
| `inference` | the one path from audio to text: backends (PyTorch, ONNX Runtime), chunking, batching, greedy or LM decoding, word times |
| `onnx_runtime` | torch-free pieces of the ONNX path: numpy log-mel features, greedy CTC decoding, the ONNX Runtime session |
| `audio`, `manifest`, `metrics` | reading audio (soundfile), reading NeMo/Golos manifests, WER and CER |
| `augmentation` | training-audio augmentation (speed, reverberation, noise, volume) |
| `files`, `hub`, `model_card`, `summary` | atomic writes, loading folders with clear errors, the model card, parameter counts |
| `training`, `evaluation`, `lm_tuning`, `transcription`, `onnx_export`, `conversion`, `averaging`, `lm_building` | the scripts' jobs |

Importing `ebranchformer_ru` imports nothing else; each module imports what it needs (the torch-free ones never import
torch).
"""
