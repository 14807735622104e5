"""文档里引用的数字从这里来。Where the numbers quoted in the pages come from.

    python docs/scripts/measure.py            # 约 1 分钟，CPU / about a minute on a CPU

Every number printed is either derived from the code (KV bytes per token, pool sizes) or timed on
the machine that runs it (seconds, tokens/s). Timed numbers vary with the machine: the pages say
which machine they were taken on. The model is random (made by minisgl.testing), so only the
shapes and the timings mean anything, not the generated text.
"""
from __future__ import annotations

import tempfile
import time

import torch

from minisgl.mem_cache.memory_pool import TokenToKVPool
from minisgl.runner.model_runner import CPU_KV_BUDGET_BYTES, CPU_MAX_TOTAL_TOKENS
from minisgl.sampling.sampler import Sampler
from minisgl.sampling.sampling_params import SamplingParams
from minisgl.testing import make_tiny_checkpoint, make_tokenizer

REPEAT = 5  # 计时取最小值（机器可能被共享）/ timings keep the best of 5 (the machine may be shared)


def section(title: str) -> None:
    print(f"\n== {title} ==")


def kv_numbers() -> None:
    section("KV cache bytes per token (derived: 2 x layers x kv_heads x head_dim x dtype bytes)")
    shapes = {"Qwen3-0.6B": (28, 8, 128), "Qwen3-8B": (36, 8, 128), "Llama-3.1-8B": (32, 8, 128)}
    for name, (layers, kv_heads, head_dim) in shapes.items():
        for dtype in (torch.bfloat16, torch.float32):
            b = TokenToKVPool.bytes_per_token(layers, kv_heads, head_dim, dtype)
            cpu_tokens = min(CPU_KV_BUDGET_BYTES // b, CPU_MAX_TOTAL_TOKENS)
            print(f"{name:13s} {str(dtype):15s} {b:>8,d} B/token  4096-token sequence = {4096 * b / 2**20:7.1f} MiB"
                  f"  CPU default pool = {cpu_tokens:,d} tokens")


def tokenizer_numbers() -> None:
    section("tokenizer (minisgl.testing.make_tokenizer: byte-level BPE, 512 tokens)")
    with tempfile.TemporaryDirectory() as d:
        tok = make_tokenizer(d)
        for text in ("床前明月光", "🚀", "Shall I compare thee"):
            ids = tok.encode(text)
            pieces = [tok.decode([i]) for i in ids]
            print(f"{text!r}: {len(ids)} tokens {ids} -> one by one {pieces}")


def engine_numbers() -> None:
    from minisgl.engine import Engine

    section("prefill vs decode, batching (random Qwen3: 4 layers, hidden 256, 8 q heads, 4 kv heads, head_dim 32)")
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as d:
        path = make_tiny_checkpoint(d, arch="qwen3", num_layers=4, hidden_size=256, num_heads=8, num_kv_heads=4,
                                    head_dim=32, intermediate_size=768, max_position_embeddings=2048)
        with Engine(path, max_total_tokens=16384) as engine:
            engine.generate("warm up", {"max_new_tokens": 4, "temperature": 0})
            vocab = engine.model_config.vocab_size
            rand = lambda n, seed: [int(x) for x in torch.randint(3, vocab, (n,), generator=torch.Generator().manual_seed(seed))]

            # 一个 512-token 的 prefill 与逐个 decode（重复 REPEAT 次取最小值）。Min over REPEAT runs.
            prefill_s, decode_s = [], []
            for _ in range(REPEAT):
                engine.flush_cache()
                steps = list(_steps(engine, [rand(512, 0)], 33))
                prefill_s.append(steps[0].duration_s)
                decode_s.append(sorted(s.duration_s for s in steps[1:])[len(steps[1:]) // 2])
            print(f"prefill 512 tokens: {min(prefill_s) * 1e3:.1f} ms ({512 / min(prefill_s):,.0f} tokens/s)")
            print(f"decode bs=1 after that prompt (median step, best run): {min(decode_s) * 1e3:.2f} ms/step ({1 / min(decode_s):,.0f} tokens/s)")

            for bs in (1, 4, 16, 64):
                best = float("inf")
                for _ in range(REPEAT):
                    engine.flush_cache()
                    steps = [s.duration_s for s in _steps(engine, [rand(32, i) for i in range(bs)], 17)
                             if s.forward_mode is not None and s.forward_mode.name == "DECODE" and len(s.rids) == bs]
                    best = min(best, sorted(steps)[len(steps) // 2])
                print(f"decode bs={bs:3d}: {best * 1e3:6.2f} ms/step -> {bs / best:8,.0f} tokens/s")

            section("prefix cache: 16 requests sharing a 256-token prefix, 16 own tokens each, 1 output token")
            reqs = [rand(256, 99) + rand(16, 100 + i) for i in range(16)]
            _prefill_count(engine, reqs, label="radix cache on ")
        with Engine(path, max_total_tokens=16384, disable_radix_cache=True) as engine:
            engine.generate("warm up", {"max_new_tokens": 4, "temperature": 0})
            _prefill_count(engine, reqs, label="radix cache off")


def _steps(engine, prompts, max_new_tokens):
    from minisgl.io_struct import TokenizedGenerateReqInput

    sched = engine.scheduler
    for i, p in enumerate(prompts):
        sched.add_request(TokenizedGenerateReqInput(f"m{i}-{time.time_ns()}", None, p,
                                                    SamplingParams(max_new_tokens=max_new_tokens, temperature=0,
                                                                   ignore_eos=True)))
    while sched.has_work():
        yield sched.step()


def _prefill_count(engine, reqs, label):
    took = float("inf")
    for _ in range(REPEAT):
        engine.flush_cache()
        t0 = time.perf_counter()
        steps = list(_steps(engine, reqs, 1))
        took = min(took, time.perf_counter() - t0)
    extend_tokens = sum(s.num_tokens for s in steps if s.forward_mode is not None and s.forward_mode.name == "EXTEND")
    print(f"{label}: {extend_tokens:5d} prefill tokens computed, {took * 1e3:6.1f} ms, "
          f"{sum(1 for s in steps if s.forward_mode is not None)} forward steps")


def sampler_numbers() -> None:
    section("sampler on a Qwen3-sized vocabulary (V = 151,936), batch of 8, float32 logits")
    torch.set_num_threads(2)

    class R:  # 采样器只读这几个属性 / the sampler reads only these
        def __init__(self, params):
            self.sampling_params, self.output_ids, self.origin_input_ids = params, [], [1, 2, 3]
            self.eos_token_ids, self.generator = set(), None

    logits = torch.randn(8, 151_936, generator=torch.Generator().manual_seed(0)) * 3
    sampler = Sampler()
    for name, params in {
        "greedy (temperature 0)": SamplingParams(temperature=0),
        "temperature 0.7 only": SamplingParams(temperature=0.7),
        "top_p 0.9": SamplingParams(temperature=0.7, top_p=0.9),
        "top_k 50 + top_p 0.9 + min_p 0.05": SamplingParams(temperature=0.7, top_k=50, top_p=0.9, min_p=0.05),
        "repetition_penalty 1.1": SamplingParams(temperature=0.7, repetition_penalty=1.1),
    }.items():
        reqs = [R(params) for _ in range(8)]
        sampler(logits.clone(), reqs)
        best = float("inf")
        for _ in range(REPEAT):
            x = logits.clone()
            t0 = time.perf_counter()
            sampler(x, reqs)
            best = min(best, time.perf_counter() - t0)
        print(f"{name:36s} {best * 1e3:7.2f} ms/step")


if __name__ == "__main__":
    kv_numbers()
    tokenizer_numbers()
    sampler_numbers()
    engine_numbers()
