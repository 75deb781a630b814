"""Add a word n-gram language model to a model folder.

`ebranchformer-build-lm`, the command line of `ebranchformer_ru.commands.build_lm`:
`python build_lm.py --help` tells the rest.
"""

import sys

from ebranchformer_ru.commands.build_lm import main

if __name__ == "__main__":
    sys.exit(main())
