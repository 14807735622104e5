"""垃圾回收在 decode 步里花了多久：引擎启动后冻结（缺省）vs 不冻结。
How long Python's garbage collector takes inside decode steps: frozen after start-up (the default) vs not.

【生活比喻】Metaphor
  仓库盘点：每隔一阵要把所有货架清点一遍。开业时就摆好的货架（分词器、模型、CUDA graph）永远不会变成垃圾，
  冻结就是把它们从盘点清单上划掉，只点新进的货（每步的小列表）。
  A warehouse stock-take: now and then every shelf is counted. The shelves set up on opening day
  (tokenizer, model, CUDA graphs) never become rubbish; freezing strikes them off the list, so only
  the new stock (each step's small lists) is counted.

【量什么】What it measures
  gc.callbacks 记下每次回收的开始与结束，累计 generate() 期间的回收时间和次数。
  "frozen" 用引擎缺省的 freeze_gc（minisgl/utils.py）；"unfrozen" 在引擎启动后立刻 gc.unfreeze()。
  gc.callbacks time every collection during generate(): total seconds and count. "frozen" is the
  engine's default (utils.freeze_gc); "unfrozen" calls gc.unfreeze() right after start-up.

命令 / Command:
  python bench/gc_pauses.py                     # CPU，自带小模型，1,024 个请求（共享前缀）各 24 个 token
  python bench/gc_pauses.py --num-reqs 256 --json out.json
"""
from __future__ import annotations

import argparse
import gc
import json
import random
import time


def measure(frozen: bool, num_reqs: int, new_tokens: int, model_path=None) -> dict:
    import minisgl

    eng = minisgl.Engine(model_path, max_running_requests=num_reqs, chunked_prefill_size=8192,
                         max_prefill_tokens=16384)
    if not frozen:
        gc.unfreeze()
    rng = random.Random(0)
    vocab = min(1000, eng.model_config.vocab_size)
    systems = [[rng.randrange(vocab) for _ in range(64)] for _ in range(-(-num_reqs // 16))]
    prompts = [systems[i // 16] + [rng.randrange(vocab) for _ in range(8)] for i in range(num_reqs)]
    eng.generate(input_ids=prompts[:4], sampling_params={"max_new_tokens": 2})
    spent, count, start = [0.0], [0], [0.0]

    def on_gc(phase, info):
        if phase == "start":
            start[0] = time.perf_counter()
        else:
            spent[0] += time.perf_counter() - start[0]
            count[0] += 1

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
    return {"frozen": frozen, "elapsed_s": round(time.perf_counter() - t, 3), "steps": steps,
            "gc_s": round(spent[0], 4), "collections": count[0], "gc_ms_per_step": round(1e3 * spent[0] / steps, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=None, help="缺省自带小模型 / default: the bundled model")
    ap.add_argument("--num-reqs", type=int, default=1024)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--json", help="把结果写成 JSON / write results as JSON")
    a = ap.parse_args()
    rows = [measure(frozen, a.num_reqs, a.new_tokens, a.model_path) for frozen in (False, True)]
    for r in rows:
        print(f"{'frozen' if r['frozen'] else 'unfrozen':9s} gc {r['gc_s']:.3f} s in {r['collections']} collections, "
              f"{r['gc_ms_per_step']:.2f} ms per step over {r['steps']} steps  (generate {r['elapsed_s']:.2f} s)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"benchmark": "gc_pauses", "args": vars(a), "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
