"""Train an E-Branchformer (or QuartzNet) CTC model with Transformers' Trainer on a Golos-layout folder.

The command line of `ebranchformer_ru.training`: `python train_ctc.py --help` tells the rest.
"""

import sys

from ebranchformer_ru.training import main

if __name__ == "__main__":
    sys.exit(main())
