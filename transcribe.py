"""Transcribe audio files, folders and manifests with a model folder or an ONNX export.

`ebranchformer-transcribe`, the command line of `ebranchformer_ru.commands.transcribe`:
`python transcribe.py --help` tells the rest.
"""

import sys

from ebranchformer_ru.commands.transcribe import main

if __name__ == "__main__":
    sys.exit(main())
