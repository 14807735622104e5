"""延迟基准：batch 1 / 8 的 decode 速度，以及 1,000 token prompt 的首 token 时间（TTFT）。
Latency: decode tokens/s at batch size 1 and 8, and time-to-first-token for a 1,000-token prompt.

Usage:
    python bench/latency.py --model-path /tmp/qwen3-0.6b [--json out.json]
    python bench/latency.py --quick          # CPU smoke test
"""
from __future__ import annotations

import argparse
import json
import random
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--decode-tokens", type=int, default=512)
    ap.add_argument("--prompt-len", type=int, default=1000)
    ap.add_argument("--disable-cuda-graph", action="store_true")
    ap.add_argument("--disable-overlap-schedule", action="store_true", help="关闭重叠调度（对照）/ the serialized scheduler, for comparison")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.quick:
        a.decode_tokens, a.prompt_len = 16, 100
    from minisgl import Engine

    engine = Engine(a.model_path, disable_cuda_graph=a.disable_cuda_graph, disable_overlap_schedule=a.disable_overlap_schedule)
    vocab = engine.model_config.vocab_size
    rng = random.Random(0)
    sync = torch.cuda.synchronize if engine.server_args.device == "cuda" else (lambda: None)
    res = {"device": torch.cuda.get_device_name() if engine.server_args.device == "cuda" else "cpu",
           "overlap_schedule": engine.server_args.enable_overlap_schedule}
    engine.generate(input_ids=[1, 2, 3], sampling_params={"max_new_tokens": 8})  # 热身 / warm-up

    # ======== TTFT：1,000 token 的 prompt，只生成 1 个 token / one token after a 1,000-token prompt ========
    ttfts = []
    for _ in range(5):
        engine.flush_cache()  # 不让前缀缓存帮忙 / no help from the prefix cache
        prompt = [rng.randrange(min(vocab, 10000)) for _ in range(a.prompt_len)]
        sync()
        t = time.perf_counter()
        engine.generate(input_ids=prompt, sampling_params={"max_new_tokens": 1, "ignore_eos": True})
        sync()
        ttfts.append(time.perf_counter() - t)
    res["ttft_ms_prompt_%d" % a.prompt_len] = round(sorted(ttfts)[len(ttfts) // 2] * 1e3, 2)

    # ======== decode 速度 / decode speed ========
    for bs in (1, 8):
        engine.flush_cache()
        prompts = [[rng.randrange(min(vocab, 10000)) for _ in range(32)] for _ in range(bs)]
        params = {"max_new_tokens": a.decode_tokens, "ignore_eos": True, "temperature": 0}
        # 先只 prefill（1 个 token），再计时完整生成，减去 prefill 的时间。Time decode only: subtract a 1-token run.
        sync()
        t0 = time.perf_counter()
        engine.generate(input_ids=prompts, sampling_params={**params, "max_new_tokens": 1})
        sync()
        prefill = time.perf_counter() - t0
        engine.flush_cache()
        sync()
        t1 = time.perf_counter()
        engine.generate(input_ids=prompts, sampling_params=params)
        sync()
        decode = time.perf_counter() - t1 - prefill
        res[f"bs{bs}_decode_tok_s_per_seq"] = round((a.decode_tokens - 1) / decode, 1)
        res[f"bs{bs}_decode_tok_s_total"] = round(bs * (a.decode_tokens - 1) / decode, 1)
    print(json.dumps(res, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
