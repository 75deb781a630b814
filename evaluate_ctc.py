"""WER and CER of a model folder on the test sets of a Golos-layout folder (greedy and with its LM).

The command line of `ebranchformer_ru.evaluation`: `python evaluate_ctc.py --help` tells the rest.
"""

import sys

from ebranchformer_ru.evaluation import main

if __name__ == "__main__":
    sys.exit(main())
