"""连续批处理 vs 静态批处理：同一个引擎、同一批请求、输出长度长短混杂。
Continuous vs static batching: the same engine, the same requests, a mix of short and long outputs.

【生活比喻】Metaphor
  餐厅有 B 张桌子（--batch-size = --max-running-requests）。
  静态批处理：一次坐满 B 桌，等*最后一桌*吃完才翻台，早吃完的桌子空着等。
  连续批处理：哪桌吃完就立刻安排下一位客人（每个 decode 步 batch 都可以变）。
  A restaurant with B tables. Static batching seats B parties and turns the tables only when the
  *last* party has finished; tables that finish early sit empty. Continuous batching seats the next
  party the moment any table frees up (the batch can change at every decode step).

【怎么实现静态批处理】How static batching is made here
  同一个 Engine（max_running_requests = B）：
    continuous  一次提交全部请求，调度器随时补位。Submit everything; the scheduler refills slots at once.
    static      每次只提交 B 个（一“波”），generate() 等这一波全部结束才提交下一波。
                Submit B at a time (a wave); generate() returns only when the whole wave is done.
  两种方式的 prefill、decode、KV 池、CUDA graph 完全相同，差别只在“空出的位子要不要等”。
  Everything else (prefill, decode, KV pool, CUDA graphs) is identical; only refilling differs.

【指标】Metrics
  throughput   = 输出 token 数 / 墙钟时间（输入 token 也报告）/ output tokens per second
  ratio        = continuous 吞吐 ÷ static 吞吐
  slot usage   = Σ 输出长度 ÷ Σ_每波 (该波请求数 × 该波最长输出)：静态批处理里“有用的” decode 位子比例
                 the fraction of static decode slots that do useful work (the rest wait for the wave's longest)

负载 / workload: --num-seqs 个请求，输入长度在 [--min-input-len, --max-input-len] 均匀；
输出长度：比例 --long-fraction 的“长回答”在 [max/2, max]，其余“短回答”在 [min, 4·min]（--min/--max-output-len）。
Output lengths: a --long-fraction of long answers in [max/2, max], the rest short in [min, 4·min].

Usage:
    python bench/batching.py --model-path /tmp/qwen3-0.6b --json batching.json     # GPU
    python bench/batching.py --quick --json /tmp/batching.json                     # CPU, bundled model
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # 同目录的 serving.py / the sibling serving.py

from serving import random_ids  # noqa: E402


def make_workload(a, vocab: int):
    """(prompts, output_lens)：长短混杂、顺序随机。Mixed lengths in random order."""
    rng = random.Random(a.seed)
    prompts, outs = [], []
    for _ in range(a.num_seqs):
        prompts.append(random_ids(rng, rng.randint(a.min_input_len, a.max_input_len), vocab))
        if rng.random() < a.long_fraction:
            outs.append(rng.randint(a.max_output_len // 2, a.max_output_len))
        else:
            outs.append(rng.randint(a.min_output_len, 4 * a.min_output_len))
    return prompts, outs


def run(engine, prompts, outs, wave: Optional[int]) -> Dict[str, Any]:
    """wave=None：连续批处理（一次全交）；wave=B：静态批处理（B 个一波）。None = continuous; B = static waves."""
    import torch

    sync = torch.cuda.synchronize if engine.server_args.device == "cuda" else (lambda: None)
    params = [{"max_new_tokens": m, "temperature": 0.0, "ignore_eos": True} for m in outs]
    assert engine.flush_cache()  # 随机 prompt 不共享前缀；清空只为每次起点相同 / same starting point
    steps0 = engine.scheduler.forward_ct
    step = wave or len(prompts)
    sync()
    t = time.perf_counter()
    got = []
    for s in range(0, len(prompts), step):
        got += engine.generate(input_ids=prompts[s:s + step], sampling_params=params[s:s + step])
    sync()
    elapsed = time.perf_counter() - t
    assert [len(r["output_ids"]) for r in got] == outs, "every request must produce exactly its output length"
    n_in, n_out = sum(map(len, prompts)), sum(outs)
    return {"elapsed_s": round(elapsed, 3), "output_throughput": round(n_out / elapsed, 1),
            "total_throughput": round((n_in + n_out) / elapsed, 1),
            "request_throughput": round(len(prompts) / elapsed, 3),
            "forward_steps": engine.scheduler.forward_ct - steps0,
            "retractions": engine.scheduler.num_retractions}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=None, help="缺省自带小模型 / default: the bundled model")
    ap.add_argument("--num-seqs", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32, help="B = --max-running-requests = 静态每波大小 / wave size")
    ap.add_argument("--min-input-len", type=int, default=32)
    ap.add_argument("--max-input-len", type=int, default=256)
    ap.add_argument("--min-output-len", type=int, default=16)
    ap.add_argument("--max-output-len", type=int, default=512)
    ap.add_argument("--long-fraction", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--disable-cuda-graph", action="store_true")
    ap.add_argument("--quick", action="store_true", help="CPU 冒烟测试的小规模 / tiny sizes for a CPU smoke test")
    ap.add_argument("--json", help="把结果写成 JSON / write results as JSON")
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    if a.quick:
        a.num_seqs, a.batch_size, a.min_input_len, a.max_input_len = 16, 4, 16, 64
        a.min_output_len, a.max_output_len = 4, 64
    import torch

    from minisgl import Engine

    kw = {"max_running_requests": a.batch_size}
    if a.disable_cuda_graph:
        kw["disable_cuda_graph"] = True
    engine = Engine(a.model_path, **kw)
    try:
        prompts, outs = make_workload(a, engine.model_config.vocab_size)
        engine.generate(input_ids=prompts[:2], sampling_params={"max_new_tokens": 4})  # 热身 / warm-up
        static = run(engine, prompts, outs, a.batch_size)
        continuous = run(engine, prompts, outs, None)
        device = engine.server_args.device
    finally:
        engine.shutdown()
    waves = [outs[s:s + a.batch_size] for s in range(0, len(outs), a.batch_size)]
    slot_usage = sum(outs) / sum(len(w) * max(w) for w in waves)
    res = {
        "benchmark": "batching",
        "device": torch.cuda.get_device_name() if device == "cuda" else device,
        "model_path": a.model_path or "bundled tiny-zh-en", "quick": a.quick, "args": vars(a),
        "input_tokens": sum(map(len, prompts)), "output_tokens": sum(outs),
        "static": static, "continuous": continuous,
        "static_slot_usage": round(slot_usage, 4),
        "throughput_ratio": round(continuous["output_throughput"] / static["output_throughput"], 2),
    }
    print(f"{'mode':<12}{'out tok/s':>12}{'req/s':>10}{'time s':>10}{'steps':>8}")
    for mode in ("static", "continuous"):
        r = res[mode]
        print(f"{mode:<12}{r['output_throughput']:>12.1f}{r['request_throughput']:>10.2f}{r['elapsed_s']:>10.2f}"
              f"{r['forward_steps']:>8}")
    print(f"continuous / static throughput = {res['throughput_ratio']}x; "
          f"static slot usage = {slot_usage:.1%} (B = {a.batch_size})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
