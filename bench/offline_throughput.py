"""离线吞吐基准（nano-vllm 的工作负载）+ 同一进程里的 HF transformers 对照 + roofline 比例。
Offline throughput on nano-vllm's workload, HF transformers in the same process, and the roofline fraction.

工作负载 / workload: 256 sequences, prompt lengths uniform in [100, 1024], output lengths uniform in
[100, 1024], random token ids, ignore_eos, temperature 0.6, seed 0.

roofline_fraction = T_lower / T_measured, where T_lower is the time the bytes that *must* move take at the
measured device copy bandwidth:
    weights:  W bytes, read once per forward step; at least max_i(out_i) steps (the longest request needs
              that many forwards, one token each)
    KV read:  decoding token j of request i reads the KV of its (in_i + j) earlier tokens
    KV write: every token's K and V are written once
(compute time of prefill is left out: the bound counts bytes only, so it is a lower bound).

Usage:
    python bench/offline_throughput.py --model-path /tmp/qwen3-0.6b [--hf] [--json out.json]
    python bench/offline_throughput.py --quick            # CPU smoke test on the bundled model
"""
from __future__ import annotations

import argparse
import gc
import json
import random
import time

import torch

from step_timeline import StepTimeline, print_summary


def make_workload(num_seqs: int, max_in: int, max_out: int, seed: int, vocab_hi: int = 10000):
    rng = random.Random(seed)
    prompts = [[rng.randint(0, vocab_hi) for _ in range(rng.randint(100, max_in))] for _ in range(num_seqs)]
    outs = [rng.randint(100, max_out) for _ in range(num_seqs)]
    return prompts, outs


