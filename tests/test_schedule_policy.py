"""调度策略：lpm 的批内去重、满员时不排序、前缀匹配的快速比较。

The scheduling policy: lpm's in-batch dedup (a shared prefix is computed once, a group's requests
run together), no sorting while the batch is full, and the fast common-prefix comparison of the
radix tree. The engine tests use the bundled tiny model on CPU with a queue longer than SGLang's
128-request lpm limit, as in the generated-shared-prefix benchmark.
"""
import random
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minisgl.mem_cache import RadixCache, ReqToTokenPool, TokenToKVPoolAllocator
from minisgl.scheduler.schedule_policy import IN_BATCH_PREFIX_LEN, LPM_FALLBACK_QUEUE_LEN, wait_for_shared_prefix


# ======== _match_len：二分 + 切片比较 == 逐个比较 / binary search over slices == the per-token loop ========
def naive_match_len(a, b, page_size):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n // page_size * page_size


@settings(max_examples=300, deadline=None)
@given(common=st.lists(st.integers(0, 3), max_size=300), a_tail=st.lists(st.integers(0, 3), max_size=20),
       b_tail=st.lists(st.integers(0, 3), max_size=20), page_size=st.sampled_from([1, 2, 4, 16]),
       as_tuple=st.booleans())
def test_match_len_equals_the_per_token_loop(common, a_tail, b_tail, page_size, as_tuple):
    cache = RadixCache(ReqToTokenPool(2, 8), TokenToKVPoolAllocator(64, page_size), page_size)
    a, b = common + a_tail, common + b_tail
    if as_tuple:  # 节点 key 是 list，查询 key 可能是 tuple（页模式的孩子键）/ lists and tuples compare by value
        b = tuple(b)
    assert cache._match_len(a, b) == naive_match_len(a, b, page_size)
    assert cache._match_len(b, a) == naive_match_len(a, b, page_size)


# ======== wait_for_shared_prefix：两条规则 / the two rules ========
def _req(tokens, prefix_len=0, last_node=None, lora_id=None):
    return SimpleNamespace(token_ids=tokens, prefix_indices=torch.arange(prefix_len), last_node=last_node,
                           lora_id=lora_id)


def test_wait_rules():
    from minisgl.scheduler.schedule_policy import prompt_head

    system = list(range(100, 100 + 2 * IN_BATCH_PREFIX_LEN))
    node = object()
    chunked = _req(system + [1, 2, 3], prefix_len=48, last_node=node)
    # 规则 1：缓存前缀停在分块请求停下的节点 → 等 / rule 1: stops where the chunk stopped → wait
    assert wait_for_shared_prefix(_req(system + [9], 48, node), chunked, set())
    assert not wait_for_shared_prefix(_req(system + [9], 48, object()), chunked, set())
    assert not wait_for_shared_prefix(_req(system + [9], 0, node), None, set())
    # 规则 2：几乎没命中，且本轮有人开头相同 → 等 / rule 2: matched nothing, same head admitted → wait
    heads = {prompt_head(_req(system + [5]))}
    assert wait_for_shared_prefix(_req(system + [7]), None, heads)
    assert not wait_for_shared_prefix(_req([0] + system), None, heads)  # 开头不同 / another head
    assert not wait_for_shared_prefix(_req(system + [7], lora_id="a"), None, heads)  # 另一个适配器 / other adapter
    assert not wait_for_shared_prefix(_req(system + [7], prefix_len=IN_BATCH_PREFIX_LEN), None, heads)
    assert not wait_for_shared_prefix(_req(system[:IN_BATCH_PREFIX_LEN]), None,  # 太短 / too short
                                      {prompt_head(_req(system[:IN_BATCH_PREFIX_LEN]))})


# ======== 引擎：lpm 在长队列上也把每段共享前缀只算一次 / the engine: lpm computes each shared prefix once ========
GROUPS, PER_GROUP, SYSTEM, QUESTION, OUTPUT = 20, 8, 64, 8, 6


def _shared_prefix_prompts(vocab):
    rng = random.Random(0)
    prompts = []
    for _ in range(GROUPS):
        system = [rng.randrange(10, vocab) for _ in range(SYSTEM)]
        prompts += [system + [rng.randrange(10, vocab) for _ in range(QUESTION)] for _ in range(PER_GROUP)]
    rng.shuffle(prompts)
    return prompts


