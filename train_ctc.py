"""Train an E-Branchformer (or QuartzNet) CTC model with Transformers' Trainer on a Golos-layout folder.

`ebranchformer-train`, the command line of `ebranchformer_ru.commands.train`:
`python train_ctc.py --help` tells the rest.
"""

import sys

from ebranchformer_ru.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
