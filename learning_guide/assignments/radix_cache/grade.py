"""作业 radix_cache 的评分测试（由 `minisgl course grade radix_cache` 运行）。

Grading tests of the radix_cache assignment: ``ctx.student`` is the student's radix_cache module
(match_prefix / insert / evict rewritten); the allocator and the rest of the engine are the reference.
"""
import random

import torch

from minisgl.course.grader import engine_generate, points
from minisgl.mem_cache.memory_pool import ReqToTokenPool, TokenToKVPoolAllocator


def _cache(ctx, size=256, page_size=1):
    alloc = TokenToKVPoolAllocator(size, page_size)
    return ctx.student.RadixCache(ReqToTokenPool(4, 64), alloc, page_size), alloc


def _insert_fresh(cache, alloc, key):
    """像请求结束时那样：分配槽位、插入、释放重复部分。As a finishing request: alloc, insert, free duplicates."""
    ps = cache.page_size
    key = list(key[: len(key) // ps * ps])
    value = alloc.alloc_extend([0], [len(key)], [-1])
    prefix = cache.insert(key, value)
    alloc.free(value[:prefix])
    return prefix, value


def _sizes_add_up(cache):
    total = cache.total_size()
    assert cache.evictable_size() + cache.protected_size() == total, (
        f"evictable {cache.evictable_size()} + protected {cache.protected_size()} != total {total}")


@points(1)
def test_empty_tree(ctx):
    """空树：匹配长度 0，返回根 / empty tree: nothing matches, the root comes back"""
    cache, _ = _cache(ctx)
    value, node = cache.match_prefix([1, 2, 3])
    assert len(value) == 0 and node is cache.root_node


@points(2)
def test_insert_returns_cached_prefix(ctx):
    """insert 返回树里已有的前缀长度；大小记账正确 / insert returns the cached prefix length"""
    cache, alloc = _cache(ctx)
    assert _insert_fresh(cache, alloc, [1, 2, 3, 4, 5])[0] == 0
    assert _insert_fresh(cache, alloc, [1, 2, 3, 7, 8])[0] == 3, "the first 3 tokens were already cached"
    assert _insert_fresh(cache, alloc, [1, 2, 3, 7, 8])[0] == 5, "inserting the same key again: all 5 cached"
    assert cache.total_size() == 7 and cache.evictable_size() == 7, (
        f"total {cache.total_size()}, evictable {cache.evictable_size()}; want 7 and 7")
    _sizes_add_up(cache)


@points(3)
def test_match_splits_node(ctx):
    """匹配停在节点中间：拆成两个节点，返回的节点正好在匹配处结束 / a match inside a node splits it"""
    cache, alloc = _cache(ctx)
    cache.insert([1, 2, 3, 4, 5], torch.tensor([10, 11, 12, 13, 14]))
    value, node = cache.match_prefix([1, 2, 3, 9])
    assert value.tolist() == [10, 11, 12], f"want the slots of [1, 2, 3], got {value.tolist()}"
    assert node.key == [1, 2, 3] and node.parent is cache.root_node, f"the node must be split at 3: {node.key}"
    assert [c.key for c in node.children.values()] == [[4, 5]], "the rest [4, 5] hangs below the split node"
    value, node = cache.match_prefix([1, 2, 3, 4, 5, 6])
    assert value.tolist() == [10, 11, 12, 13, 14] and node.key == [4, 5]
    assert cache.total_size() == 5, "splitting must not change the number of cached tokens"


@points(2)
def test_whole_pages_only(ctx):
    """page_size=4：只缓存、只匹配整页 / with pages, only whole pages are cached and matched"""
    cache, alloc = _cache(ctx, page_size=4)
    key = list(range(100, 110))
    cache.insert(key, torch.arange(4, 14))
    assert cache.total_size() == 8, f"10 tokens → 2 whole pages = 8 cached, not {cache.total_size()}"
    assert len(cache.match_prefix(key[:7])[0]) == 4, "7 matching tokens → 1 whole page"
    assert len(cache.match_prefix(key[:6] + [0, 0])[0]) == 4, "a mismatch inside page 2 → 1 page"
    assert len(cache.match_prefix(key)[0]) == 8


@points(3)
def test_evict_lru_order(ctx):
    """evict 先驱逐最久没用的叶子（match_prefix 算“用过”）/ least recently used first (a match counts as use)"""
    cache, alloc = _cache(ctx)
    for key in ([1, 2, 3], [4, 5, 6], [7, 8, 9]):
        _insert_fresh(cache, alloc, key)
    cache.match_prefix([1, 2, 3])  # A 刚用过 / A was just used
    assert cache.evict(3) == 3
    assert len(cache.match_prefix([4, 5, 6])[0]) == 0, "B was the least recently used: it should be gone"
    assert len(cache.match_prefix([1, 2, 3])[0]) == 3 and len(cache.match_prefix([7, 8, 9])[0]) == 3
    _sizes_add_up(cache)


@points(2)
def test_evict_climbs_to_parent(ctx):
    """叶子删光后父节点变成叶子，也能被驱逐 / a parent left childless becomes evictable"""
    cache, alloc = _cache(ctx, size=64)
    _insert_fresh(cache, alloc, [1, 2, 3, 4])
    _insert_fresh(cache, alloc, [1, 2, 3, 5])
    assert cache.evict(3) == 5, "two 1-token leaves are not enough; their 3-token parent must go too"
    assert cache.total_size() == 0 and alloc.available_size() == 64, "every slot should be back in the allocator"


@points(3)
def test_evict_skips_locked_nodes(ctx):
    """被锁的节点（和它到根的路径）永远不被驱逐 / locked nodes and their path are never evicted"""
    cache, alloc = _cache(ctx, size=64)
    _insert_fresh(cache, alloc, [1, 2, 3, 4, 5])
    _insert_fresh(cache, alloc, [1, 2, 3, 6, 7])
    _insert_fresh(cache, alloc, [9, 9])
    _, node = cache.match_prefix([1, 2, 3, 4, 5])
    cache.inc_lock_ref(node)
    assert cache.protected_size() == 5 and cache.evictable_size() == 4
    freed = cache.evict(100)
    assert freed == 4, f"only the 4 unlocked tokens may go, evict returned {freed}"
    assert len(cache.match_prefix([1, 2, 3, 4, 5])[0]) == 5, "the locked path was evicted"
    assert alloc.available_size() == 64 - 5, "the locked slots must not return to the allocator"
    cache.dec_lock_ref(node)
    _sizes_add_up(cache)
    assert cache.evict(100) == 5 and alloc.available_size() == 64


@points(2)
def test_evict_bookkeeping(ctx):
    """evict 把槽位还给分配器，evictable_size 同步减少 / slots go back, evictable_size shrinks"""
    cache, alloc = _cache(ctx, size=64)
    for key in ([1, 2, 3, 4], [5, 6, 7], [8, 9]):
        _insert_fresh(cache, alloc, key)
    before = alloc.available_size()
    freed = cache.evict(1)
    assert freed >= 1 and alloc.available_size() == before + freed, "freed slots must reach the allocator"
    assert cache.evictable_size() == 9 - freed and cache.total_size() == 9 - freed
    assert cache.evict(0) == 0, "evict(0) frees nothing"
    _sizes_add_up(cache)


@points(3)
def test_random_against_model(ctx):
    """随机插入后，match_prefix 总返回最长前缀和最早插入的槽位 / random inserts vs a brute-force model"""
    for ps in (1, 2):
        rng = random.Random(ps)
        cache, alloc = _cache(ctx, size=4096, page_size=ps)
        page_slots = {}  # 整页前缀 → 它最后一页的槽位 / whole-page prefix → the slots of its last page
        for _ in range(60):
            key = [rng.randint(0, 3) for _ in range(rng.randint(0, 12))]
            key = key[: len(key) // ps * ps]
            _, value = _insert_fresh(cache, alloc, key)
            for j in range(ps, len(key) + 1, ps):
                page_slots.setdefault(tuple(key[:j]), value[j - ps : j].tolist())
            query = [rng.randint(0, 3) for _ in range(rng.randint(0, 14))]
            got, node = cache.match_prefix(query)
            n = 0
            while n + ps <= len(query) and tuple(query[: n + ps]) in page_slots:
                n += ps
            assert len(got) == n, f"page_size {ps}: match_prefix({query}) matched {len(got)}, the longest is {n}"
            want = [s for j in range(ps, n + 1, ps) for s in page_slots[tuple(query[:j])]]
            assert got.tolist() == want, f"page_size {ps}: wrong slots {got.tolist()}, want the first-inserted {want}"
            _sizes_add_up(cache)
        cache.evict(10 ** 9)
        assert cache.total_size() == 0 and alloc.available_size() == 4096, "evicting everything must free it all"


@points(3)
def test_engine_shares_prefixes(ctx):
    """整个引擎用你的 RadixCache：输出与命中数都与参考相同 / same output and cached_tokens as the reference"""
    prompts = ["床前明月光，疑是地上霜。", "床前明月光，低头思故乡。", "床前明月光，疑是", "Shall I compare thee"]
    params = {"max_new_tokens": 16, "temperature": 0}
    args = dict(page_size=1, max_total_tokens=128)
    got = engine_generate(prompts, params, **args)
    with ctx.reference():
        want = engine_generate(prompts, params, **args)
    assert [g["output_ids"] for g in got] == [w["output_ids"] for w in want], "the generated tokens differ"
    assert [g["cached_tokens"] for g in got] == [w["cached_tokens"] for w in want], (
        f"cached_tokens {[g['cached_tokens'] for g in got]} != {[w['cached_tokens'] for w in want]}")
    assert sum(w["cached_tokens"] for w in want) > 0