@pytest.fixture(scope="module")
def runs():
    from minisgl import Engine

    out = {}
    # lpm-overlap：重叠调度下 prefill 不再等上一批处理完，组员仍要命中组长刚排进设备的前缀。
    # lpm-overlap: under overlap a prefill no longer waits for the previous one to be processed;
    # group members must still hit the prefix their group's first request has just queued.
    for name, policy, extra in (("lpm", "lpm", {}), ("fcfs", "fcfs", {}),
                                ("lpm-overlap", "lpm", {"enable_overlap_schedule": True})):
        eng = Engine(None, schedule_policy=policy, max_running_requests=32, chunked_prefill_size=200,
                     max_prefill_tokens=512, **extra)
        try:
            sch = eng.scheduler
            stats = {"members": 0, "prefixes": 0, "sorts_when_full": 0}
            decode, sort = sch._prepare_decode, sch.policy.calc_priority

            def spy_decode(reqs):
                keys = [r.shared_prefix for r in reqs if r.shared_prefix]
                stats["members"] += len(keys)
                stats["prefixes"] += len(set(keys))
                return decode(reqs)

            def spy_sort(queue):
                stats["sorts_when_full"] += len(sch.running_reqs) >= sch.max_running_requests
                return sort(queue)

            sch._prepare_decode, sch.policy.calc_priority = spy_decode, spy_sort
            prompts = _shared_prefix_prompts(eng.model_config.vocab_size)
            assert len(prompts) > 128  # 比 SGLang 的 lpm 上限长 / longer than SGLang's lpm limit
            assert len(prompts) <= LPM_FALLBACK_QUEUE_LEN
            res = eng.generate(input_ids=prompts, sampling_params={"max_new_tokens": OUTPUT, "temperature": 0,
                                                                   "ignore_eos": True})
            stats["cached"] = sum(r["meta_info"]["cached_tokens"] for r in res)
            stats["finished"] = sum(r["meta_info"]["finish_reason"]["type"] == "length" for r in res)
            stats["free_after"] = (sch.token_to_kv_pool_allocator.available_size() + sch.tree_cache.total_size(),
                                   sch.token_to_kv_pool_allocator.size)
            out[name] = stats
        finally:
            eng.shutdown()
    return out


def test_lpm_computes_each_shared_prefix_once(runs):
    # 每组第一个请求算系统提示，其余 PER_GROUP−1 个全部命中（池子够大，不驱逐）。
    # The first request of a group computes the system prompt; the other PER_GROUP-1 all hit it.
    lpm, fcfs = runs["lpm"], runs["fcfs"]
    assert lpm["finished"] == fcfs["finished"] == runs["lpm-overlap"]["finished"] == GROUPS * PER_GROUP
    for s in (lpm, runs["lpm-overlap"]):
        # ≥：两个问题偶尔开头撞上同一个随机 token，会多命中一两个。≥: two questions may share a first random token.
        assert GROUPS * (PER_GROUP - 1) * SYSTEM <= s["cached"] < GROUPS * (PER_GROUP - 1) * SYSTEM + QUESTION
    assert fcfs["cached"] < lpm["cached"]  # fcfs 把同组请求放进同一批，各算一遍 / fcfs recomputes in-batch
    for s in runs.values():
        assert s["free_after"][0] == s["free_after"][1]  # 没有泄漏的槽位 / no leaked slot


def test_lpm_runs_a_group_together(runs):
    # decode 批里每段共享前缀平均有几个请求：lpm 把同组请求聚在一起，cascade 注意力才能每组只读一次前缀。
    # Requests per shared prefix in the decode batches: lpm keeps a group together, which is what lets
    # cascade attention read each prefix once per group.
    per_prefix = {p: s["members"] / s["prefixes"] for p, s in runs.items()}
    assert per_prefix["lpm"] > 1.5 * per_prefix["fcfs"], per_prefix
    assert per_prefix["lpm-overlap"] > 1.5 * per_prefix["fcfs"], per_prefix


def test_no_sorting_while_the_batch_is_full(runs):
    assert all(s["sorts_when_full"] == 0 for s in runs.values()), runs
