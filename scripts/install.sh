#!/usr/bin/env bash
# 安装 minisgl（可编辑模式）。若还没有 torch，先装 CPU 版，避免拉下几 GB 的 CUDA 包；
# 已有 torch（例如你的 CUDA 版）则原样保留。
# Install minisgl (editable). Without torch, the CPU build goes in first so no GBs of CUDA
# packages are pulled; an existing torch (e.g. your CUDA build) is kept as it is.
# Usage: bash scripts/install.sh [extras, default "dev"]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${1:-dev}
if ! $PY -c "import torch" 2>/dev/null; then
  $PY -m pip install -q "torch==2.13.0" 2>/dev/null \
    || $PY -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
fi
# 用约束文件钉住已装的 torch，任何依赖都不能把它换掉。Pin the installed torch for every dependency.
CONSTRAINTS=$(mktemp)
echo "torch==$($PY -c 'import torch; print(torch.__version__)')" > "$CONSTRAINTS"
$PY -m pip install -q -c "$CONSTRAINTS" -e ".[$EXTRAS]"
rm -f "$CONSTRAINTS"
