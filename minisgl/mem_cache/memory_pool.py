# ================================================================================
# 🗄️ 两级内存池（ReqToTokenPool + TokenToKVPool + 分页分配器）
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   管理 KV cache 的显存/内存。第一级 ReqToTokenPool 记录“第 i 个请求的第 j 个 token 的 KV
#   存在哪个槽位”；第二级 TokenToKVPool 是真正存放 K/V 的大数组（每层一份）；
#   TokenToKVPoolAllocator 按页（page）分配和回收槽位。
#   Memory for the KV cache, in two levels: ReqToTokenPool maps (request, position) → slot;
#   TokenToKVPool holds the K/V tensors (one pair per layer); the allocator hands out and
#   takes back slots a page at a time.
#
# 【生活比喻】Metaphor
#   操作系统的分页虚拟内存：req_to_token 是每个进程的页表，KV 槽位是物理内存帧，
#   分配器是空闲页链表。按页分配，不需要连续，所以不会有外部碎片。
#   OS paging: req_to_token is each process's page table, KV slots are physical frames,
#   the allocator is the free-page list. Nothing needs to be contiguous, so no fragmentation.
#
# 【核心架构】Architecture
#   ReqToTokenPool.req_to_token  [max_reqs, max_context_len] int64
#        │  row = req_pool_idx, col = position  →  value = KV slot
#        ▼
#   TokenToKVPool.k_buffer[layer] [num_slots, num_kv_heads, head_dim]   (v_buffer 相同 / same)
#        ▲
#   TokenToKVPoolAllocator: free_pages  (page p owns slots p*page_size … p*page_size+page_size-1)
#
# 【工作流程】Workflow
#   1. 新请求：req_to_token_pool.alloc() 拿到一行；allocator.alloc_extend() 给新 token 分配槽位。
#      A new request takes a row and slots for its new tokens.
#   2. 每个 decode 步：alloc_decode() 为每个请求再拿 1 个槽位（页未满时接着用上一页）。
#      Each decode step: one slot per request, continuing the request's last page if it has room.
#   3. 请求结束：RadixCache 接手可共享的部分，其余 free() 回收（按页）。
#      When a request ends, the radix cache keeps what can be shared; the rest is freed by page.
#
# 【关键概念】Key Concepts
#   - req_to_token 在主机上还有一份（req_to_token_cpu）：前缀缓存读它，不用等 GPU 算完（重叠调度，第 06 章）。
#     A host copy of req_to_token (req_to_token_cpu) is what the prefix cache reads: no wait for the GPU.
#   - 槽位 0（page_size>1 时是第 0 页）是哑槽位：padding 的 token 把 K/V 写到这里，从不分配。
#     Slot 0 (page 0 when page_size > 1) is the dummy: padded tokens write there; never allocated.
#   - page_size = 1 时 token 级分配；page_size > 1 时一个页只属于一个请求（或 radix 树的一个节点），
#     所以 free() 以页为单位，与 SGLang 的 PagedTokenToKVPoolAllocator 相同。
#   - 每个 token 的 KV 字节数 = 2 (K,V) × layers × kv_heads × head_dim × dtype_bytes。
#     Qwen3-0.6B (28 层, 8 KV 头, 128 维, bf16): 2×28×8×128×2 = 114,688 B ≈ 112 KiB / token.
#
# 【使用方式】Usage
#   >>> alloc = TokenToKVPoolAllocator(size=64, page_size=4)
#   >>> loc = alloc.alloc_extend([0], [6], [-1])      # 一个请求，6 个新 token → 2 页
#   >>> alloc.free(loc); alloc.available_size()       # 64
#
# 【对应章节】Chapter: docs/zh/08-kv-cache.md
# ================================================================================
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from minisgl.model import fused_ops


