"""RadixCache 与分配器：单元测试 + 基于性质的测试（hypothesis）。

Unit tests and property-based tests of RadixCache and the allocator against a simple model:
random insert / match / lock / evict sequences keep the invariants (sizes add up, locked nodes
are never evicted, match returns the longest cached prefix, no slot is lost or doubled).
"""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minisgl.mem_cache import RadixCache, ReqToTokenPool, TokenToKVPoolAllocator


def make_cache(size=256, page_size=1):
    alloc = TokenToKVPoolAllocator(size, page_size)
    return RadixCache(ReqToTokenPool(5, 64), alloc, page_size), alloc


def insert_fresh(cache, alloc, key):
    """像请求结束时那样：分配槽位、插入、释放重复部分。Allocate, insert, free the duplicate part."""
    ps = cache.page_size
    key = key[: len(key) // ps * ps]
    value = alloc.alloc_extend([0], [len(key)], [-1])
    assert value is not None
    prefix = cache.insert(key, value)
    alloc.free(value[:prefix])
    return prefix


def test_match_split_and_share():
    cache, alloc = make_cache()
    insert_fresh(cache, alloc, [1, 2, 3, 4, 5])
    v, node = cache.match_prefix([1, 2, 3, 9])
    assert len(v) == 3 and node.key == [1, 2, 3]  # 节点被拆开 / the node was split
    assert insert_fresh(cache, alloc, [1, 2, 3, 7, 8]) == 3
    assert cache.total_size() == 7
    v2, _ = cache.match_prefix([1, 2, 3, 4, 5, 6])
    assert v2[:3].tolist() == v[:3].tolist() and len(v2) == 5


def test_lock_protects_from_eviction():
    cache, alloc = make_cache()
    insert_fresh(cache, alloc, [1, 2, 3])
    insert_fresh(cache, alloc, [4, 5, 6])
    _, node = cache.match_prefix([1, 2, 3])
    cache.inc_lock_ref(node)
    assert cache.protected_size() == 3 and cache.evictable_size() == 3
    assert cache.evict(100) == 3  # 只有未锁的能被驱逐 / only the unlocked branch goes
    assert len(cache.match_prefix([1, 2, 3])[0]) == 3
    cache.dec_lock_ref(node)
    assert cache.evict(100) == 3 and alloc.available_size() == alloc.size


def test_lru_order():
    cache, alloc = make_cache()
    insert_fresh(cache, alloc, [1, 1])
    insert_fresh(cache, alloc, [2, 2])
    cache.match_prefix([1, 1])  # 最近用过 / recently used
    cache.evict(1)
    assert len(cache.match_prefix([1, 1])[0]) == 2 and len(cache.match_prefix([2, 2])[0]) == 0


def test_match_prefix_len_respects_namespaces():
    cache, alloc = make_cache()
    value = alloc.alloc_extend([0], [6], [-1])
    cache.insert([1, 2, 3, 4, 5, 6], value, namespace="adapter-a")
    assert cache.match_prefix_len([1, 2, 3, 4, 9]) == 0  # 基座看不到适配器的 KV / the base model cannot use it
    assert cache.match_prefix_len([1, 2, 3, 4, 9], namespace="adapter-b") == 0
    assert cache.match_prefix_len([1, 2, 3, 4, 9], namespace="adapter-a") == 4
    assert cache.match_prefix_len([1, 2, 3, 4, 5, 6], namespace="adapter-a", max_len=5) == 5


def test_page_aligned_matching():
    cache, alloc = make_cache(page_size=4)
    insert_fresh(cache, alloc, list(range(10)))  # 只缓存 8 个 / only 8 cached
    assert cache.total_size() == 8
    assert len(cache.match_prefix(list(range(7)))[0]) == 4
    assert len(cache.match_prefix(list(range(3)) + [99, 4, 5, 6, 7])[0]) == 0


def test_allocator_pages():
    alloc = TokenToKVPoolAllocator(32, page_size=4)
    loc = alloc.alloc_extend([0, 0], [6, 3], [-1, -1])
    assert len(loc) == 9 and alloc.available_size() == 32 - 12
    assert 0 not in loc.tolist() and all(x >= 4 for x in loc.tolist())  # 哑页 / the dummy page
    # 续写第一个请求：先填满它的最后一页。Continue request 1: fill its last page first.
    more = alloc.alloc_decode([7], [int(loc[5])])
    assert int(more[0]) == int(loc[5]) + 1 and alloc.available_size() == 20
    alloc.free(torch.cat([loc, more]))
    assert alloc.available_size() == 32
    assert alloc.alloc_extend([0], [40], [-1]) is None and alloc.available_size() == 32


def brute_longest_prefix(cached_keys, key, ps):
    best = 0
    for k in cached_keys:
        n = 0
        while n < min(len(k), len(key)) and k[n] == key[n]:
            n += 1
        best = max(best, n // ps * ps)
    return best


ops = st.lists(
    st.tuples(st.sampled_from(["insert", "match", "lock", "unlock", "evict"]),
              st.lists(st.integers(0, 3), min_size=0, max_size=12), st.integers(1, 40)),
    min_size=1, max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ops=ops, page_size=st.sampled_from([1, 2, 4]))
def test_radix_cache_properties(ops, page_size):
    cache, alloc = make_cache(size=512, page_size=page_size)
    model_keys = []  # 模型：树里应有的 key 集合（被驱逐时移除）/ the model: keys believed cached
    locked = []
    for op, key, n in ops:
        if op == "insert" and alloc.available_size() >= len(key) + page_size:
            insert_fresh(cache, alloc, key)
            if len(key) >= page_size:
                model_keys.append(key[: len(key) // page_size * page_size])
        elif op == "match":
            # match_prefix_len：只读树（节点数不变），长度等于 match_prefix 在截短的 key 上的命中。
            # match_prefix_len reads the tree only (same nodes) and equals match_prefix on the cut key.
            nodes = len(cache._all_nodes())
            limits = [None, len(key) - 1, len(key) // 2, n]
            lens = [cache.match_prefix_len(key, max_len=m) for m in limits]
            assert len(cache._all_nodes()) == nodes
            assert lens == [len(cache.match_prefix(key[:m])[0]) for m in limits]
            value, node = cache.match_prefix(key)
            # 驱逐可能删掉模型里的 key，所以命中 <= 模型最长前缀；从未驱逐时应相等。
            assert len(value) <= brute_longest_prefix(model_keys, key, page_size)
            if not any(o == "evict" for o, _, _ in ops):
                assert len(value) == brute_longest_prefix(model_keys, key, page_size)
            assert len(value) % page_size == 0
        elif op == "lock":
            _, node = cache.match_prefix(key)
            cache.inc_lock_ref(node)
            locked.append((node, [x.item() for x in cache.match_prefix(key)[0]]))
        elif op == "unlock" and locked:
            node, _ = locked.pop()
            cache.dec_lock_ref(node)
        elif op == "evict":
            cache.evict(n)
        # 不变量 / invariants
        assert cache.evictable_size() + cache.protected_size() == cache.total_size()
        assert alloc.available_size() + cache.total_size() == alloc.size
        assert len(set(alloc.free_pages.tolist())) == len(alloc.free_pages)
        for node, slots in locked:  # 锁住的路径从不被驱逐 / locked paths survive
            path, cur = [], node
            while cur is not cache.root_node:
                assert cur.parent is not None and cur.lock_ref > 0
                cur = cur.parent
    for node, _ in locked:
        cache.dec_lock_ref(node)
    assert cache.protected_size() == 0
    cache.evict(10**9)
    assert alloc.available_size() == alloc.size and cache.total_size() == 0


@settings(max_examples=100, deadline=None)
@given(reqs=st.lists(st.tuples(st.integers(0, 9), st.integers(1, 20)), min_size=1, max_size=30),
       page_size=st.sampled_from([1, 4, 8]))
def test_allocator_never_loses_slots(reqs, page_size):
    alloc = TokenToKVPoolAllocator(128, page_size)
    held = []
    for prefix, extra in reqs:
        prefix = prefix * page_size  # 前缀按页对齐（与 radix 匹配一致）/ page-aligned prefixes
        loc = alloc.alloc_extend([0], [prefix + extra], [-1])
        if loc is None:
            assert alloc.available_size() < -(-(prefix + extra) // page_size) * page_size
            if held:
                alloc.free(held.pop(0))
            continue
        assert len(loc) == prefix + extra and len(set(loc.tolist())) == len(loc)
        assert all(x >= page_size for x in loc.tolist())  # 从不分配哑页 / never the dummy page
        for other in held:
            assert not set(loc.tolist()) & set(other.tolist())
        held.append(loc)
    for h in held:
        alloc.free(h)
    assert alloc.available_size() == 128


def test_freed_pages_wait_until_an_allocation_runs_short():
    # free() 不拷贝整张空闲表：页先进“刚放回”的列表，分配不够时才合并一次；读 free_pages 也先合并。
    # free() does not copy the whole free list: pages wait on a just-freed list and are merged once
    # an allocation runs short; reading free_pages merges too.
    a = TokenToKVPoolAllocator(16, 1)
    x = a.alloc(16)
    assert a.alloc(1) is None
    a.free(x[:4])
    a.free(x[4:6])
    assert a.available_size() == 6 and len(a._free) == 0  # 还没合并 / not merged yet
    y = a.alloc(5)
    assert y is not None and set(y.tolist()) <= set(x[:6].tolist()) and a.available_size() == 1
    assert a.alloc(2) is None  # 不够时什么都不拿 / takes nothing when short
    a.free(y)
    assert sorted(a.free_pages.tolist()) == sorted(x[:6].tolist())
    assert len(a._released) == 0 and a.available_size() == 6


@settings(max_examples=60, deadline=None)
@given(writes=st.lists(st.tuples(st.integers(1, 4), st.integers(0, 40), st.integers(0, 20)), max_size=4,
                       unique_by=lambda w: w[0]))
def test_write_rows_equals_one_write_per_row(writes):
    """write_rows（一次拷贝）与逐行 write 结果相同，主机表与“设备”表都一样。Same tables as row-by-row writes."""
    def two_tables():
        pool = ReqToTokenPool(5, 64)
        pool.req_to_token_cpu = pool.req_to_token.clone()  # 假装有设备表：走两份表的路径 / take the two-table path
        return pool

    one, many = two_tables(), two_tables()
    rows, starts, values = [], [], []
    for k, (row, start, n) in enumerate(writes):
        v = torch.arange(n, dtype=torch.int64) + 100 * (k + 1)
        one.write(row, start, v)
        rows.append(row), starts.append(start), values.append(v)
    many.write_rows(rows, starts, values)
    assert torch.equal(one.req_to_token, many.req_to_token)
    assert torch.equal(one.req_to_token_cpu, many.req_to_token_cpu)
    assert torch.equal(many.req_to_token, many.req_to_token_cpu)
