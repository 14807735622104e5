"""第 04 章的请求时间线：一个请求在每个阶段花了多少时间（自带小模型，进程内 Engine）。

Chapter 04's request timeline: where the time of one request goes, stage by stage, measured
on the bundled tiny model with the in-process Engine.

    python docs/scripts/request_timeline.py > docs/scripts/request_timeline.out.txt   # 约 30 秒 / ~30 s

怎么测 / How it measures:
  不改引擎的任何代码，只把 Scheduler.step() 会调用的几个方法包上计时器（实例属性覆盖方法），
  所以计时来自真实的代码路径：
  Nothing in the engine is changed; the methods that Scheduler.step() calls are wrapped in timers
  (an instance attribute shadows the method), so the times come from the real code path:

    tokenize    minisgl.engine.normalize_requests         文字 → ids、参数校验 / text → ids, checks
    schedule    get_new_batch_prefill, update_running_batch, _prepare_extend, _prepare_decode
    forward     model_runner.forward                        模型前向 → logits [bs, V]
    sample      scheduler.sampler                           logits → 下一个 token / next token
    process     process_batch_result                        追加 token、检查结束、交 KV 给缓存
    detokenize  IncrementalDetokenizer.append/flush/take    ids → 文字 / ids → text
    other       step() 里剩下的 Python 开销 / the rest of step(): Python bookkeeping

  请求是流式的（stream=True），所以每一步都反分词，和服务器里的流式请求一样。
  The request streams (stream=True), so every step detokenizes, as a streaming request in the server.
  每次之前 flush_cache()，让每次都从冷缓存开始；最后一段不 flush，看前缀缓存命中时 prefill 变成多少。
  flush_cache() before each run, so each starts cold; the last part skips it to show a prefix hit.
  再测模型之外的 CPU 活：把自带的 heldout.txt（约 6 万字符）整篇分词要多久；
  Then CPU work outside the model: tokenizing the bundled heldout.txt (about 60k characters);
  然后测一次 ZMQ ipc:// 的一跳（pickle + PUSH → PULL），即服务器模式在进程之间多付的代价；
  最后启动真的三进程服务器（Engine(mode="server")），经 HTTP 发同一个请求，对比端到端时间。
  then one ZMQ ipc:// hop (pickle + PUSH → PULL): what server mode pays between processes; last, a
  real three-process server (Engine(mode="server")) answers the same request over HTTP, end to end.

计时随机器变化（这个文件不做逐字比较，同 measure.py）；token 与文字是确定的（temperature 0）。
Timings vary by machine (this output is not compared exactly, like measure.py); tokens and text
are deterministic (temperature 0).
"""
from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict

import torch

torch.set_num_threads(2)

import minisgl  # noqa: E402
import minisgl.engine as engine_mod  # noqa: E402
from minisgl.detokenizer import IncrementalDetokenizer  # noqa: E402
from minisgl.io_struct import BatchTokenIDOut, TokenizedGenerateReqInput  # noqa: E402
from minisgl.sampling.sampling_params import SamplingParams  # noqa: E402

PROMPT = "床前明月光，"
PARAMS = {"max_new_tokens": 16, "temperature": 0}
REPEAT = 5  # 取总时间最短的一次 / keep the fastest of 5 runs (the machine may be shared)


class Timeline:
    """按阶段累计时间（秒），并记录每一步的分解。Per-stage totals, and a per-step breakdown."""

    def __init__(self, device: str):
        self.sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        self.cur = defaultdict(float)  # 当前这一步 / the step in progress
        self.outside = defaultdict(float)  # step() 之外（分词、反分词）/ outside step()

    def wrap(self, fn, stage: str, in_step: bool = True):
        def timed(*args, **kwargs):
            self.sync()
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.sync()
                (self.cur if in_step else self.outside)[stage] += time.perf_counter() - t
        return timed


def instrument(engine, tl: Timeline) -> list:
    """给引擎的各阶段装上计时器；返回每一步的记录列表。Install the timers; return the list of step records."""
    sched = engine.scheduler
    for name in ("get_new_batch_prefill", "update_running_batch", "_prepare_extend", "_prepare_decode"):
        setattr(sched, name, tl.wrap(getattr(sched, name), "schedule"))
    sched.model_runner.forward = tl.wrap(sched.model_runner.forward, "forward")
    sched.sampler = tl.wrap(sched.sampler, "sample")
    sched.process_batch_result = tl.wrap(sched.process_batch_result, "process")
    engine_mod.normalize_requests = tl.wrap(engine_mod.normalize_requests, "tokenize", in_step=False)
    for name in ("append", "flush", "take"):
        setattr(IncrementalDetokenizer, name, tl.wrap(getattr(IncrementalDetokenizer, name), "detokenize",
                                                      in_step=False))
    steps = []
    real_step = sched.step

    def step():
        tl.cur.clear()
        t = time.perf_counter()
        out = real_step()
        total = time.perf_counter() - t
        rec = dict(tl.cur)
        rec.update(mode=out.forward_mode.name if out.forward_mode else "IDLE", tokens=out.num_tokens, total=total)
        rec["other"] = total - sum(rec.get(k, 0.0) for k in ("schedule", "forward", "sample", "process"))
        steps.append(rec)
        return out

    sched.step = step
    return steps