class ReqToTokenPool:
    """请求 → token 槽位的映射表（每个正在运行的请求占一行）。One row per running request.

    Row 0 is the dummy row (all zeros → the dummy KV slot): padded CUDA-graph rows point at it,
    so it is never handed out; `size - 1` rows are usable.
    """

    DUMMY_ROW = 0

    def __init__(self, size: int, max_context_len: int, device: str = "cpu"):
        self.size = size
        self.max_context_len = max_context_len
        self.device = device
        # [size, max_context_len]: req_to_token[r, j] = KV slot of token j of the request in row r
        self.req_to_token = torch.zeros((size, max_context_len), dtype=torch.int64, device=device)
        # 主机上的同一张表：前缀缓存读它，读设备上的那张要等 GPU 算完（重叠调度里是一次同步）。
        # 槽位本来就是主机上的分配器给的，所以两份总是一样。CPU 上两者是同一个张量。
        # The same table on the host: the prefix cache reads this one, because reading the device
        # copy waits for the GPU (a sync in the overlap scheduler). Slots come from the host-side
        # allocator anyway, so the two always agree. On CPU both names are one tensor.
        self.req_to_token_cpu = self.req_to_token if str(device) == "cpu" else torch.zeros_like(self.req_to_token, device="cpu")
        self.clear()

    def available_size(self) -> int:
        return len(self.free_slots)

    def alloc(self, need_size: int = 1) -> Optional[List[int]]:
        if need_size > len(self.free_slots):
            return None
        taken, self.free_slots = self.free_slots[:need_size], self.free_slots[need_size:]
        return taken

    def free(self, idx: int) -> None:
        self.free_slots.append(idx)

    def write(self, idx: int, start: int, values: torch.Tensor) -> None:
        """把一段槽位写进第 idx 行（两份表都写）。Write slots into row idx from column start (both copies)."""
        from minisgl.utils import to_device

        end = start + len(values)
        if self.req_to_token_cpu is not self.req_to_token:
            self.req_to_token_cpu[idx, start:end] = torch.as_tensor(values, dtype=torch.int64)
        self.req_to_token[idx, start:end] = to_device(values, torch.int64, self.req_to_token.device)

    def write_rows(self, rows: Sequence[int], starts: Sequence[int], values: Sequence[torch.Tensor]) -> None:
        """一次写很多行：主机表逐行写，设备表一次拷贝、一次 index_put。Many rows, one copy to the device.

        Row rows[i] (the rows are distinct) gets values[i] from column starts[i]. A prefill of ~100
        requests used to make two write() calls per request, each a pinned host buffer, a copy and a
        kernel (10.3 ms of host time for 100 rows of 128 slots on the H200, 1.7 ms now); here the
        whole batch is one copy of a [3, total] (row, column, slot) tensor and one scatter, as
        write_decode does for decode.
        """
        from minisgl.utils import host_tensor, to_device

        for idx, start, v in zip(rows, starts, values):  # 主机表（CPU 上它就是唯一的表）/ the host table
            self.req_to_token_cpu[idx, start: start + len(v)] = v
        lens = [len(v) for v in values]
        total = sum(lens)
        if self.req_to_token_cpu is self.req_to_token or total == 0:
            return
        lens_t = host_tensor(lens)
        # 第 k 个值的列 = k − (它那一段在拼接里的起点) + 那一段的 start。Column of flat element k.
        seg_begin = torch.cumsum(lens_t, 0) - lens_t
        shift = torch.repeat_interleave(host_tensor(starts) - seg_begin, lens_t)
        host_cols = torch.stack([torch.repeat_interleave(host_tensor(rows), lens_t),
                                 torch.arange(total) + shift, torch.cat([v.to(torch.int64) for v in values])])
        cols = to_device(host_cols, torch.int64, self.req_to_token.device)  # [3, total]，一次拷贝 / one copy
        self.req_to_token[cols[0], cols[1]] = cols[2]

    def write_decode(self, host_cols: torch.Tensor, dev_cols: torch.Tensor) -> None:
        """decode：每行写一个槽位（设备上一次 index_put，主机上一次）。One slot per row, for decode.

        host_cols / dev_cols: [3, bs] int64, the rows, the columns and the slots, on the host and on
        the device (the same values: the scheduler copies one to the other).
        """
        self.req_to_token[dev_cols[0], dev_cols[1]] = dev_cols[2]
        if self.req_to_token_cpu is not self.req_to_token:
            self.req_to_token_cpu[host_cols[0], host_cols[1]] = host_cols[2]

    def read(self, idx: int, start: int, end: int) -> torch.Tensor:
        """第 idx 行 [start, end) 的槽位，主机上的一份拷贝（不等 GPU）。Slots of row idx, a host copy."""
        return self.req_to_token_cpu[idx, start:end].clone()

    def clear(self) -> None:
        self.free_slots = list(range(1, self.size))

    @property
    def capacity(self) -> int:
        return self.size - 1


