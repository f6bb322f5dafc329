#!/usr/bin/env bash
# One-command setup on a fresh machine: the CPU build of torch first (a looser requirement with no torch
# installed would pull a multi-GB CUDA build), then fields in editable mode with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test,bench]"

# Headless Debian chromium for the viewer's browser test (tests/test_viewer.py skips without it). Installed only
# where we can (root with apt-get, as in CI); elsewhere install it yourself: sudo apt-get install chromium.
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q && apt-get install -y -q --no-install-recommends chromium
    else
        echo "note: chromium not installed (not root or no apt-get); the viewer's browser test will be skipped" >&2
    fi
fi
