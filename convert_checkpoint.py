"""Convert a course PyTorch Lightning checkpoint (E-Branchformer or QuartzNet) to a model folder.

The command line of `ebranchformer_ru.conversion`: `python convert_checkpoint.py --help` tells the rest.
"""

import sys

from ebranchformer_ru.conversion import main

if __name__ == "__main__":
    sys.exit(main())
