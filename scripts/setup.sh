#!/usr/bin/env bash
# One-command setup on a fresh machine: the CPU build of torch first (a looser requirement with no torch
# installed would pull a multi-GB CUDA build), then fields in editable mode with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
# The native kernels in cuda/ are JIT-compiled with g++ (ninja comes from pip); without g++ fields still runs,
# on the slower plain-PyTorch reference, after one warning.
if ! command -v g++ >/dev/null && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends g++ >/dev/null
fi
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test,bench]"
