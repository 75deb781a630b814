"""Add a word n-gram language model to a model folder.

The command line of `ebranchformer_ru.lm_building`: `python build_lm.py --help` tells the rest.
"""

import sys

from ebranchformer_ru.lm_building import main

if __name__ == "__main__":
    sys.exit(main())
