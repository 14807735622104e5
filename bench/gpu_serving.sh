#!/usr/bin/env bash
# GPU 机器上的在线服务扫描：起一个服务器，按几个请求速率各跑一次 bench/serving.py，合成一个 JSON。
# Serving sweep on the GPU machine: one server, bench/serving.py at several request rates, merged into one JSON.
# 找出 p99 TTFT < 1 s 的最高速率。Finds the highest rate with p99 TTFT under 1 s.
# Usage: bash bench/gpu_serving.sh /tmp/qwen3-0.6b "4 8 16 32 64"   (results: $OUT/serving_sweep.json)
#   sizes: NUM_PROMPTS (200), INPUT_LEN (1024), OUTPUT_LEN (256); prompt lengths uniform in [INPUT_LEN/2, INPUT_LEN]
set -uo pipefail
MODEL=${1:?model path}; RATES=${2:-"4 8 16 32 64"}
OUT=${OUT:-/tmp/minisgl-out}; mkdir -p "$OUT"
PORT=30123
python3 -m minisgl serve --model-path "$MODEL" --port $PORT > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT
for _ in $(seq 360); do grep -q "server is ready" "$OUT/server.log" && break; sleep 0.5; done
grep -q "server is ready" "$OUT/server.log" || { echo "server did not start"; tail -20 "$OUT/server.log"; exit 1; }
runs=()
for r in $RATES; do
  python3 bench/serving.py --base-url http://127.0.0.1:$PORT --dataset random --num-prompts ${NUM_PROMPTS:-200} \
    --random-input-len ${INPUT_LEN:-1024} --random-output-len ${OUTPUT_LEN:-256} --random-range-ratio 0.5 --request-rate "$r" \
    --disable-tqdm --output-file "$OUT/serving_r$r.json" 2>&1 | grep -E "TTFT|ITL|throughput" | head -8
  runs+=("$OUT/serving_r$r.json")
done
python3 - "$OUT/serving_sweep.json" "${runs[@]}" <<'PY'
import json, os, sys
out, files = sys.argv[1], sys.argv[2:]
runs = []
for f in files:
    if os.path.exists(f):
        r = json.load(open(f))
        runs.append({"request_rate": r["config"]["request_rate"], "metrics": r["metrics"]})  # 不含逐请求记录 / no per-request rows
ok = [r for r in runs if r["metrics"]["failed"] == 0 and r["metrics"]["ttft_ms"]["p99"] < 1000]
best = max((r["request_rate"] for r in ok), default=None)
json.dump({"runs": runs, "highest_rate_p99_ttft_under_1s": best}, open(out, "w"), indent=1)
for r in runs:
    m = r["metrics"]
    print(f"rate {r['request_rate']}: TTFT p50 {m['ttft_ms']['median']} p99 {m['ttft_ms']['p99']} ms, "
          f"ITL p50 {m['itl_ms']['median']} p99 {m['itl_ms']['p99']} ms, out {m['output_throughput']} tok/s")
print("highest request rate with p99 TTFT < 1 s:", best)
for f in files:
    os.path.exists(f) and os.remove(f)
PY
