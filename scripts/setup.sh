#!/usr/bin/env bash
# One-command setup on a fresh machine: the CPU build of torch first (a looser requirement with no torch
# installed would pull a multi-GB CUDA build), then fields in editable mode with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test,bench]"
