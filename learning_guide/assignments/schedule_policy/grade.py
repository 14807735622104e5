"""作业 schedule_policy 的评分测试（由 `minisgl course grade schedule_policy` 运行）。

Grading tests of the schedule_policy assignment: ``ctx.student`` is the student's schedule_policy
module (SchedulePolicy.calc_priority and PrefillAdder.add_one_req rewritten); requests, the radix
cache and the allocator are the engine's reference classes.
"""
from minisgl.course.grader import engine_generate, points
from minisgl.mem_cache import RadixCache, ReqToTokenPool, TokenToKVPoolAllocator
from minisgl.sampling.sampling_params import SamplingParams
from minisgl.scheduler.schedule_batch import Req


def _cache(size=64, page_size=1):
    alloc = TokenToKVPoolAllocator(size, page_size)
    return RadixCache(ReqToTokenPool(8, 256), alloc, page_size), alloc


def _cached(cache, alloc, key):
    """把 key 放进树（像一个结束了的请求）。Put key in the tree, as a finished request would."""
    value = alloc.alloc_extend([0], [len(key)], [-1])
    alloc.free(value[: cache.insert(key, value)])


def _req(rid, ids, max_new=8):
    return Req(rid, ids, SamplingParams(max_new_tokens=max_new))


def _adder(ctx, cache, alloc, max_prefill=1000, chunk=None, page_size=1, running=()):
    return ctx.student.PrefillAdder(cache, alloc, list(running), 0.5, max_prefill, chunk, page_size)


def _prepared(cache, rid, ids, max_new=8):
    r = _req(rid, ids, max_new)
    r.init_next_round_input(cache)
    return r


@points(1)
def test_fcfs_keeps_order(ctx):
    """fcfs：不动队列，返回 'fcfs' / fcfs keeps the queue as it is"""
    cache, alloc = _cache()
    _cached(cache, alloc, [1, 2, 3, 4])
    queue = [_req("a", [9, 9]), _req("b", [1, 2, 3, 4, 5])]
    assert ctx.student.SchedulePolicy("fcfs", cache).calc_priority(queue) == "fcfs"
    assert [r.rid for r in queue] == ["a", "b"]


@points(3)
def test_lpm_longest_prefix_first(ctx):
    """lpm：命中前缀长的先，命中相同保持到达顺序 / longest cached prefix first, ties keep arrival order"""
    cache, alloc = _cache()
    _cached(cache, alloc, [1, 2, 3, 4, 5, 6, 7, 8])
    queue = [_req("r0", [9, 9, 9]), _req("r1", [1, 2, 3, 4, 50]), _req("r2", [1, 2, 3, 4, 5, 6, 7, 8, 60]),
             _req("r3", [1, 2, 70]), _req("r4", [1, 2, 3, 4, 51])]
    assert ctx.student.SchedulePolicy("lpm", cache).calc_priority(queue) == "lpm"
    assert [r.rid for r in queue] == ["r2", "r1", "r4", "r3", "r0"], [r.rid for r in queue]


@points(1)
def test_lpm_leaves_the_last_token(ctx):
    """lpm 用 token_ids[:-1] 匹配（最后一个 token 必须进模型）/ matching uses token_ids[:-1]"""
    cache, alloc = _cache()
    _cached(cache, alloc, [1, 2, 3, 4])
    queue = [_req("short", [1, 2, 3, 4]), _req("long", [1, 2, 3, 4, 5])]  # 命中 3 与 4 / hits 3 and 4
    ctx.student.SchedulePolicy("lpm", cache).calc_priority(queue)
    assert [r.rid for r in queue] == ["long", "short"], f"{[r.rid for r in queue]}: 'long' hits 4 tokens, 'short' only 3"


@points(2)
def test_lpm_falls_back_to_fcfs(ctx):
    """关闭 radix 或队列太长（> LPM_FALLBACK_QUEUE_LEN）时退回 fcfs / fall back for no radix or a long queue"""
    cache, alloc = _cache()
    _cached(cache, alloc, [1, 2, 3, 4])
    queue = [_req("a", [9, 9]), _req("b", [1, 2, 3, 4, 5])]
    assert ctx.student.SchedulePolicy("lpm", cache, disable_radix_cache=True).calc_priority(queue) == "fcfs"
    assert [r.rid for r in queue] == ["a", "b"]
    n = ctx.student.LPM_FALLBACK_QUEUE_LEN + 1
    long_queue = [_req(f"q{i}", [9, 9]) for i in range(n - 1)] + [_req("hit", [1, 2, 3, 4, 5])]
    assert ctx.student.SchedulePolicy("lpm", cache).calc_priority(long_queue) == "fcfs"
    assert long_queue[-1].rid == "hit"


@points(2)
def test_admit_within_budget(ctx):
    """预算够：接纳、返回 CONTINUE，三项预算都扣掉 / within budget: admitted, CONTINUE, budgets charged"""
    cache, alloc = _cache(size=64)
    adder = _adder(ctx, cache, alloc, max_prefill=100)
    r = _prepared(cache, "a", list(range(10, 20)), max_new=8)
    assert adder.add_one_req(r) == ctx.student.AddReqResult.CONTINUE
    assert adder.can_run_list == [r]
    assert adder.rem_input_tokens == 90, f"rem_input_tokens {adder.rem_input_tokens}, want 100 - 10"
    assert adder.rem_total_token_offset == 10 + 8 + 1, "offset += extend_input_len + reserved output + page_size"