def one_run(engine, tl: Timeline, steps: list, flush: bool = True) -> dict:
    if flush:
        assert engine.flush_cache()
    steps.clear()
    tl.outside.clear()
    t0 = time.perf_counter()
    first, text, meta = None, "", None
    for delta in engine.generate(PROMPT, PARAMS, stream=True):
        if first is None and delta["output_ids"]:
            first = time.perf_counter() - t0
        text += delta["text"]
        meta = delta["meta_info"]
    e2e = time.perf_counter() - t0
    return {"steps": [dict(s) for s in steps], "outside": dict(tl.outside), "ttft": first, "e2e": e2e,
            "text": text, "meta": meta}


def ms(x: float) -> str:
    return f"{x * 1e3:8.3f}"


def print_run(run: dict) -> None:
    cols = ("schedule", "forward", "sample", "process", "other")
    print(f"{'step':>4} {'mode':<6} {'tokens':>6} " + " ".join(f"{c:>8}" for c in cols) + f" {'step':>8}   (ms)")
    for i, s in enumerate(run["steps"], 1):
        print(f"{i:>4} {s['mode']:<6} {s['tokens']:>6} " + " ".join(ms(s.get(c, 0.0)) for c in cols)
              + f" {ms(s['total'])}")
    decode = [s for s in run["steps"] if s["mode"] == "DECODE"]
    sums = {c: sum(s.get(c, 0.0) for s in run["steps"]) for c in cols}
    print(f"{'sum':>4} {'':<6} {sum(s['tokens'] for s in run['steps']):>6} "
          + " ".join(ms(sums[c]) for c in cols) + f" {ms(sum(s['total'] for s in run['steps']))}")
    if decode:
        med = {c: statistics.median(s.get(c, 0.0) for s in decode) for c in cols}
        print(f"{'med':>4} {'DECODE':<6} {1:>6} " + " ".join(ms(med[c]) for c in cols)
              + f" {ms(statistics.median(s['total'] for s in decode))}")


