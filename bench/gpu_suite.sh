#!/usr/bin/env bash
# GPU 机器上一次跑完：内核/后端/正确性测试 + 延迟 + 吞吐。结果写进 $OUT。
# One call on the GPU machine: kernel/backend/correctness tests, latency, throughput. Results go to $OUT.
# Usage (device tool, carry .bench_tok): bash bench/gpu_suite.sh [tests] [latency] [throughput] [hf]
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/minisgl-out}; mkdir -p "$OUT"
steps=" $* "
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__, torch.cuda.get_device_name())"
if [[ $steps == *" tests "* ]]; then
  python3 -m pytest -q -p no:cacheprovider tests/test_fused_ops.py tests/test_triton_kernels.py tests/test_triton_backend.py tests/test_gpu.py \
    -s 2>&1 | tee "$OUT/gpu_tests.log" | grep -E "passed|failed|error|bf16|Error" | tail -20
fi
if [[ $steps == *" latency "* || $steps == *" throughput "* ]]; then
  [ -d /tmp/qwen3-0.6b ] || python3 bench/make_random_model.py --out /tmp/qwen3-0.6b --tokenizer .bench_tok
fi
if [[ $steps == *" latency "* ]]; then
  python3 bench/latency.py --model-path /tmp/qwen3-0.6b --json "$OUT/latency.json" 2>&1 | tail -12
fi
if [[ $steps == *" throughput "* ]]; then
  hf=""; [[ $steps == *" hf "* ]] && hf="--hf"
  python3 bench/offline_throughput.py --model-path /tmp/qwen3-0.6b $hf --json "$OUT/throughput.json" 2>&1 | tail -30
fi
