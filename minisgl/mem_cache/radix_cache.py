# ================================================================================
# 🌳 基数树前缀缓存（RadixCache）
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   把已经算过的 token 序列和它们的 KV 槽位存进一棵基数树（radix tree），新请求进来时
#   沿树找到最长的已缓存前缀，直接复用那部分 KV，不再重算（SGLang 的 RadixAttention）。
#   Keeps computed token sequences and their KV slots in a radix tree; a new request walks the
#   tree to its longest cached prefix and reuses that KV instead of recomputing it.
#
# 【生活比喻】Metaphor
#   图书馆卡片目录：沿着书名的前缀一层层往下找，“唐诗”→“唐诗三百首”，找到多长就复用多长。
#   借出的书（被运行中的请求锁住的节点）不能下架；没人借的旧书按最久未用（LRU）先下架。
#   A library card catalogue: follow the title's prefix drawer by drawer and reuse as much as
#   matches. Books on loan (nodes locked by running requests) stay; idle ones leave oldest first.
#
# 【核心架构】Architecture
#                root (key=[])
#               /            \
#       [床,前,明]          [Shall, I]
#        /      \               \
#   [月,光]   [日,出]        [compare, thee]
#   每个节点：key（一段 token）、value（同长度的 KV 槽位）、lock_ref、last_access_time
#   Each node: key (tokens), value (their KV slots, same length), lock_ref, last_access_time.
#
# 【工作流程】Workflow
#   1. match_prefix(key): 沿树向下匹配；停在某节点中间时把节点一分为二（split）。
#   2. inc_lock_ref(node): 请求运行期间锁住它的前缀路径，防止被驱逐。
#   3. cache_unfinished_req / cache_finished_req: 把请求算好的 KV 插入树（insert），
#      重复部分的槽位立刻释放。Insert computed KV; duplicate slots are freed at once.
#   4. evict(n): 从未锁的叶子里按 LRU 释放至少 n 个 token。Free >= n tokens from unlocked leaves, LRU first.
#
# 【关键概念】Key Concepts
#   - 不变量 Invariant: total_size == evictable_size + protected_size；
#     protected = 被 lock_ref > 0 的节点持有的 token 数。
#   - page_size > 1 时只缓存整页：key 按页对齐截断，子节点按“第一页的 token 元组”索引。
#     With pages, only whole pages are cached; children are keyed by their first page.
#   - 匹配复杂度 O(匹配长度)。Matching costs O(matched length).
#   - 命名空间（多 LoRA）：同样的 token 在另一个适配器下 K/V 不同，不能共享。namespace="a" 时把
#     第一个 token 换成 ("a", t0)：根的孩子因此先按适配器分开，往下的树完全照旧（见 namespaced）。
#     不给 namespace 的请求与以前完全一样。Namespaces (multi-LoRA): the first token becomes
#     ("a", t0), so the root branches by adapter first and each adapter owns its subtree.
#
# 【使用方式】Usage
#   >>> cache = RadixCache(req_to_token_pool, allocator, page_size=1)
#   >>> cache.insert([1, 2, 3], torch.tensor([10, 11, 12]))
#   >>> value, node = cache.match_prefix([1, 2, 4])      # value = tensor([10, 11])
#
# 【对应章节】Chapter: docs/zh/08-kv-cache.md
# ================================================================================
from __future__ import annotations

import heapq
import itertools
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import torch

if TYPE_CHECKING:
    from minisgl.mem_cache.memory_pool import ReqToTokenPool, TokenToKVPoolAllocator

_node_ids = itertools.count()
_clock = itertools.count(1)  # 逻辑时钟：比 time.time() 更确定 / a logical clock, deterministic


def namespaced(key: Sequence[int], namespace: Optional[str]) -> Sequence:
    """把命名空间折进第一个 token：[t0, t1, …] → [(ns, t0), t1, …]（namespace 为 None 时原样返回）。

    Fold the namespace into the first token. Every path from the root starts with a key's first
    token, so keys of different namespaces (a LoRA adapter each) never share a node, while the rest
    of the tree code (matching, splitting, locks, LRU eviction) stays as it is. A tuple never equals
    an int, so namespaced keys also never match keys without a namespace.
    """
    if namespace is None or not key:
        return key
    key = list(key)
    key[0] = (namespace, key[0])
    return key


def split_namespace(key: Sequence) -> Tuple[Optional[str], List[int]]:
    """namespaced 的逆：(命名空间或 None, 纯 token)。The inverse: (namespace or None, plain tokens)."""
    if key and isinstance(key[0], tuple):
        return key[0][0], [key[0][1], *key[1:]]
    return None, list(key)


