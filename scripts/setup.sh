#!/usr/bin/env bash
# Create .venv and install every package of the monorepo editable (quick when already done).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.ssmad-setup
want=$( (cat constraints.txt pyproject.toml packages/*/pyproject.toml; .venv/bin/python -V) | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    exit 0
fi
echo "setting up .venv (first time: downloads PyTorch, a few minutes)..."
.venv/bin/python -m pip install -q --upgrade pip
pkgs=()
for p in core ssm backbones synth heads scoring datasets; do pkgs+=(-e "packages/$p"); done
# compat mode: plain .pth path entries, the most robust editable form for the PEP 420 namespace `ssmad`
.venv/bin/python -m pip install -q -c constraints.txt --config-settings editable_mode=compat \
    "${pkgs[@]}" -e ".[dev,export,openvino]"
echo "$want" > "$stamp"
echo "set-up done: .venv ready"
