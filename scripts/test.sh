#!/usr/bin/env bash
# 一条命令：安装并运行全部测试（CI 的 .ci/run 调用的就是它）。
# One command: install and run every test (this is what CI's .ci/run calls).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh dev
${PYTHON:-python3} -m pytest -q "$@"
