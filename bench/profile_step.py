"""一步调度里时间花在哪：按阶段计时（阶段边界同步 GPU）+ cProfile 热点。
Where a scheduler step spends its time: per-phase timers (GPU synced at phase boundaries) and the
cProfile hot spots. Used to decide what to optimise (measure first).

Usage: python bench/profile_step.py --model-path /tmp/qwen3-0.6b [--bs 1 256] [--steps 200] [--kernels]
       python bench/profile_step.py --model-path /tmp/qwen3-0.6b --bs 256 --prompt-len 2176 --group-size 16 --kernels
"""
from __future__ import annotations

import argparse
import cProfile
import collections
import functools
import io
import pstats
import random
import time

import torch


def timed(name, fn, acc, sync):
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        sync()
        t = time.perf_counter()
        r = fn(*a, **kw)
        sync()
        acc[name] += time.perf_counter() - t
        return r

    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--bs", type=int, nargs="+", default=[1, 256])
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0,
                    help="0 = 贪心；offline_throughput 用 0.6 / 0 is greedy; offline_throughput uses 0.6")
    ap.add_argument("--group-size", type=int, default=1,
                    help="每 N 个 prompt 共享前 prompt-len − 128 个 token（像 prefix_cache 的共享前缀，decode 走 cascade）"
                         " / every N prompts share all but their last 128 tokens (shared-prefix decode, cascade)")
    ap.add_argument("--kernels", action="store_true",
                    help="再用 torch.profiler 列出 decode 步里最耗时的 GPU kernel / list the top GPU kernels of decode steps")
    ap.add_argument("--max-running-requests", type=int, help="缺省同引擎 / default: the engine's")
    ap.add_argument("--cuda-graph-max-bs", type=int, help="缺省同引擎 / default: the engine's")
    a = ap.parse_args()
    from minisgl import Engine

    engine_kw = {k: getattr(a, k) for k in ("max_running_requests", "cuda_graph_max_bs") if getattr(a, k) is not None}
    engine = Engine(a.model_path, **engine_kw)
    sched = engine.scheduler
    sync = torch.cuda.synchronize if engine.server_args.device == "cuda" else (lambda: None)
    rng = random.Random(0)
    for bs in a.bs:
        vocab = min(10000, engine.model_config.vocab_size)
        own = a.prompt_len if a.group_size == 1 else min(128, a.prompt_len)
        systems = [[rng.randrange(vocab) for _ in range(a.prompt_len - own)] for _ in range(-(-bs // a.group_size))]
        prompts = [systems[i // a.group_size] + [rng.randrange(vocab) for _ in range(own)] for i in range(bs)]
        params = {"max_new_tokens": a.steps, "ignore_eos": True, "temperature": a.temperature}
        engine.generate(input_ids=prompts[:2], sampling_params={"max_new_tokens": 4})
        engine.flush_cache()
        # ======== 阶段计时 / per-phase timers ========
        acc = collections.defaultdict(float)
        originals = {}
        for obj, name in [(sched, "get_new_batch_prefill"), (sched, "update_running_batch"), (sched, "_prepare_decode"),
                          (sched, "_prepare_extend"), (sched.model_runner, "forward"), (sched, "process_batch_result")]:
            originals[(obj, name)] = getattr(obj, name)
            setattr(obj, name, timed(name, getattr(obj, name), acc, sync))
        sampler = sched.sampler
        sampler.sample = timed("sampler", sampler.sample, acc, sync)  # 调度器调用 sample() / what the scheduler calls
        t = time.perf_counter()
        engine.generate(input_ids=prompts, sampling_params=params)
        sync()
        total = time.perf_counter() - t
        for (obj, name), fn in originals.items():
            setattr(obj, name, fn)
        del sampler.sample  # 换回类上的方法 / back to the class's method
        steps = sched.forward_ct
        print(f"\n=== bs={bs} prompt={a.prompt_len} new={a.steps}: total {total:.3f}s ===")
        for k, v in sorted(acc.items(), key=lambda kv: -kv[1]):
            print(f"  {k:24s} {v * 1e3:9.1f} ms")
        print(f"  {'(other)':24s} {(total - sum(acc.values())) * 1e3:9.1f} ms")
        # ======== cProfile（不同步，真实流水）/ cProfile, unsynced ========
        engine.flush_cache()
        prof = cProfile.Profile()
        prof.enable()
        t = time.perf_counter()
        engine.generate(input_ids=prompts, sampling_params=params)
        sync()
        total = time.perf_counter() - t
        prof.disable()
        print(f"  unsynced total {total:.3f}s = {total / a.steps * 1e3:.2f} ms/step (decode-dominated)")
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(22)
        print("\n".join(s.getvalue().splitlines()[6:40]))
        engine.flush_cache()
        if a.kernels and engine.server_args.device == "cuda":
            from torch.profiler import ProfilerActivity, profile

            # 先缓存共享的部分（整个 prompt，或 --group-size 时只缓存系统提示，组员才会按组走 cascade），
            # 再流式生成：每个请求都拿到第一个 token（prefill 都做完了）之后才开始记录，表里只有 decode。
            # Cache the shared part first (the whole prompt, or only the system prompts with
            # --group-size, so that members group for cascade attention), then stream: recording
            # starts once every request has its first token (all prefills done), so the table is decode-only.
            cached = prompts if a.group_size == 1 else systems
            engine.generate(input_ids=cached, sampling_params={**params, "max_new_tokens": 1})
            sync()
            stream = engine.generate(input_ids=prompts, sampling_params={**params, "max_new_tokens": 40}, stream=True)
            started = set()
            for delta in stream:
                started.add(delta["index"])
                if len(started) == len(prompts):
                    break
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
                for _ in stream:
                    pass
                sync()
            print(p.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=60))
            engine.flush_cache()


if __name__ == "__main__":
    main()
