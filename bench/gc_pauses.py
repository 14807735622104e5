"""垃圾回收在 decode 步里花了多久：引擎启动后冻结（缺省）vs 不冻结。
How long Python's garbage collector takes inside decode steps: frozen after start-up (the default) vs not.

【生活比喻】Metaphor
  仓库盘点：每隔一阵要把所有货架清点一遍。开业时就摆好的货架（分词器、模型、CUDA graph）永远不会变成垃圾，
  冻结就是把它们从盘点清单上划掉，只点新进的货（每步的小列表）。
  A warehouse stock-take: now and then every shelf is counted. The shelves set up on opening day
  (tokenizer, model, CUDA graphs) never become rubbish; freezing strikes them off the list, so only
  the new stock (each step's small lists) is counted.

【量什么】What it measures
  gc.callbacks 记下每次回收的开始与结束，累计 generate() 期间的回收时间、次数、全量（第 2 代）回收和最长的一次停顿。
  三种模式 / three modes:
    unfrozen  启动后立刻 gc.unfreeze()，自动全量回收照常 / unfrozen, automatic full collections
    frozen    只冻结（utils.freeze_gc），自动全量回收照常 / frozen only, automatic full collections
    default   引擎缺省：冻结 + 全量回收推迟到空闲（utils.defer_full_gc）/ the engine's default: frozen, full
              collections deferred to idle (the one at the end of generate() is counted too)
  gc.callbacks time every collection during generate(): total seconds and count, full collections
  and the longest pause.

命令 / Command:
  python bench/gc_pauses.py                     # CPU，自带小模型，1,024 个请求（共享前缀）各 24 个 token
  python bench/gc_pauses.py --num-reqs 256 --json out.json
  python bench/gc_pauses.py --system-len 800 --new-tokens 64   # 长 prompt：全量回收每次扫的列表更长 / long prompts
"""
from __future__ import annotations

import argparse
import gc
import json
import random
import time


MODES = ("unfrozen", "frozen", "default")


def measure(mode: str, num_reqs: int, new_tokens: int, system_len: int, model_path=None) -> dict:
    import minisgl
    from minisgl.utils import restore_full_gc

    eng = minisgl.Engine(model_path, max_running_requests=num_reqs, chunked_prefill_size=8192,
                         max_prefill_tokens=16384)
    if mode != "default":  # 缺省 = 冻结 + 全量回收推迟到空闲 / default = frozen + full collections at idle
        restore_full_gc()
    if mode == "unfrozen":
        gc.unfreeze()
    rng = random.Random(0)
    vocab = min(1000, eng.model_config.vocab_size)
    systems = [[rng.randrange(vocab) for _ in range(system_len)] for _ in range(-(-num_reqs // 16))]
    prompts = [systems[i // 16] + [rng.randrange(vocab) for _ in range(8)] for i in range(num_reqs)]
    eng.generate(input_ids=prompts[:4], sampling_params={"max_new_tokens": 2})
    pauses, start = [], [0.0]  # (代 / generation, 秒 / seconds)

    def on_gc(phase, info):
        if phase == "start":
            start[0] = time.perf_counter()
        else:
            pauses.append((info["generation"], time.perf_counter() - start[0]))

    gc.callbacks.append(on_gc)
    steps0 = eng.scheduler.forward_ct
    t = time.perf_counter()
    try:
        eng.generate(input_ids=prompts, sampling_params={"max_new_tokens": new_tokens, "ignore_eos": True,
                                                         "temperature": 0})
    finally:
        gc.callbacks.remove(on_gc)
    steps = eng.scheduler.forward_ct - steps0
    eng.shutdown()
    spent = sum(d for _, d in pauses)
    full = [d for g, d in pauses if g == 2]
    return {"mode": mode, "elapsed_s": round(time.perf_counter() - t, 3), "steps": steps,
            "gc_s": round(spent, 4), "collections": len(pauses), "gc_ms_per_step": round(1e3 * spent / steps, 3),
            "full_collections": len(full), "full_s": round(sum(full), 4),
            "max_pause_ms": round(1e3 * max((d for _, d in pauses), default=0.0), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=None, help="缺省自带小模型 / default: the bundled model")
    ap.add_argument("--num-reqs", type=int, default=1024)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--system-len", type=int, default=64,
                    help="每 16 个请求共享的系统提示长度（另加 8 个自己的 token）/ shared system prompt per 16 requests")
    ap.add_argument("--json", help="把结果写成 JSON / write results as JSON")
    a = ap.parse_args()
    rows = [measure(mode, a.num_reqs, a.new_tokens, a.system_len, a.model_path) for mode in MODES]
    for r in rows:
        print(f"{r['mode']:9s} gc {r['gc_s']:.3f} s in {r['collections']} collections "
              f"({r['full_collections']} full: {r['full_s']:.3f} s), longest pause {r['max_pause_ms']:.1f} ms, "
              f"{r['gc_ms_per_step']:.2f} ms per step over {r['steps']} steps  (generate {r['elapsed_s']:.2f} s)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"benchmark": "gc_pauses", "args": vars(a), "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