class TokenToKVPoolAllocator:
    """按页分配 KV 槽位的空闲表。A free list of KV pages; page 0 is reserved as the dummy."""

    def __init__(self, size: int, page_size: int = 1, device: str = "cpu"):
        if page_size < 1 or size % page_size != 0:
            raise ValueError(f"KV pool size {size} must be a positive multiple of page_size {page_size}")
        self.size = size  # 可分配的槽位数（不含哑页）/ allocatable slots, the dummy page excluded
        self.page_size = page_size
        self.num_pages = size // page_size
        self.device = device
        self.clear()

    def clear(self) -> None:
        # 页号 1..num_pages；第 0 页（槽位 0..page_size-1）是哑页。Pages 1..num_pages; page 0 is the dummy.
        self.free_pages = torch.arange(1, self.num_pages + 1, dtype=torch.int64)

    # ---- 空闲表 = _free + 刚放回的 _released（懒合并）/ the free list = _free + the just-freed _released ----
    # free() 若每次都 torch.cat 整张表，一次就要拷贝几十万个页号：H200 上 KV 池约 100 万个槽位，在本机 CPU 上
    # 一次 free 约 2.4 ms，而一批请求结束时一步里有上千次。所以 free() 只把页放进 _released，
    # 分配时 _free 不够了才合并一次（SGLang 的 release_pages 同理）。
    # A free() that torch.cat's the whole list copies hundreds of thousands of page numbers every time:
    # with the ~1M-slot KV pool of an H200 one free took ~2.4 ms on this project's CPU, and a wave of
    # finishing requests makes a thousand in one step. So free() only appends to _released, and the two
    # are merged once, when _free runs short (as SGLang's release_pages).
    @property
    def free_pages(self) -> torch.Tensor:
        """整张空闲表（1-D int64 页号；读它会先合并刚放回的页）。The whole free list (reading it merges first)."""
        if self._released:
            self._free = torch.cat([self._free, *self._released])
            self._released, self._released_n = [], 0
        return self._free

    @free_pages.setter
    def free_pages(self, pages: torch.Tensor) -> None:
        self._free, self._released, self._released_n = pages, [], 0

    def available_size(self) -> int:
        return (len(self._free) + self._released_n) * self.page_size

    def _take_pages(self, n: int) -> torch.Tensor:
        free = self._free if n <= len(self._free) else self.free_pages  # 不够时才合并 / merge only when short
        pages, self._free = free[:n], free[n:]
        return pages

    def alloc(self, need_size: int) -> Optional[torch.Tensor]:
        """token 级分配（仅 page_size == 1）。Token-granular allocation, page_size 1 only."""
        assert self.page_size == 1, "use alloc_extend / alloc_decode when page_size > 1"
        if need_size > self.available_size():
            return None
        return self._take_pages(need_size)

    def alloc_extend(
        self, prefix_lens: Sequence[int], seq_lens: Sequence[int], last_locs: Sequence[int]
    ) -> Optional[torch.Tensor]:
        """为每个请求的新 token（位置 prefix_len … seq_len-1）分配槽位。

        Allocate slots for positions [prefix_len, seq_len) of each request. A request first
        fills the free tail of its last page (last_loc is the slot of position prefix_len-1, or -1),
        then takes whole new pages. Returns the slots concatenated in request order, or None
        (and takes nothing) when there are not enough pages.
        """
        # >>> ASSIGNMENT paged_allocator: alloc_extend
        ps = self.page_size
        # ======== 第1步：数一数需要多少新页 / Step 1: count the new pages needed ========
        pages_needed = [(-(-s // ps)) - (-(-p // ps)) for p, s in zip(prefix_lens, seq_lens)]
        total = sum(pages_needed)
        if total > len(self.free_pages):
            return None
        new_pages = self._take_pages(total).tolist()
        # ======== 第2步：逐个请求填槽位 / Step 2: lay out the slots request by request ========
        out: List[int] = []
        for p, s, last, n_pages in zip(prefix_lens, seq_lens, last_locs, pages_needed):
            pos = p
            if p % ps != 0:  # 上一页还有空位：接着写 / the last page still has room: keep writing it
                tail = min(s, (p // ps + 1) * ps)
                out.extend(range(last + 1, last + 1 + tail - p))
                pos = tail
            for page in new_pages[:n_pages]:
                take = min(ps, s - pos)
                out.extend(range(page * ps, page * ps + take))
                pos += take
            new_pages = new_pages[n_pages:]
        return torch.tensor(out, dtype=torch.int64)
        # <<< ASSIGNMENT

    def alloc_decode(self, seq_lens: Sequence[int], last_locs: Sequence[int]) -> Optional[torch.Tensor]:
        """每个请求再要 1 个槽位（位置 seq_len-1）。One more slot per request, for position seq_len-1."""
        if self.page_size == 1:  # 快路径：直接取 bs 个空闲槽位 / fast path: take bs free slots
            return self.alloc(len(seq_lens))
        return self.alloc_extend([s - 1 for s in seq_lens], seq_lens, last_locs)

    def free(self, indices: torch.Tensor) -> None:
        """按页回收：调用者保证这些槽位所在的页整页归它所有。

        Free by page. The caller guarantees it owns every page these slots lie in (a page
        belongs to one request or one radix node, never two).
        """
        # >>> ASSIGNMENT paged_allocator: free
        if indices is None or len(indices) == 0:
            return
        pages = torch.unique(indices.to("cpu", torch.int64) // self.page_size)
        # 先放进刚放回的小列表，分配时不够了才并进空闲表（见上面 free_pages）；写成
        # self.free_pages = torch.cat([self.free_pages, pages]) 也对，只是每次都拷贝整张表。
        # Onto the just-freed list, merged when allocation runs short (see free_pages above); writing
        # self.free_pages = torch.cat([self.free_pages, pages]) is also right, only it copies the whole list.
        self._released.append(pages)
        self._released_n += len(pages)
        # <<< ASSIGNMENT


class TokenToKVPool:
    """每层一对 K/V 缓冲区。One K and one V buffer per layer (SGLang's MHATokenToKVPool)."""

    def __init__(
        self,
        size: int,
        page_size: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: str = "cpu",
    ):
        self.size = size
        self.page_size = page_size
        self.num_layers = num_layers
        self.dtype = dtype
        # 多出来的一页是哑页（槽位 0…page_size-1）。The extra page is the dummy page.
        shape = (size + page_size, num_kv_heads, head_dim)
        self.k_buffer = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v_buffer = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]

    @staticmethod
    def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * num_kv_heads * head_dim * torch.tensor([], dtype=dtype).element_size()

    def set_kv_buffer(self, layer_id: int, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """把新 token 的 K/V 写入槽位 loc。Store the new tokens' K/V ([N, Hkv, D]) at slots loc ([N])."""
        # GPU 上一个 Triton kernel 同时写 K 和 V（model/fused_ops.py）；CPU 上是两次索引赋值。
        # One Triton kernel writes both on the GPU (model/fused_ops.py); two indexed stores on the CPU.
        fused_ops.store_kv_(self.k_buffer[layer_id], self.v_buffer[layer_id], loc, k, v)
