"""Average a training run's last or best N checkpoints into a model folder.

`ebranchformer-average`, the command line of `ebranchformer_ru.commands.average`:
`python average_checkpoints.py --help` tells the rest.
"""

import sys

from ebranchformer_ru.commands.average import main

if __name__ == "__main__":
    sys.exit(main())