def ipc_hop_us(n: int = 300) -> dict:
    """一条消息经 ZMQ ipc:// 走一跳（send_pyobj → recv_pyobj）的中位时间，微秒。Median µs of one hop."""
    import zmq

    out = {}
    with tempfile.TemporaryDirectory(prefix="minisgl-ipc-") as d:
        ctx = zmq.Context()
        pull = ctx.socket(zmq.PULL)
        pull.bind(f"ipc://{d}/hop")
        push = ctx.socket(zmq.PUSH)
        push.connect(f"ipc://{d}/hop")
        req = TokenizedGenerateReqInput("r" * 32, PROMPT, list(range(100)), SamplingParams(max_new_tokens=16))
        batch = BatchTokenIDOut()
        for i in range(64):
            batch.rids.append(f"{i:032x}")
            batch.output_ids.append([i])
            batch.finished_reasons.append(None)
            batch.prompt_tokens.append(100)
            batch.completion_tokens.append(5)
            batch.cached_tokens.append(0)
            batch.skip_special_tokens.append(True)
            batch.stop_strs.append([])
            batch.prompt_tails.append([1, 2, 3, 4, 5])
            batch.streams.append(True)
        for name, msg in (("TokenizedGenerateReqInput (100-token prompt)", req),
                          ("BatchTokenIDOut (64 requests, 1 token each)", batch)):
            times = []
            for _ in range(n):
                t = time.perf_counter()
                push.send_pyobj(msg)
                pull.recv_pyobj()
                times.append(time.perf_counter() - t)
            out[name] = statistics.median(times) * 1e6
        push.close(0)
        pull.close(0)
        ctx.term()
    return out


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t = time.perf_counter()
    engine = minisgl.Engine()  # 没有 model_path = 自带小模型 / no model_path = the bundled tiny model
    load_s = time.perf_counter() - t
    args, cfg = engine.server_args, engine.model_config
    print(f"# python docs/scripts/request_timeline.py — {time.strftime('%Y-%m-%d')}, {platform.machine()} "
          f"{os.cpu_count()}-core, "
          f"torch {torch.__version__}, device={args.device}, dtype={args.dtype}, attention={args.attention_backend}")
    print(f"# model: bundled tiny-zh-en (Qwen3, {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
          f"vocab {cfg.vocab_size}); Engine() start-up {load_s:.2f} s")
    print(f"# request: {PROMPT!r}, {PARAMS}, stream=True; best of {REPEAT} runs (by end-to-end time)")
    tl = Timeline(args.device)
    steps = instrument(engine, tl)
    engine.generate("warm up", {"max_new_tokens": 4, "temperature": 0})  # 首次调用的惰性初始化 / lazy first-call work
    runs = [one_run(engine, tl, steps) for _ in range(REPEAT)]
    best = min(runs, key=lambda r: r["e2e"])
    ids = engine.tokenizer.encode(PROMPT)
    meta = best["meta"]

    print("\n== 1. what the request was ==")
    print(f"prompt {PROMPT!r} -> {len(ids)} tokens {ids}")
    print(f"output {best['text']!r}")
    print(f"meta_info: finish_reason={meta['finish_reason']}, prompt_tokens={meta['prompt_tokens']}, "
          f"completion_tokens={meta['completion_tokens']}, cached_tokens={meta['cached_tokens']}")

    print("\n== 2. every Scheduler.step() of the request, in ms ==")
    print_run(best)

    print("\n== 3. the timeline of the request, in ms ==")
    steps_ = best["steps"]
    prefill = steps_[0]
    decode_total = sum(s["total"] for s in steps_[1:])
    out = best["outside"]
    rows = [
        ("tokenize (normalize_requests)", out.get("tokenize", 0.0)),
        ("step 1: EXTEND (prefill) -> 1st token", prefill["total"]),
        (f"steps 2-{len(steps_)}: DECODE x {len(steps_) - 1}", decode_total),
        ("detokenize (all steps, incremental)", out.get("detokenize", 0.0)),
    ]
    for name, v in rows:
        print(f"{name:<44} {ms(v)}")
    accounted = sum(v for _, v in rows)
    print(f"{'rest of Engine.generate (Python glue)':<44} {ms(best['e2e'] - accounted)}")
    print(f"{'end to end (generate() call -> last delta)':<44} {ms(best['e2e'])}")
    print(f"{'time to first token (TTFT)':<44} {ms(best['ttft'])}")
    n_dec = len(steps_) - 1
    if n_dec:
        print(f"{'time per output token (TPOT, decode)':<44} {ms(decode_total / n_dec)}")

    print(f"\n== 4. the same request again, prefix cache warm (no flush), best of {REPEAT} ==")
    warm = [one_run(engine, tl, steps, flush=False) for _ in range(REPEAT)]
    again = min(warm, key=lambda r: r["steps"][0]["total"])
    s1 = again["steps"][0]
    print(f"step 1: {s1['mode']} of {s1['tokens']} token(s) instead of {prefill['tokens']}, "
          f"cached_tokens={again['meta']['cached_tokens']}, step time {ms(s1['total']).strip()} ms "
          f"(cold: {ms(prefill['total']).strip()} ms); same output: {again['text'] == best['text']}")

    print(f"\n== 5. CPU work outside the model: tokenize a long document, best of {REPEAT} ==")
    doc = open(os.path.join(args.model_path, "heldout.txt"), encoding="utf-8").read()
    best_s = float("inf")
    for _ in range(REPEAT):
        t = time.perf_counter()
        doc_ids = engine.tokenizer.encode(doc)
        best_s = min(best_s, time.perf_counter() - t)
    print(f"tokenizer.encode(heldout.txt): {len(doc):,d} characters -> {len(doc_ids):,d} tokens in "
          f"{best_s * 1e3:.1f} ms")

    print("\n== 6. one ZMQ ipc:// hop (pickle + PUSH -> PULL, same process, median of 300), in us ==")
    for name, us in ipc_hop_us().items():
        print(f"{name:<48} {us:8.1f}")
    in_process = [r["e2e"] for r in runs]
    engine.shutdown()

    print("\n== 7. the same request through the three-process server (HTTP /generate, stream=False) ==")
    t = time.perf_counter()
    with minisgl.Engine(mode="server", log_level="warning") as server:  # 真的 `minisgl serve` / a real server
        start_s = time.perf_counter() - t
        times = []
        for _ in range(REPEAT):
            assert server.flush_cache()
            t = time.perf_counter()
            res = server.generate(PROMPT, PARAMS)
            times.append(time.perf_counter() - t)
    for name, v in (("server start-up (spawn 2 children, load, warm up, /health)", f"{start_s * 1e3:8.0f}"),
                    (f"end to end over HTTP, best of {REPEAT}", ms(min(times))),
                    (f"end to end in-process (section 3), best of {REPEAT}", ms(min(in_process)))):
        print(f"{name:<58} {v} ms")
    print(f"same text: {res['text'] == best['text']}")


if __name__ == "__main__":
    main()
