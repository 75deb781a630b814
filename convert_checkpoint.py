"""Convert a course PyTorch Lightning checkpoint (E-Branchformer or QuartzNet) to a model folder.

`ebranchformer-convert`, the command line of `ebranchformer_ru.commands.convert`:
`python convert_checkpoint.py --help` tells the rest.
"""

import sys

from ebranchformer_ru.commands.convert import main

if __name__ == "__main__":
    sys.exit(main())
