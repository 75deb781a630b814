"""Choose a model folder's LM weight (alpha) and word bonus (beta) on held-out speech.

`ebranchformer-tune-lm`, the command line of `ebranchformer_ru.commands.tune_lm`:
`python tune_lm.py --help` tells the rest.
"""

import sys

from ebranchformer_ru.commands.tune_lm import main

if __name__ == "__main__":
    sys.exit(main())