def copy_bandwidth(device: str) -> float:
    """设备拷贝带宽（读 + 写字节 / 秒）。Device copy bandwidth: (read + written) bytes per second."""
    if device != "cuda":
        return float("nan")
    n = 1 << 30
    a, b = torch.empty(n, dtype=torch.uint8, device="cuda"), torch.empty(n, dtype=torch.uint8, device="cuda")
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); b.copy_(a); e.record(); torch.cuda.synchronize()  # noqa: E702
        times.append(s.elapsed_time(e) / 1e3)
    return 2 * n / sorted(times)[len(times) // 2]


def lower_bound_bytes(weight_bytes: int, kv_bytes_per_token: int, prompts, outs) -> dict:
    steps = max(outs)
    kv_read = sum(sum(len(p) + j for j in range(1, m)) for p, m in zip(prompts, outs)) * kv_bytes_per_token
    kv_write = sum(len(p) + m for p, m in zip(prompts, outs)) * kv_bytes_per_token
    return {"weights": weight_bytes * steps, "kv_read": kv_read, "kv_write": kv_write,
            "total": weight_bytes * steps + kv_read + kv_write}


def run_minisgl(args, prompts, outs) -> dict:
    from minisgl import Engine
    from minisgl.mem_cache.memory_pool import TokenToKVPool

    kw = dict(page_size=args.page_size, disable_cuda_graph=args.disable_cuda_graph,
              disable_overlap_schedule=args.disable_overlap_schedule)
    if args.attention_backend:
        kw["attention_backend"] = args.attention_backend
    if args.mem_fraction_static:
        kw["mem_fraction_static"] = args.mem_fraction_static
    if args.max_running_requests:
        kw["max_running_requests"] = args.max_running_requests
    t0 = time.perf_counter()
    engine = Engine(args.model_path, **kw)
    load_s = time.perf_counter() - t0
    params = [{"max_new_tokens": m, "temperature": 0.6, "ignore_eos": True} for m in outs]
    engine.generate(input_ids=[[1, 2, 3]] * 4, sampling_params={"max_new_tokens": 8})  # 热身 / warm-up
    engine.flush_cache()
    sync = torch.cuda.synchronize if engine.server_args.device == "cuda" else (lambda: None)
    sync()
    if args.torch_sampler:
        engine.scheduler.sampler.use_fused = False  # 对照：torch 采样路径 / A/B: the torch sampling path
    timeline = StepTimeline(engine.scheduler) if args.timeline else None
    steps_before = engine.scheduler.forward_ct  # 热身的步数不算 / the warm-up's steps do not count
    t = time.perf_counter()
    results = engine.generate(input_ids=prompts, sampling_params=params)
    sync()
    elapsed = time.perf_counter() - t
    if timeline is not None:
        timeline.stop()
    assert [len(r["output_ids"]) for r in results] == outs, "every request must produce exactly its output length"
    cfg = engine.model_config
    weight_bytes = sum(p.numel() * p.element_size() for p in engine.scheduler.model_runner.model.parameters())
    kv_bpt = TokenToKVPool.bytes_per_token(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim,
                                           engine.scheduler.model_runner.dtype)
    stats = engine.scheduler.get_stats()
    overlap = engine.server_args.enable_overlap_schedule
    timed = {} if timeline is None else {"timeline": timeline.summary(kv_bpt), "host_s": timeline.host_summary()}
    engine.shutdown()
    del engine
    gc.collect()
    return {"elapsed_s": elapsed, "load_s": load_s, "weight_bytes": weight_bytes, "kv_bytes_per_token": kv_bpt,
            "forward_steps": stats["forward_ct"] - steps_before, "retractions": stats["num_retractions"], "overlap_schedule": overlap,
            **timed}


def run_hf(args, prompts, outs) -> dict:
    """HF transformers：左填充的批量 generate，输出长度固定为平均值。Padded batched generate, fixed output length."""
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=dtype).to(device).eval()
    n_out = round(sum(outs) / len(outs))
    max_len = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), max_len, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # 左填充 / left padding
        ids[i, max_len - len(p):] = torch.tensor(p)
        mask[i, max_len - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    bs = args.hf_batch_size or len(prompts)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.no_grad():
        model.generate(ids[:2, -16:], attention_mask=mask[:2, -16:], max_new_tokens=4, min_new_tokens=4,
                       do_sample=False, pad_token_id=0)  # 热身 / warm-up
        sync()
        t = time.perf_counter()
        for s in range(0, len(prompts), bs):
            model.generate(ids[s:s + bs], attention_mask=mask[s:s + bs], max_new_tokens=n_out, min_new_tokens=n_out,
                           do_sample=True, temperature=0.6, top_k=0, pad_token_id=0)
        sync()
        elapsed = time.perf_counter() - t
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"elapsed_s": elapsed, "output_tokens": n_out * len(prompts)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=None, help="缺省自带小模型 / default: the bundled model")
    ap.add_argument("--num-seqs", type=int, default=256)
    ap.add_argument("--max-input-len", type=int, default=1024)
    ap.add_argument("--max-output-len", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--page-size", type=int, default=1)
    ap.add_argument("--attention-backend", choices=["torch", "triton"])
    ap.add_argument("--disable-cuda-graph", action="store_true")
    ap.add_argument("--disable-overlap-schedule", action="store_true", help="关闭重叠调度（对照）/ the serialized scheduler, for comparison")
    ap.add_argument("--mem-fraction-static", type=float)
    ap.add_argument("--max-running-requests", type=int)
    ap.add_argument("--hf", action="store_true", help="同一进程里也跑 HF transformers / also run HF transformers")
    ap.add_argument("--hf-batch-size", type=int, help="HF 每批多少条（缺省全部）/ HF batch size (default: all)")
    ap.add_argument("--quick", action="store_true", help="CPU 冒烟测试的小规模 / tiny sizes for a CPU smoke test")
    ap.add_argument("--torch-sampler", action="store_true",
                    help="不用融合采样内核（对照）/ the torch sampler instead of the fused kernel, for comparison")
    ap.add_argument("--timeline", action="store_true",
                    help="按模式与 batch 大小汇总每步时间 / per-step time by mode and batch size")
    ap.add_argument("--json", help="把结果写成 JSON / write results as JSON")
    args = ap.parse_args()
    if args.quick:
        args.num_seqs, args.max_input_len, args.max_output_len = 8, 120, 110
    vocab_hi = 10000
    if args.model_path is None or args.quick:
        from minisgl.model.config import ModelConfig
        from minisgl.server_args import ServerArgs

        path = args.model_path or ServerArgs().resolve().model_path
        vocab_hi = min(vocab_hi, ModelConfig.from_pretrained(path).vocab_size - 1)
    prompts, outs = make_workload(args.num_seqs, args.max_input_len, args.max_output_len, args.seed, vocab_hi)
    n_in, n_out = sum(map(len, prompts)), sum(outs)

    m = run_minisgl(args, prompts, outs)
    device = "cuda" if torch.cuda.is_available() and not args.quick else "cpu"
    bw = copy_bandwidth(device)
    lb = lower_bound_bytes(m["weight_bytes"], m["kv_bytes_per_token"], prompts, outs)
    res = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "num_seqs": args.num_seqs, "input_tokens": n_in, "output_tokens": n_out,
        "minisgl_time_s": round(m["elapsed_s"], 3),
        "minisgl_output_tok_s": round(n_out / m["elapsed_s"], 1),
        "minisgl_total_tok_s": round((n_in + n_out) / m["elapsed_s"], 1),
        "forward_steps": m["forward_steps"], "retractions": m["retractions"],
        "overlap_schedule": m["overlap_schedule"],
        "copy_bandwidth_GBps": round(bw / 1e9, 1),
        "lower_bound_GB": {k: round(v / 1e9, 2) for k, v in lb.items()},
        "roofline_fraction": round(lb["total"] / bw / m["elapsed_s"], 3) if bw == bw else None,
    }
    res.update({k: m[k] for k in ("timeline", "host_s") if k in m})
    if args.hf:
        h = run_hf(args, prompts, outs)
        res["hf_time_s"] = round(h["elapsed_s"], 3)
        res["hf_output_tok_s"] = round(h["output_tokens"] / h["elapsed_s"], 1)
        res["speedup_vs_hf"] = round(res["minisgl_output_tok_s"] / res["hf_output_tok_s"], 2)
    print(json.dumps(res, indent=2))
    if "timeline" in res:
        print_summary(res["timeline"], res["host_s"], indent="")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
