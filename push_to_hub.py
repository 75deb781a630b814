"""Publish a model folder to the Hugging Face Hub (again, or later than the command that made it).

`ebranchformer-push`, the command line of `ebranchformer_ru.commands.push`:
`python push_to_hub.py --help` tells the rest.
"""

import sys

from ebranchformer_ru.commands.push import main

if __name__ == "__main__":
    sys.exit(main())
