#!/usr/bin/env bash
# Entry points that set themselves up on a fresh machine (Python 3.10+, pip, no GPU needed):
#   bash run.sh train [train_ctc.py options]   train on the embedded Golos-format corpus
#   bash run.sh test [pytest options]          run the test suite
# Both create ./.venv on first use: torch first (the CPU build pinned below unless TORCH_SPEC says
# otherwise, so pip never resolves a multi-GB CUDA build), then this package with its test extras.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=test,onnx,serve,vad,itn

setup() {
    local stamp="$VENV/.installed-$(cat pyproject.toml | sha1sum | cut -c1-12)"
    [ -f "$stamp" ] && return 0
    echo "run.sh: first-time set-up in $VENV (about 2-3 minutes; later runs skip it)" >&2
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    echo "run.sh: [1/3] upgrading pip" >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip
    echo "run.sh: [2/3] installing $TORCH_SPEC (CPU build where available)" >&2
    "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
    echo "run.sh: [3/3] installing this package with its extras [$EXTRAS] (transformers, datasets, ...)" >&2
    "$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
    touch "$stamp"
    echo "run.sh: set-up done" >&2
}

command=${1:-}
shift || true
case "$command" in
    train) setup; exec "$VENV/bin/python" train_ctc.py "$@" ;;
    test) setup; HF_HUB_OFFLINE=1 exec "$VENV/bin/python" -m pytest "$@" ;;
    *) echo "usage: bash run.sh {train|test} [options]" >&2; exit 2 ;;
esac
