"""作业 paged_allocator 的评分测试（由 `minisgl course grade paged_allocator` 运行）。

Grading tests of the paged_allocator assignment. Each ``@points(n)`` function gets a context:
``ctx.student`` is the student's memory_pool module, ``ctx.ref`` the engine's own; the rest of the
engine already uses the student's allocator (``with ctx.reference():`` switches back for a while).
"""
import random

import torch

from minisgl.course.grader import engine_generate, points


def _alloc(ctx, size, page_size):
    return ctx.student.TokenToKVPoolAllocator(size, page_size)


def _check_slots(slots, size, page_size):
    assert len(set(slots)) == len(slots), f"a slot was handed out twice: {slots}"
    assert all(page_size <= s < size + page_size for s in slots), f"slot outside 1..size (or the dummy page): {slots}"


@points(2)
def test_token_granular(ctx):
    """page_size=1：每个 token 一个不重复的槽位，从不给哑槽位 0 / one distinct slot per token, never slot 0"""
    a = _alloc(ctx, 16, 1)
    loc = a.alloc_extend([0, 0], [3, 5], [-1, -1])
    assert loc is not None and len(loc) == 8, f"asked for 3 + 5 slots, got {loc}"
    _check_slots(loc.tolist(), 16, 1)
    assert a.available_size() == 8, f"available_size() is {a.available_size()}, want 16 - 8"


@points(2)
def test_whole_pages(ctx):
    """page_size=4：6 个 token 占 2 个整页，页内连续 / 6 tokens take 2 whole pages, contiguous inside a page"""
    a = _alloc(ctx, 32, 4)
    loc = a.alloc_extend([0], [6], [-1]).tolist()
    assert len(loc) == 6, f"want 6 slots, got {loc}"
    _check_slots(loc, 32, 4)
    assert loc[0] % 4 == 0 and loc[:4] == list(range(loc[0], loc[0] + 4)), f"the first page is not whole: {loc}"
    assert loc[4] % 4 == 0 and loc[5] == loc[4] + 1, f"the second page must start at its first slot: {loc}"
    assert a.available_size() == 24, f"2 pages used, so 24 slots should be free, not {a.available_size()}"


@points(3)
def test_continue_last_page(ctx):
    """续写：先填满上一页的空位（从 last_loc+1 起），再拿新页 / fill the last page's free tail first"""
    a = _alloc(ctx, 32, 4)
    first = a.alloc_extend([0], [6], [-1]).tolist()
    more = a.alloc_extend([6], [11], [first[-1]]).tolist()  # 位置 6..10 / positions 6..10
    assert len(more) == 5, f"positions 6..10 need 5 slots, got {more}"
    assert more[:2] == [first[-1] + 1, first[-1] + 2], f"positions 6, 7 must continue the page of {first[-1]}: {more}"
    assert more[2] % 4 == 0 and more[2:] == [more[2], more[2] + 1, more[2] + 2], f"then a new whole page: {more}"
    assert a.available_size() == 32 - 12, "3 pages in use"


