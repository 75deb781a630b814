"""Export a model folder to ONNX, checked against PyTorch (optionally int8).

The command line of `ebranchformer_ru.onnx_export`: `python export_onnx.py --help` tells the rest.
"""

import sys

from ebranchformer_ru.onnx_export import main

if __name__ == "__main__":
    sys.exit(main())