@points(3)
def test_no_token_releases_the_lock(ctx):
    """KV 不够：返回 NO_TOKEN，并把加上的锁解开 / out of KV: NO_TOKEN, and the lock is released"""
    cache, alloc = _cache(size=32)
    _cached(cache, alloc, [1, 2, 3, 4, 5, 6, 7, 8])
    adder = _adder(ctx, cache, alloc)
    r = _prepared(cache, "big", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], max_new=100)
    assert len(r.prefix_indices) == 8
    assert adder.add_one_req(r) == ctx.student.AddReqResult.NO_TOKEN
    assert adder.can_run_list == [] and r.last_node.lock_ref == 0 and cache.protected_size() == 0, (
        "a refused request must leave no lock behind")


@points(3)
def test_lock_before_checking(ctx):
    """先锁再查：自己要复用的前缀不能算作“可驱逐” / lock first: its own prefix is not evictable room"""
    cache, alloc = _cache(size=16)
    _cached(cache, alloc, [1, 2, 3, 4, 5, 6, 7, 8])  # 8 个空闲 + 8 个可驱逐 / 8 free + 8 evictable
    adder = _adder(ctx, cache, alloc)
    r = _prepared(cache, "r", [1, 2, 3, 4, 5, 6, 7, 8, 9], max_new=8)  # 需要 1 + 8 + 1 = 10 / needs 10
    result = adder.add_one_req(r)
    assert result == ctx.student.AddReqResult.NO_TOKEN, (
        f"got {result}: only 8 slots are really available once the request's own prefix is locked")
    assert cache.protected_size() == 0


@points(2)
def test_input_budget(ctx):
    """prefill 预算：第一个请求总能进，之后超预算返回 OTHER 并解锁 / the first always fits, then OTHER"""
    cache, alloc = _cache(size=128)
    _cached(cache, alloc, [1, 2, 3])
    adder = _adder(ctx, cache, alloc, max_prefill=10)
    first = _prepared(cache, "first", list(range(20, 32)), max_new=4)  # 12 > 10
    assert adder.add_one_req(first) == ctx.student.AddReqResult.OTHER, "admitted, but the input budget is spent"
    assert adder.can_run_list == [first], "the first request is admitted even when it exceeds max_prefill_tokens"
    second = _prepared(cache, "second", [1, 2, 3, 4, 5], max_new=4)
    assert adder.add_one_req(second) == ctx.student.AddReqResult.OTHER
    assert adder.can_run_list == [first] and second.last_node.lock_ref == 0 and cache.protected_size() == 0


@points(3)
def test_chunked_prefill(ctx):
    """超过块预算：切成页对齐的一块，is_chunked，new_chunked_req，返回 OTHER / cut a page-aligned chunk"""
    cache, alloc = _cache(size=128, page_size=4)
    adder = _adder(ctx, cache, alloc, chunk=8, page_size=4)
    r = _prepared(cache, "long", list(range(30, 51)), max_new=4)  # 21 个 token / 21 tokens
    assert adder.add_one_req(r) == ctx.student.AddReqResult.OTHER
    assert r.is_chunked and adder.new_chunked_req is r and adder.can_run_list == [r]
    assert r.extend_input_len == 8 and r.fill_ids == list(range(30, 38)), (
        f"the chunk must be 8 tokens, got {r.extend_input_len}")
    cache2, alloc2 = _cache(size=128, page_size=4)
    adder = _adder(ctx, cache2, alloc2, chunk=8, page_size=4)
    small = _prepared(cache2, "small", list(range(5)), max_new=4)
    assert adder.add_one_req(small) == ctx.student.AddReqResult.CONTINUE and not small.is_chunked
    rest = _prepared(cache2, "rest", list(range(60, 70)), max_new=4)  # 只剩 3 个 token 的块预算 < 1 页
    assert adder.add_one_req(rest) == ctx.student.AddReqResult.OTHER
    assert adder.can_run_list == [small], "less than one page of chunk budget left: nothing more is admitted"


@points(3)
def test_engine_output_unchanged(ctx):
    """整个引擎用你的策略（lpm、分块 prefill、小 KV 池）输出不变 / the engine's output is unchanged"""
    prompts = [["Shall I compare thee", "床前明月光，疑是地上霜。举头望明月，", "床前明月光，疑是地上霜。低头",
                "床前明月光，疑是地上霜。举头望明月，低头思故乡。"], ["春眠不觉晓，", "春眠不觉晓，处处闻啼鸟。"]]
    params = {"max_new_tokens": 16, "temperature": 0}
    args = dict(schedule_policy="lpm", chunked_prefill_size=8, page_size=2, max_total_tokens=160)
    got = engine_generate(prompts, params, **args)
    with ctx.reference():
        want = engine_generate(prompts, params, **args)
    assert [g["output_ids"] for g in got] == [w["output_ids"] for w in want], "the generated tokens differ"
    assert [g["cached_tokens"] for g in got] == [w["cached_tokens"] for w in want], "cached_tokens differ"
