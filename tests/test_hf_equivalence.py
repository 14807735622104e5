"""贪心解码与 HF transformers 逐 token 相同。Greedy decoding equals HF transformers token for token.

Covers Qwen3 / Qwen2 / Llama (incl. tied embeddings, llama3 RoPE scaling, GQA and MHA), single
prompts and a batch of 16 mixed-length prompts sharing prefixes, page size 1 and 4, forced-small
chunked prefill, radix cache on and off, a KV pool so small that retraction must happen, and the
overlap scheduler (forced on CPU) with those variants.
"""
import random

import pytest

from minisgl import Engine as _Engine
from tests.conftest import assert_pool_whole, hf_greedy


def Engine(path, **kw):
    """这些是 CPU float32 参考测试（GPU 上的版本见 test_gpu.py）。CPU float32 reference tests."""
    return _Engine(path, device="cpu", dtype="float32", **kw)

MAX_NEW = 16


def make_prompts(tokenizer, n=16, seed=0):
    """16 个长度不一、共享前缀的 prompt。Mixed lengths, with shared prefixes."""
    rng = random.Random(seed)
    bases = ["床前明月光，疑是地上霜。举头望明月，", "Shall I compare thee to a summer's day? ",
             "推理引擎把请求分批，前缀缓存让共享的提示词只算一次。"]
    tails = ["低头思故乡。", "Thou art more lovely", "A radix tree shares prefixes", "白日依山尽，黄河入海流。",
             "To be, or not to be", "春眠不觉晓", "🙂🚀", "The quick brown fox jumps over the lazy dog."]
    prompts = []
    for i in range(n):
        text = rng.choice(bases) * rng.randint(1, 3) + rng.choice(tails) * rng.randint(0, 2)
        prompts.append(tokenizer.encode(text))
    return prompts


@pytest.mark.parametrize("name", ["qwen3", "qwen2", "llama", "qwen3-tied", "llama3-rope"])
def test_single_prompt_matches_hf(checkpoint, name):
    path = checkpoint(name)
    engine = Engine(path)
    for text in ["床前明月光", "Shall I compare thee", "🙂 emoji"]:
        ids = engine.tokenizer.encode(text)
        out = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": MAX_NEW, "temperature": 0})
        assert out["output_ids"] == hf_greedy(path, ids, MAX_NEW), text
        assert out["meta_info"]["prompt_tokens"] == len(ids)
    assert_pool_whole(engine)


VARIANTS = {
    "default": {},
    "page4": {"page_size": 4},
    "chunk16": {"chunked_prefill_size": 16},
    "chunk16-page4": {"chunked_prefill_size": 16, "page_size": 4},
    "no-radix": {"disable_radix_cache": True},
    "no-radix-chunk16": {"disable_radix_cache": True, "chunked_prefill_size": 16},
    "lpm": {"schedule_policy": "lpm"},
    # 小 KV 池 + 激进接纳：必然发生 retraction。A small pool, eager admission: retraction must happen.
    "tiny-pool": {"max_total_tokens": 192, "schedule_conservativeness": 0.05},
    "tiny-pool-page4": {"max_total_tokens": 192, "page_size": 4, "schedule_conservativeness": 0.05},
    "tiny-pool-no-radix": {"max_total_tokens": 192, "disable_radix_cache": True, "schedule_conservativeness": 0.05},
    # 重叠调度（GPU 上的默认）在 CPU 上强制打开：结果必须与 HF 一样。The overlap scheduler, forced on CPU.
    "overlap": {"enable_overlap_schedule": True},
    "overlap-chunk16-page4": {"enable_overlap_schedule": True, "chunked_prefill_size": 16, "page_size": 4},
    "overlap-tiny-pool": {"enable_overlap_schedule": True, "max_total_tokens": 192, "schedule_conservativeness": 0.05},
    "overlap-tiny-pool-page4": {"enable_overlap_schedule": True, "max_total_tokens": 192, "page_size": 4,
                                "schedule_conservativeness": 0.05},
}


@pytest.mark.parametrize("name", ["qwen3", "qwen2", "llama"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_batch_of_16_matches_hf(checkpoint, name, variant):
    path = checkpoint(name)
    engine = Engine(path, **VARIANTS[variant])
    prompts = make_prompts(engine.tokenizer)
    outs = engine.generate(input_ids=prompts, sampling_params={"max_new_tokens": MAX_NEW, "temperature": 0})
    for ids, out in zip(prompts, outs):
        assert out["output_ids"] == hf_greedy(path, ids, MAX_NEW)
    stats = engine.scheduler.get_stats()
    if "tiny-pool" in variant:
        assert stats["num_retractions"] > 0, "the tiny pool was meant to force retraction"
    assert_pool_whole(engine)
    # 再跑一遍：缓存命中之后结果仍然相同。Run again: the cached run gives the same tokens.
    again = engine.generate(input_ids=prompts[:4], sampling_params={"max_new_tokens": MAX_NEW, "temperature": 0})
    assert [o["output_ids"] for o in again] == [o["output_ids"] for o in outs[:4]]
    hits = [o["meta_info"]["cached_tokens"] for o in again]
    if "no-radix" in variant:
        assert hits == [0, 0, 0, 0]
    elif "tiny-pool" not in variant:
        # 第二次运行时整段 prompt（按页对齐，最后一个 token 除外）都应命中。
        # On the rerun the whole prompt (page-aligned, last token excluded) is cached.
        ps = VARIANTS[variant].get("page_size", 1)
        assert hits == [(len(p) - 1) // ps * ps for p in prompts[:4]]
    assert_pool_whole(engine)
    assert engine.flush_cache()
    assert engine.scheduler.token_to_kv_pool_allocator.available_size() == stats["max_total_num_tokens"]
