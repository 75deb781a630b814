"""Transcribe audio files, folders and manifests with a model folder or an ONNX export.

The command line of `ebranchformer_ru.transcription`: `python transcribe.py --help` tells the rest.
"""

import sys

from ebranchformer_ru.transcription import main

if __name__ == "__main__":
    sys.exit(main())
