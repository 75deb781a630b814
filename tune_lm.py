"""Choose a model folder's LM weight (alpha) and word bonus (beta) on held-out speech.

The command line of `ebranchformer_ru.lm_tuning`: `python tune_lm.py --help` tells the rest.
"""

import sys

from ebranchformer_ru.lm_tuning import main

if __name__ == "__main__":
    sys.exit(main())
