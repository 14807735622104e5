#!/usr/bin/env bash
# 一条命令：安装（CPU 版 torch 优先）并运行全部测试。
# One command: install (CPU torch first, so no CUDA packages are pulled) and run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! $PY -c "import torch" 2>/dev/null; then
  # 本机/CI 上 torch==2.13.0 是本地 CPU wheel；其他机器上也请先装好你自己的 torch。
  # On these machines torch==2.13.0 is a local CPU wheel; elsewhere install your own torch first.
  $PY -m pip install -q "torch==2.13.0" || $PY -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
fi
TORCH_PIN="torch==$($PY -c 'import torch; print(torch.__version__)')"
echo "$TORCH_PIN" > /tmp/minisgl-constraints.txt
$PY -m pip install -q -c /tmp/minisgl-constraints.txt -e ".[dev]"
$PY -m pytest -q "$@"
