"""WER and CER of a model folder on the test sets of a Golos-layout folder (greedy and with its LM).

`ebranchformer-evaluate`, the command line of `ebranchformer_ru.commands.evaluate`:
`python evaluate_ctc.py --help` tells the rest.
"""

import sys

from ebranchformer_ru.commands.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
