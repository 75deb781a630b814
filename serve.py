"""Serve a model over HTTP: OpenAI's transcription API, live audio over a WebSocket, a page to try it.

The command line of `asrkit.serving`: `python serve.py --help` tells the rest.
"""

import sys

from asrkit.serving import main

if __name__ == "__main__":
    sys.exit(main())
