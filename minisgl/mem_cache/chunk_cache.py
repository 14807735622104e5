# ================================================================================
# 📋 无共享的缓存（ChunkCache，--disable-radix-cache 时使用）
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   与 RadixCache 接口相同，但从不在请求之间共享 KV：匹配永远为空，请求结束就全部释放。
#   只为分块 prefill（chunked prefill）记住“本请求已经算过的块”。
#   The same interface as RadixCache, but nothing is shared between requests: a match is always
#   empty and a finished request frees everything. It only remembers a request's own earlier chunks.
#
# 【生活比喻】Metaphor
#   没有卡片目录的图书馆：每位读者自己抄一份，读完就扔。对比它和 RadixCache，就能看出前缀缓存省了多少。
#   A library without a catalogue: every reader copies the book and throws the copy away.
#   Compare it with RadixCache to see what prefix caching saves.
#
# 【核心架构】Architecture
#   Scheduler ──► ChunkCache.match_prefix      → 空 / empty
#             ──► ChunkCache.cache_unfinished_req → prefix_indices = 本请求已算好的槽位
#             ──► ChunkCache.cache_finished_req   → allocator.free(全部 / all)
#
# 【工作流程】Workflow
#   1. 新请求不命中任何前缀。No request ever hits a prefix.
#   2. 分块之间：把已写入的槽位当作“前缀”，下一块接着算。Between chunks, the computed slots act as the prefix.
#   3. 结束：释放所有槽位和 req_to_token 行。At the end, free every slot and the row.
#
# 【关键概念】Key Concepts
#   - evictable_size() 恒为 0：没有可驱逐的缓存，内存用完只能靠 retraction。
#     Nothing is evictable, so a full pool can only be relieved by retraction.
#
# 【使用方式】Usage
#   >>> cache = ChunkCache(req_to_token_pool, allocator, page_size=1)
#   >>> cache.match_prefix([1, 2, 3])   # (tensor([]), None)
#
# 【对应章节】Chapter: docs/zh/08-kv-cache.md
# ================================================================================
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch


class ChunkCache:
    """不共享前缀的缓存（接口同 RadixCache）。A no-sharing cache with RadixCache's interface."""

    def __init__(self, req_to_token_pool, token_to_kv_pool_allocator, page_size: int = 1):
        self.req_to_token_pool = req_to_token_pool
        self.token_to_kv_pool_allocator = token_to_kv_pool_allocator
        self.page_size = page_size

    def reset(self) -> None:
        pass

    def match_prefix(self, key: Sequence[int], namespace: Optional[str] = None) -> Tuple[torch.Tensor, None]:
        return torch.empty(0, dtype=torch.int64), None

    def match_prefix_len(self, key: Sequence[int], namespace: Optional[str] = None,
                         max_len: Optional[int] = None) -> int:
        return 0

    def release_req(self, req) -> None:
        # 没有共享：请求的所有 KV 都归它自己，全部释放。Nothing is shared: all of it is freed.
        self.cache_finished_req(req)

    def cache_finished_req(self, req) -> None:
        self.token_to_kv_pool_allocator.free(self.req_to_token_pool.read(req.req_pool_idx, 0, req.kv_len))
        self.req_to_token_pool.free(req.req_pool_idx)
        req.req_pool_idx, req.last_node = None, None

    def cache_unfinished_req(self, req) -> None:
        # 下一块从这里接着算；页对齐让下一块的槽位分配规则与 RadixCache 一致。
        # The next chunk continues from here; page alignment keeps slot allocation as with RadixCache.
        aligned = req.kv_len // self.page_size * self.page_size
        req.prefix_indices = self.req_to_token_pool.read(req.req_pool_idx, 0, aligned)

    def inc_lock_ref(self, node) -> None:
        pass

    def dec_lock_ref(self, node) -> None:
        pass

    def evict(self, num_tokens: int) -> int:
        return 0

    def evictable_size(self) -> int:
        return 0

    def protected_size(self) -> int:
        return 0

    def total_size(self) -> int:
        return 0

    def pretty_print(self) -> str:
        return "ChunkCache (radix cache disabled: nothing is shared)"