@points(2)
def test_batch_layout(ctx):
    """一批多个请求：按请求顺序拼接，页不共享 / several requests: concatenated in order, no shared page"""
    a = _alloc(ctx, 64, 4)
    lens = [5, 1, 4, 9]
    loc = a.alloc_extend([0] * 4, lens, [-1] * 4).tolist()
    assert len(loc) == sum(lens), f"want {sum(lens)} slots, got {len(loc)}"
    _check_slots(loc, 64, 4)
    parts, start = [], 0
    for n in lens:
        parts.append(loc[start:start + n])
        start += n
    pages = [set(s // 4 for s in p) for p in parts]
    for i in range(len(pages)):
        for j in range(i + 1, len(pages)):
            assert not pages[i] & pages[j], f"requests {i} and {j} share a page: {parts}"
    for p in parts:
        assert all(p[k + 1] == p[k] + 1 for k in range(len(p) - 1) if (p[k] + 1) % 4), f"not contiguous in a page: {p}"


@points(2)
def test_out_of_memory_takes_nothing(ctx):
    """页不够：返回 None，而且什么都不拿走 / not enough pages: None, and nothing is taken"""
    a = _alloc(ctx, 16, 4)
    assert a.alloc_extend([0], [12], [-1]) is not None
    assert a.available_size() == 4
    assert a.alloc_extend([0, 0], [3, 4], [-1, -1]) is None, "2 pages asked, 1 free: must return None"
    assert a.available_size() == 4, "a failed alloc_extend must not take pages"
    assert a.alloc_extend([0], [4], [-1]) is not None, "the last page must still be there"


@points(3)
def test_free_whole_pages_once(ctx):
    """free 按页回收，每页只放回一次（不能 double free）/ free by page, each page once (no double free)"""
    a = _alloc(ctx, 32, 4)
    loc = a.alloc_extend([0], [6], [-1])
    a.free(loc[:0])
    a.free(None)
    a.free(loc)
    assert a.available_size() == 32, f"after freeing everything available_size() is {a.available_size()}, not 32"
    pages = a.free_pages.tolist()
    assert len(pages) == len(set(pages)), f"a page is on the free list twice: {sorted(pages)}"
    assert sorted(pages) == list(range(1, 9)), f"free pages should be 1..8: {sorted(pages)}"


@points(2)
def test_decode_crosses_page_boundary(ctx):
    """decode：页没满接着用，满了换新页 / decode continues the page, then takes a new one"""
    a = _alloc(ctx, 32, 4)
    loc = a.alloc_extend([0], [3], [-1]).tolist()
    d1 = a.alloc_decode([4], [loc[-1]]).tolist()  # 位置 3：同一页 / position 3: same page
    assert d1 == [loc[-1] + 1], f"position 3 belongs to the same page as {loc}: got {d1}"
    d2 = a.alloc_decode([5], [d1[0]]).tolist()  # 位置 4：新页 / position 4: a new page
    assert d2[0] % 4 == 0 and d2[0] // 4 != loc[0] // 4, f"position 4 starts a new page: got {d2}"


@points(3)
def test_random_against_model(ctx):
    """随机的分配/续写/释放序列与一个简单模型一致 / random alloc/extend/free sequences agree with a model"""
    for ps in (1, 2, 4):
        rng = random.Random(ps)
        size = 48
        a = _alloc(ctx, size, ps)
        live = {}  # rid → slots
        for step in range(120):
            op = rng.random()
            used_pages = sum(-(-len(s) // ps) for s in live.values())
            if op < 0.45 or not live:
                n = rng.randint(1, 9)
                loc = a.alloc_extend([0], [n], [-1])
                if -(-n // ps) > size // ps - used_pages:
                    assert loc is None, f"page_size {ps}: {n} tokens cannot fit, expected None"
                    continue
                assert loc is not None, f"page_size {ps}: {n} tokens fit but alloc_extend returned None"
                live[step] = loc.tolist()
            elif op < 0.8:
                rid = rng.choice(list(live))
                old, k = live[rid], rng.randint(1, 5)
                need = -(-(len(old) + k) // ps) - (-(-len(old) // ps))
                loc = a.alloc_extend([len(old)], [len(old) + k], [old[-1]])
                if need > size // ps - used_pages:
                    assert loc is None, f"page_size {ps}: extension cannot fit, expected None"
                    continue
                assert loc is not None and len(loc) == k
                live[rid] = old + loc.tolist()
                slots = live[rid]
                for i in range(len(slots) - 1):
                    if (i + 1) % ps:
                        assert slots[i + 1] == slots[i] + 1, f"page_size {ps}: positions {i},{i + 1} not in one page"
            else:
                rid = rng.choice(list(live))
                a.free(torch.tensor(live.pop(rid)))
            every = [s for v in live.values() for s in v]
            _check_slots(every, size, ps)
            used = sum(-(-len(s) // ps) for s in live.values()) * ps
            assert a.available_size() == size - used, (
                f"page_size {ps}, step {step}: available_size() {a.available_size()} != {size} - {used} in use")


@points(3)
def test_engine_output_unchanged(ctx):
    """整个引擎用你的分配器（page_size 4、很小的 KV 池）输出不变 / the engine's output is unchanged"""
    prompts = ["床前明月光，", "床前明月光，疑是", ["Shall I compare thee", "春眠不觉晓，", "To be, or not to be"]]
    params = {"max_new_tokens": 20, "temperature": 0}
    args = dict(page_size=4, max_total_tokens=96, chunked_prefill_size=16)
    got = engine_generate(prompts, params, **args)
    with ctx.reference():
        want = engine_generate(prompts, params, **args)
    assert [g["output_ids"] for g in got] == [w["output_ids"] for w in want], "the generated tokens differ"
