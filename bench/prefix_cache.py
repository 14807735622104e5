"""前缀缓存基准：RadixAttention 开 / 关、lpm / fcfs，在共享前缀与多轮对话两种负载上，一次跑完。
Prefix-cache benchmark: radix cache on / off and lpm / fcfs, on a shared-prefix and a multi-turn workload, in one run.

【生活比喻】Metaphor
  图书馆卡片目录（RadixCache）：同一组读者都要先读同一本厚书（系统提示）。有目录时只读一次、
  后来的人直接翻到自己的那一页；没有目录时每个人从第一页读起。领班（调度器）若先安排
  “书已经摊开在桌上”的读者（lpm），书被收走（驱逐）之前就能多用几次。
  A library card catalogue: every reader of a group must first read the same thick book (the system
  prompt). With the catalogue it is read once and later readers jump to their own page; without it,
  everyone starts from page one. A host who seats first the readers whose book is already open (lpm)
  gets more use out of it before it is put away (evicted).

【做什么】What it measures
  配置 / configurations (same prompts, same engine weights, a fresh Scheduler + cache each):
    radix+lpm    前缀缓存开，最长前缀优先 / radix cache on, longest prefix match first
    radix+fcfs   前缀缓存开，先来先服务   / radix cache on, first come first served
    no-radix     --disable-radix-cache（ChunkCache：请求结束即释放 KV）/ KV freed when a request ends
  负载 / workloads:
    shared-prefix  --num-groups 组 × --prompts-per-group 个 prompt；组内共享 --system-len 个 token 的系统提示，
                   后接 --question-len 个 token 的问题，输出 --output-len 个 token；打乱顺序后一次全部提交。
                   Groups sharing a system prompt, shuffled across groups, all submitted at once.
    multi-turn     --conversations 个对话 × --turns 轮；第 k 轮的 prompt = 系统提示 + 前 k−1 轮的问答 + 新问题。
                   每一轮所有对话一起提交（下一轮要用上一轮的回答）。Each round's prompt = history + a new question.
  指标 / metrics:
    hit rate   = Σ cached_tokens / Σ prompt_tokens（每个请求的 meta_info）
    throughput = (Σ prompt_tokens + Σ completion_tokens) / 墙钟时间；输出 token/s、请求/s 也记下
    speedup    = radix+lpm 的吞吐 ÷ no-radix 的吞吐 / throughput of radix+lpm over no-radix
    reqs/prefix = decode 批里平均每段共享前缀有几个请求（lpm 把一组聚在一起，cascade 注意力每组只读一次前缀）
                  requests per shared prefix in the decode batches (lpm keeps a group together; cascade
                  attention reads a prefix once per group)

【为什么共用一个 ModelRunner】Why one ModelRunner for all configurations
  权重与 KV 池在 ModelRunner 里，前缀缓存与调度策略在 Scheduler 里。每个配置清空池子、换一个新的
  Scheduler，既保证“从空缓存开始、prompt 完全相同”，又省掉每次加载权重、捕获 CUDA graph 的时间。
  `--server` 则为每个配置启动一个真正的三进程服务器（Engine(mode="server")），经 HTTP 测。
  Weights and the KV pool live in the ModelRunner; the prefix cache and the policy live in the
  Scheduler. Each configuration empties the pools and gets a new Scheduler: an empty cache and identical
  prompts, without reloading weights or re-capturing CUDA graphs. `--server` starts a real three-process
  server per configuration instead (Engine(mode="server")) and measures over HTTP.

Usage:
    python bench/make_random_model.py --out /tmp/qwen3-0.6b --tokenizer .bench_tok
    python bench/prefix_cache.py --model-path /tmp/qwen3-0.6b --json prefix_cache.json   # GPU, full size
    python bench/prefix_cache.py --quick --json /tmp/prefix_cache.json                    # CPU, bundled model
    python bench/prefix_cache.py --quick --server                                         # over HTTP
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # 同目录的 serving.py / the sibling serving.py

from step_timeline import StepTimeline, print_summary  # noqa: E402
from serving import random_ids, sample_shared_prefix  # noqa: E402

CONFIGS = {
    "radix+lpm": dict(schedule_policy="lpm"),
    "radix+fcfs": dict(schedule_policy="fcfs"),
    "no-radix": dict(disable_radix_cache=True),
}


# ================================================================================
# 两种跑法：进程内（默认）与 HTTP 服务器 / Two ways to run: in-process (default) and over HTTP
# ================================================================================
class InProcessRunner:
    """一个 Engine；每个配置换一个新的 Scheduler（共用 ModelRunner）。One Engine, a new Scheduler per config."""

    def __init__(self, model_path: Optional[str], engine_kw: Dict[str, Any]):
        from minisgl import Engine

        self.engine = Engine(model_path, **engine_kw)
        self.timeline = False  # --timeline：每次发射记一行 / one row per launched batch
        self.base_args = self.engine.server_args
        self.vocab_size = self.engine.model_config.vocab_size
        self.device = self.base_args.device

    def configure(self, overrides: Dict[str, Any]) -> None:
        from minisgl.scheduler.scheduler import Scheduler

        old = self.engine.scheduler
        assert old.flush_cache(), "the scheduler must be idle between configurations"
        args = dataclasses.replace(self.base_args, **overrides)
        args.check()
        self.engine.server_args = args
        self.engine.scheduler = sch = Scheduler(args, model_runner=old.model_runner, tokenizer=self.engine.tokenizer)
        # 数一数 decode 批里每段共享前缀有几个请求（cascade 注意力每组只读一次前缀，组越大省得越多）。
        # Count requests per shared prefix in the decode batches (cascade reads a prefix once per group).
        self.sharing = {"members": 0, "prefixes": 0}
        prepare = sch._prepare_decode

        def counting_prepare(reqs):
            keys = [r.shared_prefix for r in reqs if r.shared_prefix is not None]
            self.sharing["members"] += len(keys)
            self.sharing["prefixes"] += len(set(keys))
            return prepare(reqs)

        sch._prepare_decode = counting_prepare
        # 主机账：lpm 排序（对整个等待队列 match_prefix）花的时间，与等设备的时间（LaunchedBatch.results 里的同步；
        # 远小于总时间说明主机是瓶颈）。The host's ledger: time sorting for lpm, and time blocked on the device
        # (the sync inside LaunchedBatch.results; much less than the total means the host is the bottleneck).
        from minisgl.scheduler import scheduler as sched_mod

        self.host = host = {"sorts": 0, "sort_s": 0.0, "device_wait_s": 0.0}
        sort = sch.policy.calc_priority

        def timed_sort(queue):
            t = time.perf_counter()
            used = sort(queue)
            host["sorts"] += 1
            host["sort_s"] += time.perf_counter() - t
            return used

        sch.policy.calc_priority = timed_sort
        # 类上的方法只包一次（每个配置换的是 host 字典）/ wrap the class method once; each config swaps the dict
        untimed = getattr(sched_mod.LaunchedBatch, "_untimed_results", sched_mod.LaunchedBatch.results)
        sched_mod.LaunchedBatch._untimed_results = untimed
        runner = self

        def timed_results(launched):
            t = time.perf_counter()
            out = untimed(launched)
            runner.host["device_wait_s"] += time.perf_counter() - t
            return out

        sched_mod.LaunchedBatch.results = timed_results
        if getattr(self, "steps", None) is not None:
            self.steps.detach(old)  # 共用的 ModelRunner 上不留旧包装 / no stale wrapper on the shared runner
        self.steps = StepTimeline(sch) if self.timeline else None

    def timeline_summary(self) -> Optional[dict]:
        """按模式、batch 大小分档的时间与 GPU 忙闲（step_timeline.py）。Time per mode and batch size, GPU busy/idle."""
        if self.steps is None:
            return None
        from minisgl.mem_cache.memory_pool import TokenToKVPool

        self.steps.stop()
        cfg, runner = self.engine.model_config, self.engine.scheduler.model_runner
        kv_bpt = TokenToKVPool.bytes_per_token(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, runner.dtype)
        return self.steps.summary(kv_bpt)

    def host_stats(self) -> Optional[dict]:
        stats = {k: round(v, 3) for k, v in self.host.items()}
        if self.steps is not None:  # --timeline：主机各阶段的秒数 / host seconds per phase
            stats["phases_s"] = self.steps.host_summary()
        return stats

    def requests_per_prefix(self) -> Optional[float]:
        s = self.sharing
        return round(s["members"] / s["prefixes"], 2) if s["prefixes"] else None

    def generate(self, prompts: List[List[int]], params: List[dict]) -> List[dict]:
        return self.engine.generate(input_ids=prompts, sampling_params=params)

    def sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def forward_steps(self) -> Optional[int]:
        return self.engine.scheduler.forward_ct

    def close(self) -> None:
        self.engine.shutdown()


class ServerRunner:
    """每个配置一个真正的 `minisgl serve`（三进程），经 HTTP /generate。A real server per configuration."""

    def __init__(self, model_path: Optional[str], engine_kw: Dict[str, Any]):
        from minisgl.model.config import ModelConfig
        from minisgl.server_args import ServerArgs

        self.model_path, self.engine_kw = model_path, engine_kw
        self.engine = None
        path = ServerArgs(model_path=model_path).resolve().model_path
        self.vocab_size = ModelConfig.from_pretrained(path).vocab_size
        self.device = "server"

    def configure(self, overrides: Dict[str, Any]) -> None:
        from minisgl import Engine

        self.close()
        self.engine = Engine(self.model_path, mode="server", **{**self.engine_kw, **overrides})

    def generate(self, prompts: List[List[int]], params: List[dict]) -> List[dict]:
        return self.engine.generate(input_ids=prompts, sampling_params=params)

    def sync(self) -> None:
        pass

    def forward_steps(self) -> Optional[int]:
        return self.engine.get_server_info().get("forward_ct")

    def requests_per_prefix(self) -> Optional[float]:
        return None  # 调度器在另一个进程里 / the scheduler lives in another process

    def timeline_summary(self) -> Optional[dict]:
        return None

    def host_stats(self) -> Optional[dict]:
        return None

    def close(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None


# ================================================================================
# 两种负载 / The two workloads
# ================================================================================
def _params(n: int, output_len: int) -> List[dict]:
    # 贪心 + 忽略 EOS：每个配置的输出长度完全相同。Greedy, ignore EOS: identical output lengths everywhere.
    return [{"max_new_tokens": output_len, "temperature": 0.0, "ignore_eos": True}] * n


# 每个负载分两步：build 造好全部输入（不计时），run 把它们交给引擎（计时）。SGLang 的 bench_serving 也是先造数据集。
# Each workload has two steps: build makes every input (untimed), run hands them to the engine (timed), as
# SGLang's bench_serving builds its dataset first. Building 1,024 prompts of 2k random ids takes ~0.3 s of
# Python, which used to sit inside every configuration's timer and pulled every ratio towards 1.
def build_shared_prefix(runner, a) -> List[List[int]]:
    reqs = sample_shared_prefix(a.num_groups, a.prompts_per_group, a.system_len, a.question_len, a.output_len,
                                runner.vocab_size, a.seed)
    return [r.prompt for r in reqs]


def run_shared_prefix(runner, a, prompts: List[List[int]]) -> List[dict]:
    return runner.generate(prompts, _params(len(prompts), a.output_len))


def build_multi_turn(runner, a) -> tuple:
    rng = random.Random(a.seed + 1)
    system = random_ids(rng, a.mt_system_len, runner.vocab_size)  # 所有对话共享 / shared by all conversations
    # 每个配置看到完全相同的用户输入。Identical user input in every configuration.
    questions = [[random_ids(rng, a.mt_question_len, runner.vocab_size) for _ in range(a.turns)]
                 for _ in range(a.conversations)]
    return system, questions


def run_multi_turn(runner, a, data: tuple) -> List[dict]:
    """多轮对话：每轮把上一轮的回答拼进历史。Multi-turn chat: each round appends the last answer to the history."""
    system, questions = data
    history = [list(system) for _ in range(a.conversations)]
    results = []
    for t in range(a.turns):
        prompts = [h + questions[c][t] for c, h in enumerate(history)]
        outs = runner.generate(prompts, _params(len(prompts), a.mt_output_len))
        history = [p + o["output_ids"] for p, o in zip(prompts, outs)]
        results += outs
    return results


WORKLOADS: Dict[str, Tuple[Callable, Callable]] = {"shared-prefix": (build_shared_prefix, run_shared_prefix),
                                                   "multi-turn": (build_multi_turn, run_multi_turn)}


def measure(runner, workload: str, a) -> Dict[str, Any]:
    """跑一个负载，返回命中率与吞吐。Run one workload; return hit rate and throughput."""
    build, run = WORKLOADS[workload]
    data = build(runner, a)
    steps0 = runner.forward_steps()
    runner.sync()
    if getattr(runner, "steps", None) is not None:
        runner.steps.restart()  # 主机账从计时起点算起 / the host ledger starts with the timer
    t = time.perf_counter()
    results = run(runner, a, data)
    runner.sync()
    elapsed = time.perf_counter() - t
    metas = [r["meta_info"] for r in results]
    bad = [m["finish_reason"] for m in metas if (m["finish_reason"] or {}).get("type") != "length"]
    assert not bad, f"every request must finish by length: {bad[:3]}"
    prompt = sum(m["prompt_tokens"] for m in metas)
    cached = sum(m["cached_tokens"] for m in metas)
    completion = sum(m["completion_tokens"] for m in metas)
    steps1 = runner.forward_steps()
    return {
        "num_requests": len(metas), "prompt_tokens": prompt, "cached_tokens": cached,
        "completion_tokens": completion, "elapsed_s": round(elapsed, 3),
        "hit_rate": round(cached / prompt, 4),
        "total_throughput": round((prompt + completion) / elapsed, 1),
        "output_throughput": round(completion / elapsed, 1),
        "request_throughput": round(len(metas) / elapsed, 3),
        "forward_steps": None if steps0 is None or steps1 is None else steps1 - steps0,
        # decode 批里平均每段共享前缀的请求数（只有进程内能数）/ requests per shared prefix in decode batches
        "requests_per_prefix": runner.requests_per_prefix(),
        **({"timeline": tl} if (tl := runner.timeline_summary()) else {}),
        **({"host": hs} if (hs := runner.host_stats()) else {}),
    }


def warm_up(runner, vocab: int) -> None:
    """编译/预热两条路径：无前缀的 prefill 和带已缓存前缀的 prefill（GPU 上 Triton 第一次要编译）。

    Warm both paths, plain prefill and prefill over a cached prefix (Triton compiles on first use).
    """
    rng = random.Random(123)
    shared = random_ids(rng, 64, vocab)
    prompts = [shared + random_ids(rng, 8, vocab) for _ in range(4)]
    runner.generate(prompts[:1], _params(1, 4))
    runner.generate(prompts, _params(4, 4))


# ================================================================================
# 入口 / Entry point
# ================================================================================
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=None, help="缺省自带小模型 / default: the bundled model")
    ap.add_argument("--num-groups", type=int, default=64)
    ap.add_argument("--prompts-per-group", type=int, default=16)
    ap.add_argument("--system-len", type=int, default=2048)
    ap.add_argument("--question-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--conversations", type=int, default=64)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--mt-system-len", type=int, default=1024)
    ap.add_argument("--mt-question-len", type=int, default=128)
    ap.add_argument("--mt-output-len", type=int, default=128)
    ap.add_argument("--workloads", default="shared-prefix,multi-turn")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="逗号分隔 / comma-separated: " + ", ".join(CONFIGS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--server", action="store_true", help="每个配置起一个 HTTP 服务器 / a real server per config")
    # 传给引擎的参数（名字同 minisgl serve）/ engine flags, named as in `minisgl serve`
    ap.add_argument("--page-size", type=int)
    ap.add_argument("--max-running-requests", type=int)
    ap.add_argument("--cuda-graph-max-bs", type=int)
    ap.add_argument("--chunked-prefill-size", type=int)
    ap.add_argument("--max-prefill-tokens", type=int)
    ap.add_argument("--max-total-tokens", type=int)
    ap.add_argument("--mem-fraction-static", type=float)
    ap.add_argument("--attention-backend", choices=["torch", "triton"])
    ap.add_argument("--disable-cuda-graph", action="store_true")
    ap.add_argument("--disable-cascade-attention", action="store_true",
                    help="decode 时每个请求各读一遍共享前缀（对照）/ read shared prefixes per request, for comparison")
    ap.add_argument("--quick", action="store_true", help="CPU 冒烟测试的小规模 / tiny sizes for a CPU smoke test")
    ap.add_argument("--json", help="把结果写成 JSON / write results as JSON")
    ap.add_argument("--timeline", action="store_true",
                    help="按模式与 batch 大小记时间（只限进程内）/ time per mode and batch size (in-process only)")
    return ap


QUICK = dict(num_groups=4, prompts_per_group=4, system_len=384, question_len=32, output_len=8,
             conversations=4, turns=3, mt_system_len=128, mt_question_len=32, mt_output_len=16)
ENGINE_FLAGS = ("page_size", "max_running_requests", "cuda_graph_max_bs", "chunked_prefill_size", "max_prefill_tokens",
                "max_total_tokens", "mem_fraction_static", "attention_backend")


def main(argv: Optional[List[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    if a.quick:
        for k, v in QUICK.items():
            setattr(a, k, v)
    engine_kw = {k: getattr(a, k) for k in ENGINE_FLAGS if getattr(a, k) is not None}
    if a.disable_cuda_graph:
        engine_kw["disable_cuda_graph"] = True
    if a.disable_cascade_attention:
        engine_kw["disable_cascade_attention"] = True
    workloads = a.workloads.split(",")
    configs = a.configs.split(",")
    for name in workloads + configs:
        if name not in WORKLOADS and name not in CONFIGS:
            build_parser().error(f"unknown workload or configuration {name!r}")

    runner = (ServerRunner if a.server else InProcessRunner)(a.model_path, engine_kw)
    runner.timeline = a.timeline
    device = runner.device
    results: Dict[str, Dict[str, Any]] = {w: {} for w in workloads}
    try:
        for cfg in configs:
            runner.configure(CONFIGS[cfg])
            warm_up(runner, runner.vocab_size)
            for w in workloads:
                if not a.server:
                    runner.configure(CONFIGS[cfg])  # 每个负载从空缓存开始 / every workload starts cold
                results[w][cfg] = r = measure(runner, w, a)
                print(f"{w:<14} {cfg:<11} hit {r['hit_rate']:6.1%}  {r['total_throughput']:>10.1f} tok/s  "
                      f"{r['elapsed_s']:>8.2f} s  steps {r['forward_steps']}  "
                      f"reqs/prefix {r['requests_per_prefix']}  "
                      f"host {({k: v for k, v in (r.get('host') or {}).items() if k != 'phases_s'})}", flush=True)
                print_summary(r.get("timeline") or {}, (r.get("host") or {}).get("phases_s"))
    finally:
        runner.close()

    # ======== 汇总 / Summary ========
    summary: Dict[str, Any] = {}
    for w, rs in results.items():
        s: Dict[str, Any] = {}
        if "radix+lpm" in rs and "no-radix" in rs:
            s["speedup_radix_vs_off"] = round(
                rs["radix+lpm"]["total_throughput"] / rs["no-radix"]["total_throughput"], 2)
        if "radix+fcfs" in rs and "no-radix" in rs:
            s["speedup_fcfs_radix_vs_off"] = round(
                rs["radix+fcfs"]["total_throughput"] / rs["no-radix"]["total_throughput"], 2)
        if "radix+lpm" in rs and "radix+fcfs" in rs:
            s["hit_rate_lpm_minus_fcfs"] = round(rs["radix+lpm"]["hit_rate"] - rs["radix+fcfs"]["hit_rate"], 4)
        summary[w] = s
    import torch

    out = {"benchmark": "prefix_cache",
           "device": torch.cuda.get_device_name() if device == "cuda" else device,
           "model_path": a.model_path or "bundled tiny-zh-en", "mode": "server" if a.server else "inprocess",
           "quick": a.quick, "args": vars(a), "results": results, "summary": summary}
    print("\n" + f"{'workload':<14} {'config':<11} {'hit rate':>9} {'tok/s':>10} {'out tok/s':>10} {'time s':>8}")
    for w, rs in results.items():
        for cfg, r in rs.items():
            print(f"{w:<14} {cfg:<11} {r['hit_rate']:>9.1%} {r['total_throughput']:>10.1f} "
                  f"{r['output_throughput']:>10.1f} {r['elapsed_s']:>8.2f}")
        print(f"{'':<14} summary: {summary[w]}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
