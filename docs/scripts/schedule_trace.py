"""第 06 章的调度记录：连续批处理、分块 prefill、retraction，逐步打印。

Chapter 06's traces, printed step by step from the real Scheduler (tiny random Qwen3, CPU):
continuous batching, chunked prefill, and retraction under a tiny KV pool.

    python docs/scripts/schedule_trace.py > docs/scripts/schedule_trace.txt

Requests use ignore_eos, so what happens depends only on the scheduler, not on the random model.
"""
from __future__ import annotations

import tempfile

import torch

torch.set_num_threads(1)

from minisgl.engine import Engine  # noqa: E402
from minisgl.io_struct import TokenizedGenerateReqInput  # noqa: E402
from minisgl.sampling.sampling_params import SamplingParams  # noqa: E402
from minisgl.testing import make_tiny_checkpoint  # noqa: E402


def add(sched, rid, n_prompt, max_new, seed):
    ids = [int(x) for x in torch.randint(3, 500, (n_prompt,), generator=torch.Generator().manual_seed(seed))]
    params = SamplingParams(max_new_tokens=max_new, temperature=0, ignore_eos=True)
    sched.add_request(TokenizedGenerateReqInput(rid, None, ids, params))


def state(sched) -> str:
    run = ",".join(f"{r.rid}({len(r.output_ids)})" for r in sched.running_reqs) or "-"
    wait = ",".join(r.rid for r in sched.waiting_queue) or "-"
    chunk = sched.chunked_req.rid if sched.chunked_req else "-"
    free = sched.token_to_kv_pool_allocator.available_size()
    return f"running={run:<24} waiting={wait:<8} chunked={chunk:<2} free={free:<4} ratio={sched.new_token_ratio:.3f}"


def run(sched, title, arrivals=None) -> None:
    print(f"### {title}")
    arrivals = arrivals or {}
    step = 0
    while sched.has_work() or arrivals:
        for args in arrivals.pop(step, []):
            add(sched, *args)
            print(f"       + {args[0]} arrives (prompt {args[1]} tokens, max_new_tokens {args[2]})")
        out = sched.step()
        step += 1
        done = [rid for rid, f in zip(out.out.rids, out.out.finished_reasons) if f]
        mode = out.forward_mode.name if out.forward_mode else "IDLE"
        extra = (f" finished={done}" if done else "") + (f" retracted={out.retracted}" if out.retracted else "")
        print(f"step {step:2d} {mode:<6} bs={len(out.rids)} tokens={out.num_tokens:<3} {state(sched)}{extra}")
    sched.check_pool_whole()
    print()


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        path = make_tiny_checkpoint(d, arch="qwen3")
        print("(name(k) = a running request with k output tokens; free = free KV slots; ratio = new_token_ratio)\n")
        with Engine(path, max_total_tokens=512) as engine:
            run(engine.scheduler, "1. continuous batching: A, B, C arrive together, D arrives at step 3",
                {0: [("A", 5, 2, 1), ("B", 6, 4, 2), ("C", 7, 6, 3)], 3: [("D", 4, 3, 4)]})
        with Engine(path, max_total_tokens=512, chunked_prefill_size=8) as engine:
            run(engine.scheduler, "2. chunked prefill (--chunked-prefill-size 8): L has a 20-token prompt",
                {0: [("L", 20, 2, 5), ("S", 3, 2, 6)]})
        with Engine(path, max_total_tokens=48, disable_radix_cache=True) as engine:
            run(engine.scheduler, "3. the budget at work (--max-total-tokens 48): C waits until A and B are done",
                {0: [("A", 8, 12, 7), ("B", 8, 12, 8), ("C", 8, 12, 9)]})
        with Engine(path, max_total_tokens=48, disable_radix_cache=True, schedule_conservativeness=0.1) as engine:
            run(engine.scheduler, "4. retraction (same, --schedule-conservativeness 0.1): C is admitted too early",
                {0: [("A", 8, 12, 7), ("B", 8, 12, 8), ("C", 8, 12, 9)]})
            print(f"num_retractions = {engine.scheduler.num_retractions}")


if __name__ == "__main__":
    main()
