#!/usr/bin/env bash
# Issue 8's GPU checks in one run, for a session that has an NVIDIA GPU (about 8 minutes on an H100/H200):
# the CUDA tests of the flex attention backend, banded vs dense attention at contexts 2048 and 8192, and training
# MFU of gpt2 (124M, context 1024, bf16, compiled) and of gpt3-small's banded layers through flex vs masked SDPA.
# Each step has its own time limit, so one that hangs does not cost the rest; logs go to $OUT (or /tmp/gptkit-gpu).
#
#     bash benchmarks/gpu_checks.sh        # from the repository root, torch with CUDA installed
#
# gptkit runs from src/ (no install needed); it needs torch, numpy, safetensors, tokenizers, tiktoken, pyyaml,
# rich and pytest. Never run on a GPU yet: the commands are the ones docs/benchmarks.md names.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
out="${OUT:-/tmp/gptkit-gpu}"
mkdir -p "$out"

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $out/NAME.txt, report the status
    local name=$1 limit=$2
    shift 2
    echo "== $name ($*)"
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.txt"
    echo "== $name: exit ${PIPESTATUS[0]}"
}

if ! python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_checks.sh: torch sees no CUDA GPU here; these checks are for a machine with one" >&2
    exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
step torch 30 python -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
step test_flex 180 python -m pytest -q -p no:xdist -o addopts= -rs tests/test_flex.py
step attention 120 python benchmarks/attention.py
step mfu_gpt2 150 python benchmarks/mfu.py
step mfu_gpt3_small_flex 120 python benchmarks/mfu.py --preset gpt3-small --block-size 2048 --batch 8
step mfu_gpt3_small_sdpa 120 python benchmarks/mfu.py --preset gpt3-small --block-size 2048 --batch 8 \
    --attention-backend sdpa
