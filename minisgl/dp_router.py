# ================================================================================
# 🚦 数据并行路由（DataParallelRouter）：每个请求该去哪个副本？
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   --dp-size N 时有 N 个互不相干的模型副本（各有自己的调度器、KV 池和 radix 树），共用一个 HTTP 前端。
#   TokenizerManager 每发一个请求都问这里：发给第几个副本？三种方法：
#     round_robin     轮流发；
#     shortest_queue  发给在途请求最少的副本；
#     prefix_aware    发给“最可能已经缓存了这个前缀”的副本（前缀没见过时退回 shortest_queue）。
#   With --dp-size N there are N independent replicas (each with its own scheduler, KV pool and
#   radix tree) behind one HTTP front. For every request TokenizerManager asks: which replica?
#   round_robin takes turns; shortest_queue picks the fewest in-flight requests; prefix_aware picks
#   the replica that most likely caches the prompt's prefix (falling back to shortest_queue).
#
# 【生活比喻】Metaphor
#   银行大厅的取号员：普通业务轮流分到各个窗口；老客户（前缀见过）直接带到上次办过业务的窗口，
#   那里的柜员手边还留着他的资料（KV 缓存）——除非那个窗口已经排起长队。
#   A bank's greeter: ordinary customers take turns at the counters; a returning customer (a known
#   prefix) is led to the counter that served them before, where the papers (the KV cache) are still
#   at hand — unless that counter's queue is much longer than the others.
#
# 【核心架构】Architecture
#   prompt ids ──按 BLOCK_SIZE 切块──► 链式哈希 h₀, h₁ = hash(h₀, 块₁), …
#   block_owner: OrderedDict[hash → 副本]（LRU，最多 MAX_BLOCKS 项）
#   route(ids) = 最长的已知哈希链的主人（负载不超过最轻者 + BALANCE_SLACK）否则最轻的副本
#
# 【工作流程】Workflow
#   1. route(rid, input_ids) → 副本号，并记下 rid → 副本（abort 要发到同一个副本）。
#   2. prefix_aware：把这个请求所有块的哈希记到选中的副本名下（它很快就会缓存它们）。
#   3. finish(rid)：请求结束，在途计数减一。
#
# 【关键概念】Key Concepts
#   - 链式哈希：第 k 块的哈希包含前面所有块，所以“第 k 块的哈希相同” ⇔ “前 (k+1)·B 个 token 相同”。
#     Chained hashes: equal hash of block k ⇔ equal first (k+1)·B tokens — a prefix test in O(1) per block.
#   - 这只是路由器对各副本缓存的“猜测”：副本可能已经把它驱逐了。猜错只损失一次缓存命中，结果仍然正确。
#     It is only a guess of each replica's cache (a replica may have evicted it): a wrong guess costs
#     one cache hit, never a wrong answer. SGLang's router keeps an approximate tree per worker likewise.
#
# 【使用方式】Usage
#   >>> router = DataParallelRouter(dp_size=2, method="prefix_aware")
#   >>> router.route("a", [1, 2, 3] * 20), router.route("b", [1, 2, 3] * 20 + [9])   # 同一个副本 / same replica
#
# 【对应章节】Chapter: docs/zh/11-advanced.md
# ================================================================================
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Sequence

BLOCK_SIZE = 16  # 多少个 token 算一块 / tokens per hashed block
MAX_BLOCKS = 1 << 16  # 记住的块数上限（LRU）/ how many blocks the router remembers (LRU)
BALANCE_SLACK = 8  # 缓存主人比最轻副本多出这么多在途请求时，宁可放弃缓存 / give up the cache beyond this imbalance

METHODS = ("round_robin", "shortest_queue", "prefix_aware")


class DataParallelRouter:
    """见文件头。See the file header."""

    def __init__(self, dp_size: int, method: str = "round_robin"):
        if method not in METHODS:
            raise ValueError(f"unknown load-balance method {method!r}; choose from {', '.join(METHODS)}")
        self.dp_size, self.method = dp_size, method
        self.in_flight = [0] * dp_size  # 每个副本的在途请求数 / in-flight requests per replica
        self.routed = [0] * dp_size  # 累计发出的请求数 / requests sent so far, per replica
        self.rid_to_replica: Dict[str, int] = {}
        self.block_owner: "OrderedDict[int, int]" = OrderedDict()
        self._next = 0

    # ======== 路由 / Routing ========
    def route(self, rid: str, input_ids: Sequence[int]) -> int:
        if self.dp_size == 1:
            dp = 0
        elif self.method == "round_robin":
            dp, self._next = self._next, (self._next + 1) % self.dp_size
        elif self.method == "shortest_queue":
            dp = self._least_loaded()
        else:
            dp = self._prefix_owner(input_ids)
        self.rid_to_replica[rid] = dp
        self.in_flight[dp] += 1
        self.routed[dp] += 1
        return dp

    def replica_of(self, rid: str) -> int:
        return self.rid_to_replica.get(rid, 0)

    def finish(self, rid: str) -> None:
        dp = self.rid_to_replica.pop(rid, None)
        if dp is not None:
            self.in_flight[dp] -= 1

    # ======== 内部 / Internals ========
    def _least_loaded(self) -> int:
        return min(range(self.dp_size), key=lambda i: (self.in_flight[i], self.routed[i]))

    @staticmethod
    def block_hashes(input_ids: Sequence[int]) -> List[int]:
        """整块的链式哈希（不足一块的尾巴不算）。Chained hashes of the whole blocks (a partial tail is skipped)."""
        hashes, h = [], 0
        for start in range(0, len(input_ids) - BLOCK_SIZE + 1, BLOCK_SIZE):
            h = hash((h, tuple(input_ids[start:start + BLOCK_SIZE])))
            hashes.append(h)
        return hashes

    def _prefix_owner(self, input_ids: Sequence[int]) -> int:
        hashes = self.block_hashes(input_ids)
        owner = None
        for h in hashes:  # 最长的已知前缀 / the longest known prefix
            if h not in self.block_owner:
                break
            owner = self.block_owner[h]
        lightest = self._least_loaded()
        if owner is None or self.in_flight[owner] > self.in_flight[lightest] + BALANCE_SLACK:
            owner = lightest
        for h in hashes:  # 选中的副本马上会缓存这些块 / the chosen replica is about to cache these blocks
            self.block_owner[h] = owner
            self.block_owner.move_to_end(h)
        while len(self.block_owner) > MAX_BLOCKS:
            self.block_owner.popitem(last=False)
        return owner

    def stats(self) -> dict:
        return {"load_balance_method": self.method, "in_flight": list(self.in_flight), "routed": list(self.routed)}
