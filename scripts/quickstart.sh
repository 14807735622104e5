#!/usr/bin/env bash
# 一条命令：安装并用自带的小模型生成一段文字（CPU 即可，无需联网）。
# One command: install, then generate with the bundled tiny model (CPU, offline).
# Usage: bash scripts/quickstart.sh ["床前明月光"]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh server
${PYTHON:-python3} -m minisgl generate --prompt "${1:-床前明月光}" --max-new-tokens 48 --show-meta
