#!/usr/bin/env bash
# One-command setup on a fresh machine: the CPU build of torch first (a looser requirement with no torch
# installed would pull a multi-GB CUDA build), then fields in editable mode with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
# open3d (mesh clean-up) loads the system library libusb-1.0; install it where apt is available (as root in CI,
# through sudo elsewhere) and carry on without it otherwise: `fields export mesh --no-clean` needs no open3d.
if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
    if command -v apt-get >/dev/null; then
        SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo -n"
        { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libusb-1.0-0; } >/dev/null 2>&1 \
            || echo "setup: could not install libusb-1.0-0; open3d mesh clean-up may be unavailable" >&2
    else
        echo "setup: apt-get not found; install libusb-1.0 yourself for open3d mesh clean-up" >&2
    fi
fi
# The native kernels in cuda/ are JIT-compiled with g++ (ninja comes from pip); without g++ fields still runs,
# on the slower plain-PyTorch reference, after one warning.
if ! command -v g++ >/dev/null && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends g++ >/dev/null
fi
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
