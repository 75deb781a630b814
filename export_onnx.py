"""Export a model folder to ONNX, checked against PyTorch (optionally int8).

`ebranchformer-export-onnx`, the command line of `ebranchformer_ru.commands.export_onnx`:
`python export_onnx.py --help` tells the rest.
"""

import sys

from ebranchformer_ru.commands.export_onnx import main

if __name__ == "__main__":
    sys.exit(main())
