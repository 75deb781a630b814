"""Serve a model over HTTP: OpenAI's transcription API, live audio over a WebSocket, a page to try it.

`ebranchformer-serve`, the command line of `ebranchformer_ru.commands.serve`:
`python serve.py --help` tells the rest.
"""

import sys

from ebranchformer_ru.commands.serve import main

if __name__ == "__main__":
    sys.exit(main())