class TreeNode:
    """基数树的一个节点。One node of the radix tree."""

    def __init__(self, parent: Optional["TreeNode"] = None):
        self.id = next(_node_ids)
        self.parent = parent
        self.children: Dict[object, "TreeNode"] = {}
        self.key: List[int] = []
        self.value: torch.Tensor = torch.empty(0, dtype=torch.int64)  # KV 槽位 / KV slots
        self.lock_ref = 0
        self.last_access_time = next(_clock)

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def __lt__(self, other: "TreeNode") -> bool:  # heapq 按 LRU 排序 / heapq orders by LRU
        return self.last_access_time < other.last_access_time

    def __repr__(self) -> str:
        return f"TreeNode(id={self.id}, len={len(self.key)}, lock_ref={self.lock_ref})"


class RadixCache:
    """SGLang 风格的前缀缓存（见文件头）。An SGLang-style prefix cache; see the file header."""

    def __init__(
        self,
        req_to_token_pool: "ReqToTokenPool",
        token_to_kv_pool_allocator: "TokenToKVPoolAllocator",
        page_size: int = 1,
    ):
        self.req_to_token_pool = req_to_token_pool
        self.token_to_kv_pool_allocator = token_to_kv_pool_allocator
        self.page_size = page_size
        self.reset()

    # ======== 基本操作 / Basic operations ========
    def reset(self) -> None:
        """清空整棵树（不释放槽位：调用者负责清空分配器）。Drop the whole tree (the caller clears the allocator)."""
        self.root_node = TreeNode()
        self.root_node.lock_ref = 1  # 根永远锁住 / the root is never evicted
        self.evictable_size_ = 0
        self.protected_size_ = 0

    def _child_key(self, key: Sequence[int]):
        return key[0] if self.page_size == 1 else tuple(key[: self.page_size])

    def _match_len(self, a: Sequence[int], b: Sequence[int]) -> int:
        """a、b 的公共前缀长度，按页向下取整。Common prefix length, rounded down to whole pages.

        二分查找第一个不同的位置：每次比较一段切片（列表比较在 C 里做），总共约 2·len 次元素比较，
        而逐个 token 的 Python 循环要慢几十倍——lpm 每步要对整个等待队列做 match_prefix，这里是热点。
        Binary search for the first mismatch, comparing slices (list equality runs in C): about
        2·len element comparisons in all, tens of times faster than a per-token Python loop; lpm runs
        match_prefix over the whole waiting queue each round, so this is hot.
        """
        a = a if isinstance(a, list) else list(a)  # 列表与元组永远不相等：统一成列表 / a list never equals a tuple
        b = b if isinstance(b, list) else list(b)
        lo, hi = 0, min(len(a), len(b))  # 不变式 / invariant: a[:lo] == b[:lo]，第一个不同处 ≤ hi
        # 最常见的是整个节点都匹配：较短的一方不切片，少复制一次 / most often the whole node matches: no copy of the shorter
        if (a if hi == len(a) else a[:hi]) == (b if hi == len(b) else b[:hi]):
            lo = hi
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if a[lo:mid] == b[lo:mid]:
                lo = mid
            else:
                hi = mid - 1
        return lo // self.page_size * self.page_size

    def _page_aligned(self, key: Sequence[int]) -> List[int]:
        if self.page_size == 1 and isinstance(key, list):
            return key  # 不复制：调用者只切片、不修改 / no copy: callers slice, never mutate
        return list(key[: len(key) // self.page_size * self.page_size])

    def match_prefix(self, key: Sequence[int], namespace: Optional[str] = None) -> Tuple[torch.Tensor, TreeNode]:
        """找最长已缓存前缀。Find the longest cached prefix of key.

        Returns (kv slots of that prefix [L] int64, the last matched node). A match that ends
        inside a node splits the node, so the returned node always ends exactly at the match.
        With a namespace (a LoRA adapter's name) only keys inserted under it can match.
        """
        key = namespaced(key, namespace)
        # >>> ASSIGNMENT radix_cache: match_prefix
        key = self._page_aligned(key)
        node, values = self.root_node, []
        node.last_access_time = next(_clock)
        while key:
            child = node.children.get(self._child_key(key))
            if child is None:
                break
            child.last_access_time = next(_clock)
            n = self._match_len(child.key, key)
            if n < len(child.key):
                child = self._split_node(child, n)
            values.append(child.value)
            node, key = child, key[n:]
        value = torch.cat(values) if values else torch.empty(0, dtype=torch.int64)
        return value, node
        # <<< ASSIGNMENT

    def match_prefix_len(self, key: Sequence[int], namespace: Optional[str] = None,
                         max_len: Optional[int] = None) -> int:
        """只量命中多长：lpm 排序用。How many leading tokens of key[:max_len] are cached (for the lpm sort).

        Equals len(match_prefix(key[:max_len], namespace)[0]), but reads the tree only: no node is
        split and no value concatenated, and the key is never copied whole. The lpm sort asks this of
        every waiting request each round (1,024 prompts of 2k tokens on the benchmark), and there the
        copies and the torch.cat of match_prefix were most of the cost. It touches last_access_time
        like match_prefix, so a prefix that waiting requests want stays young in the LRU.
        """
        key = namespaced(key, namespace)
        limit = len(key) if max_len is None else min(len(key), max_len)
        limit = limit // self.page_size * self.page_size
        node, pos = self.root_node, 0
        node.last_access_time = next(_clock)
        while pos < limit:
            child = node.children.get(key[pos] if self.page_size == 1 else tuple(key[pos: pos + self.page_size]))
            if child is None:
                break
            child.last_access_time = next(_clock)
            end = min(pos + len(child.key), limit)
            n = self._match_len(child.key, key[pos:end])  # 只切出与这个节点等长的一段 / one node's length
            pos += n
            if n < len(child.key):
                break
            node = child
        return pos

    def _split_node(self, child: TreeNode, split_len: int) -> TreeNode:
        """把 child 拆成 new_node(前 split_len) → child(剩余)。Split child into a head node and itself."""
        new_node = TreeNode(parent=child.parent)
        new_node.key, new_node.value = child.key[:split_len], child.value[:split_len]
        new_node.lock_ref = child.lock_ref  # 锁覆盖整条路径，两半都继承 / a lock covers both halves
        new_node.last_access_time = child.last_access_time
        new_node.children = {self._child_key(child.key[split_len:]): child}
        child.parent.children[self._child_key(new_node.key)] = new_node
        child.key, child.value = child.key[split_len:], child.value[split_len:]
        child.parent = new_node
        return new_node

    def insert(self, key: Sequence[int], value: torch.Tensor, namespace: Optional[str] = None) -> int:
        """插入 key→value，返回树中原本已有的前缀长度（调用者应释放这部分重复槽位）。

        Insert key → value (page-aligned). Returns how many leading tokens were already cached;
        the caller frees its own duplicate slots for them. namespace: as in match_prefix.
        """
        key = namespaced(key, namespace)
        # >>> ASSIGNMENT radix_cache: insert
        key = self._page_aligned(key)
        value = value[: len(key)]
        node, prefix_len = self.root_node, 0
        node.last_access_time = next(_clock)
        while key:
            child = node.children.get(self._child_key(key))
            if child is None:
                break
            child.last_access_time = next(_clock)
            n = self._match_len(child.key, key)
            if n < len(child.key):
                child = self._split_node(child, n)
            prefix_len += n
            node, key, value = child, key[n:], value[n:]
        if key:
            new_node = TreeNode(parent=node)
            new_node.key, new_node.value = list(key), value.clone()
            node.children[self._child_key(key)] = new_node
            self.evictable_size_ += len(key)
        return prefix_len
        # <<< ASSIGNMENT

    # ======== 锁 / Locks ========
    def inc_lock_ref(self, node: TreeNode) -> None:
        """从 node 到根，每个节点 lock_ref+1（0→1 时从可驱逐转为受保护）。Lock the path to the root."""
        while node is not self.root_node:
            if node.lock_ref == 0:
                self.evictable_size_ -= len(node.key)
                self.protected_size_ += len(node.key)
            node.lock_ref += 1
            node = node.parent

    def dec_lock_ref(self, node: TreeNode) -> None:
        """inc_lock_ref 的逆操作。Undo inc_lock_ref."""
        while node is not self.root_node:
            if node.lock_ref == 1:
                self.evictable_size_ += len(node.key)
                self.protected_size_ -= len(node.key)
            node.lock_ref -= 1
            assert node.lock_ref >= 0, "dec_lock_ref below zero: a request unlocked twice"
            node = node.parent

    # ======== 驱逐 / Eviction ========
    def evict(self, num_tokens: int) -> int:
        """按 LRU 从未锁叶子中释放至少 num_tokens 个槽位，返回实际释放数。

        Free at least num_tokens slots from unlocked leaves, least recently used first.
        Returns how many were freed (less when not enough is evictable).
        """
        # >>> ASSIGNMENT radix_cache: evict
        leaves = [n for n in self._all_nodes() if n.is_leaf and n.lock_ref == 0 and n is not self.root_node]
        heapq.heapify(leaves)
        freed = 0
        while freed < num_tokens and leaves:
            node = heapq.heappop(leaves)
            self.token_to_kv_pool_allocator.free(node.value)
            freed += len(node.key)
            self.evictable_size_ -= len(node.key)
            parent = node.parent
            del parent.children[self._child_key(node.key)]
            if parent is not self.root_node and parent.is_leaf and parent.lock_ref == 0:
                heapq.heappush(leaves, parent)
        return freed
        # <<< ASSIGNMENT

    def _all_nodes(self) -> List[TreeNode]:
        out, stack = [], [self.root_node]
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out

    # ======== 与请求的接口 / Interface with requests ========
    def cache_finished_req(self, req) -> None:
        """请求结束：把它的 KV 插入树，释放重复与不足一页的部分，并解锁。

        A request finished: insert its KV, free duplicates and the unaligned tail, unlock, and
        give back its req_to_token row. The first req.kv_len of req.token_ids have KV.
        """
        token_ids = req.token_ids[: req.kv_len]
        kv_indices = self.req_to_token_pool.read(req.req_pool_idx, 0, req.kv_len)
        aligned = len(token_ids) // self.page_size * self.page_size
        ns = getattr(req, "lora_id", None)  # 适配器的命名空间 / the adapter's namespace
        new_prefix_len = self.insert(token_ids[:aligned], kv_indices[:aligned], namespace=ns)
        allocator = self.token_to_kv_pool_allocator
        # 释放树里原本已有的重复部分与不足一页的尾巴；空的就不调 free：一次 free 有好几个小张量操作，
        # 1,024 个请求可能在同一步结束。Free the duplicates the tree already had and the partial last page,
        # skipping empty parts: a free() is several small tensor ops, and 1,024 requests may end in one step.
        for part in (kv_indices[len(req.prefix_indices) : new_prefix_len], kv_indices[aligned:]):
            if len(part):
                allocator.free(part)
        self.req_to_token_pool.free(req.req_pool_idx)
        self.dec_lock_ref(req.last_node)
        req.req_pool_idx, req.last_node = None, None

    def cache_unfinished_req(self, req) -> None:
        """请求还在运行（分块 prefill 或刚 prefill 完）：插入已算好的部分，并把前缀指向树中的槽位。

        A running request (between chunks, or just prefilled): insert what is computed, point
        its prefix at the tree's slots, and move its lock down to the new last node, so later
        requests can share this prefix while it is still decoding.
        """
        token_ids = req.token_ids[: req.kv_len]
        kv_indices = self.req_to_token_pool.read(req.req_pool_idx, 0, req.kv_len)
        aligned = len(token_ids) // self.page_size * self.page_size
        ns = getattr(req, "lora_id", None)
        new_prefix_len = self.insert(token_ids[:aligned], kv_indices[:aligned], namespace=ns)
        pre = len(req.prefix_indices)
        if new_prefix_len > pre:  # 树里已有的重复 / duplicates the tree had
            self.token_to_kv_pool_allocator.free(kv_indices[pre:new_prefix_len])
        new_indices, new_last_node = self.match_prefix(token_ids[:aligned], namespace=ns)
        assert len(new_indices) == aligned, "a just-inserted key must match in full"
        # 只有树里原本已有的那段 [旧前缀, new_prefix_len) 换成树的槽位；之后的就是这个请求自己刚插进去的槽位，不用重写。
        # Only [old prefix, new_prefix_len), the part the tree already had, is repointed at the tree's
        # slots; after it the tree holds this request's own slots, just inserted: nothing to rewrite.
        if new_prefix_len > pre:
            self.req_to_token_pool.write(req.req_pool_idx, pre, new_indices[pre:new_prefix_len])
        self.dec_lock_ref(req.last_node)
        self.inc_lock_ref(new_last_node)
        req.prefix_indices, req.last_node = new_indices, new_last_node

    def release_req(self, req) -> None:
        """丢弃请求自己的 KV（retraction 用）：前缀归树所有，只解锁。

        Discard a request's own KV without caching it (retraction): the prefix belongs to the
        tree and is only unlocked; the rest is freed.
        """
        own = self.req_to_token_pool.read(req.req_pool_idx, len(req.prefix_indices), req.kv_len)
        self.token_to_kv_pool_allocator.free(own)
        self.req_to_token_pool.free(req.req_pool_idx)
        self.dec_lock_ref(req.last_node)
        req.req_pool_idx, req.last_node = None, None

    # ======== 统计 / Sizes ========
    def evictable_size(self) -> int:
        return self.evictable_size_

    def protected_size(self) -> int:
        return self.protected_size_

    def total_size(self) -> int:
        return sum(len(n.key) for n in self._all_nodes())

    def pretty_print(self) -> str:
        """树的文本图（笔记本里用）。A text drawing of the tree, for notebooks."""
        lines: List[str] = []

        def walk(node: TreeNode, indent: int) -> None:
            for child in sorted(node.children.values(), key=lambda n: n.id):
                lines.append(f"{'  ' * indent}└─ {child.key[:8]}{'…' if len(child.key) > 8 else ''} "
                             f"(len={len(child.key)}, lock={child.lock_ref})")
                walk(child, indent + 1)

        lines.append(f"root (total={self.total_size()}, evictable={self.evictable_size_}, "
                     f"protected={self.protected_size_})")
        walk(self.root_node, 0)
        return "\n".join(lines)
