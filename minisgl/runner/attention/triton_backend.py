# ================================================================================
# ⚡ Triton 注意力后端：在 GPU 上建元数据，调用我们自己写的 Triton 内核
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   把 ForwardBatch 翻译成 Triton 内核需要的 CSR 元数据（kv_indptr / kv_indices / qo_indptr），
#   全部在 GPU 上构建（没有主机同步），然后调用 triton_ops 里的 extend / decode 内核。
#   decode 的元数据写进固定地址的缓冲区，所以整个 decode 前向可以被 CUDA graph 录制和回放。
#   Translates a ForwardBatch into the CSR metadata the Triton kernels read (kv_indptr,
#   kv_indices, qo_indptr), built on the GPU with no host sync, then calls the extend / decode
#   kernels. Decode metadata lives in fixed buffers, so a CUDA graph can record and replay it.
#
# 【生活比喻】Metaphor
#   流水线厨房的配菜单：先把每桌要的食材位置（KV 槽位）列成一张连续清单，厨师（内核）照单取料，
#   不用每次跑去问领班（CPU）。
#   The prep list of a production kitchen: every table's ingredient locations (KV slots) in one
#   flat list, so the cooks (kernels) never walk back to ask the host (CPU).
#
# 【核心架构】Architecture
#   req_to_token [max_reqs, ctx]  ──create_kv_indices_kernel──►  kv_indices [Σ len_i]
#   seq_lens [bs] ──cumsum──► kv_indptr [bs+1]：请求 i 的槽位是 kv_indices[indptr[i]:indptr[i+1]]
#
#   EXTEND: kv_* 只列“已缓存前缀”的槽位；新 token 的 K/V 直接从 k/v 张量读（内核第二阶段）。
#   DECODE: kv_* 列出全部历史（含刚写入的这一个）；split-KV 两阶段内核。
#   DECODE + 共享前缀组（fb.prefix_groups）：每组的前缀列一份给 cascade 前缀级，kv_* 只列各自的后缀。
#   DECODE with shared-prefix groups: one prefix list per group for the cascade level; kv_* list suffixes.
#
# 【工作流程】Workflow
#   1. init_forward_metadata(fb)：建 indptr / indices / split 数（GPU 上）。
#   2. forward()：写 KV → 调内核 → 输出 [N, H, D]。
#
# 【关键概念】Key Concepts
#   - 不在主机上读 seq_lens：create_kv_indices_kernel 每个请求一个 program，自己从 GPU 上读长度。
#     No host reads: one program per request reads its own length on the device.
#   - 固定缓冲区 + 填充：CUDA graph 只认录制时的地址，所以 decode 的元数据总写在同一块内存里。
#   - max_kv_splits = 16：长序列、小 batch 时把一个序列切成多段并行（flash-decoding 思路）。
#   - cascade（共享前缀只读一次）：write_cascade_plan 在主机上把组写进 cas_meta（一次拷贝），
#     init_cascade_device 在设备上由它建前缀/后缀元数据；后者能录进 CUDA graph。
#     Cascade: the host writes the groups into cas_meta (one copy); the device half is capturable.
#
# 【使用方式】Usage
#   minisgl serve --device cuda --attention-backend triton    （GPU 上的默认 / the GPU default）
#
# 【对应章节】Chapter: docs/zh/07-model-inference.md
# ================================================================================
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from minisgl.utils import host_tensor, to_device
from minisgl.runner.attention.triton_ops import decode_attention_fwd, extend_attention_fwd, get_num_kv_splits
from minisgl.runner.attention.triton_ops.cascade_attention import (
    cascade_prefix_fwd,
    choose_prefix_splits,
    prefix_programs,
    prefix_work_items,
)

MAX_KV_SPLITS = 16
MAX_CASCADE_SPLITS = 8


@triton.jit
def create_kv_indices_kernel(
    req_to_token_ptr,  # [max_reqs, ctx]
    req_pool_indices_ptr,  # [bs]
    lens_ptr,  # [bs]：每个请求要列出的槽位数 / slots to list per request
    kv_indptr_ptr,  # [bs+1]
    kv_indices_ptr,  # out: [Σ lens]
    starts_ptr,  # [bs]：从行里第几列开始（cascade 的后缀）/ first column to copy (a cascade suffix)
    req_to_token_stride: tl.constexpr,
    BLOCK: tl.constexpr,
    HAS_START: tl.constexpr,
):
    # 一个 program 负责一个请求：把 req_to_token 一行里 [start, start+len) 的槽位抄进 kv_indices。
    # One program per request: copy slots [start, start + len) of its req_to_token row (start 0 unless cascade).
    pid = tl.program_id(0)
    row = tl.load(req_pool_indices_ptr + pid)
    length = tl.load(lens_ptr + pid)
    out_start = tl.load(kv_indptr_ptr + pid)
    col0 = tl.load(starts_ptr + pid) if HAS_START else 0
    for start in range(0, length, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < length  # 最后一块可能不满 / the last block may be partial
        slots = tl.load(req_to_token_ptr + row * req_to_token_stride + col0 + offs, mask=mask)
        tl.store(kv_indices_ptr + out_start + offs, slots, mask=mask)


@dataclass
class TritonMetadata:
    kv_indptr: torch.Tensor  # [bs+1] int32
    kv_indices: torch.Tensor  # [≥Σ len] int64
    qo_indptr: torch.Tensor = None  # [bs+1] int32（extend）
    num_kv_splits: torch.Tensor = None  # [bs] int32（decode）
    max_len_extend: int = 0
    cascade: "CascadeMetadata" = None  # decode 有共享前缀组时 / decode with shared-prefix groups


@dataclass
class CascadeMetadata:
    """前缀级的输入（cascade_attention.py），全是固定缓冲区的视图。Inputs of the prefix level.

    All are views of fixed buffers (CUDA graphs). kv_indptr/kv_indices of TritonMetadata then list
    only each request's slots after its prefix. Padding groups have no members and no prefix.
    """

    group_indptr: torch.Tensor  # [max_groups+1] int32 → members
    members: torch.Tensor  # [max_bs] int32：batch 行 / batch rows
    prefix_indptr: torch.Tensor  # [max_groups+1] int32 → prefix_indices
    prefix_indices: torch.Tensor  # int64：每组一份前缀槽位 / one copy of each group's prefix slots
    group_splits: torch.Tensor  # [max_groups] int32：每组前缀切几段 / slices per group prefix
    work_items: torch.Tensor  # int32 [n, g0, s0, …]：前缀级的工作表 / the prefix level's work list
    cas_len: torch.Tensor  # [bs] int32：本请求的共享前缀长度（0 = 不在组里）/ 0 = not in a group
    cas_splits: torch.Tensor  # [bs] int32：本请求所在组的段数 / slices of its group


class TritonAttnBackend:
    """见文件头。See the file header."""

    def __init__(self, model_runner):
        cfg = model_runner.model_config
        self.device = model_runner.device
        # 本 rank 的头数（张量并行时是总数的 1/N）。This rank's heads (1/N of the total under TP).
        self.num_heads, self.num_kv_heads, self.head_dim = model_runner.num_heads, model_runner.num_kv_heads, cfg.head_dim
        self.req_to_token = model_runner.req_to_token_pool.req_to_token
        max_bs = model_runner.req_to_token_pool.size
        self.max_kv_splits = MAX_KV_SPLITS
        # decode 的固定缓冲区（CUDA graph 需要固定地址）。Fixed decode buffers (CUDA graphs need fixed addresses).
        self.kv_indptr = torch.zeros(max_bs + 1, dtype=torch.int32, device=self.device)
        # 共享前缀在每个请求里各列一次，所以上限是 max_bs × ctx，不是池大小。
        # A shared prefix is listed once per request, so the bound is max_bs × ctx, not the pool size.
        self.kv_indices = torch.zeros(max_bs * self.req_to_token.shape[1], dtype=torch.int64, device=self.device)
        self.num_kv_splits = torch.ones(max_bs, dtype=torch.int32, device=self.device)
        self.attn_logits = torch.empty(max_bs, self.num_heads, MAX_KV_SPLITS, self.head_dim,
                                       dtype=torch.float32, device=self.device)
        self.attn_lse = torch.empty(max_bs, self.num_heads, MAX_KV_SPLITS, dtype=torch.float32, device=self.device)
        self._alloc_cascade(max_bs, model_runner)

    # ======== cascade（共享前缀只读一次）的固定缓冲区 / fixed buffers of cascade attention ========
    def _alloc_cascade(self, max_bs: int, model_runner) -> None:
        """组的数据每步由主机写进 cas_meta（一次拷贝），其余都在设备上由它算出。

        The host writes each step's groups into cas_meta (one copy); the rest is computed from it on
        the device, so the whole decode step (cascade included) can be a CUDA graph.
        cas_meta layout: cas_len [max_bs] | cas_splits [max_bs] | members [max_bs] |
                         group_indptr [G+1] | first [G] | prefix_lens [G] | group_splits [G] |
                         work [1 + 2·G·MAX_CASCADE_SPLITS]（前缀级的工作表，只写用到的那一截 / the
                         prefix level's work list: only its used head is written each step）
        """
        group = self.num_heads // self.num_kv_heads
        # 前缀级每个 program 最多 64 行 query（成员 × GROUP）/ at most 64 query rows per prefix program
        self.cascade_max_members = max(2, 64 // group)
        self.cascade_max_groups = G = max(1, max_bs // 2)  # 每组至少两人 / two members at least
        self._cas_offsets = [0, max_bs, 2 * max_bs, 3 * max_bs, 3 * max_bs + G + 1, 3 * max_bs + 2 * G + 1,
                             3 * max_bs + 3 * G + 1, 3 * max_bs + 4 * G + 1,
                             3 * max_bs + 4 * G + 2 + 2 * G * MAX_CASCADE_SPLITS]
        self.cas_meta = torch.zeros(self._cas_offsets[-1], dtype=torch.int32, device=self.device)
        self.cas_prefix_indptr = torch.zeros(G + 1, dtype=torch.int32, device=self.device)
        # 前缀槽位：组数 × ctx 的上限；按需分配，避免不用 cascade 时白占显存。Sized G × ctx, made on first use.
        self.cas_prefix_indices: Optional[torch.Tensor] = None
        self.cas_out = torch.empty(max_bs, self.num_heads, MAX_CASCADE_SPLITS, self.head_dim, dtype=torch.float32,
                                   device=self.device)
        self.cas_lse = torch.empty(max_bs, self.num_heads, MAX_CASCADE_SPLITS, dtype=torch.float32, device=self.device)
        self._num_sms = (torch.cuda.get_device_properties(self.device).multi_processor_count
                         if str(self.device).startswith("cuda") else 1)
        self._prefix_programs = prefix_programs(self.num_kv_heads, self._num_sms)

    def _cas_view(self, i: int, n: Optional[int] = None) -> torch.Tensor:
        start = self._cas_offsets[i]
        return self.cas_meta[start : (start + n) if n is not None else self._cas_offsets[i + 1]]

    def write_cascade_plan(self, fb) -> bool:
        """主机：把 fb.prefix_groups 切成 ≤ cascade_max_members 的块，写进 cas_meta（CUDA graph 之外）。

        Host side, outside any CUDA graph: cut fb.prefix_groups into pieces of at most
        cascade_max_members, choose each piece's number of prefix slices, and write it all into
        cas_meta in one copy. Rows past bs (CUDA-graph padding) are outside every group.
        Returns False when no piece has two members (then plain decode is used).
        """
        pg = fb.prefix_groups
        pieces = []
        for rows, n in zip(pg.members, pg.prefix_lens):
            for i in range(0, len(rows), self.cascade_max_members):
                if len(rows[i : i + self.cascade_max_members]) >= 2:
                    pieces.append((rows[i : i + self.cascade_max_members], n))
        if not pieces:
            return False
        G, max_bs = self.cascade_max_groups, self._cas_offsets[1]
        pieces = pieces[:G]
        # 段数：让前缀级的常驻 program 最慢的那个做得最少，每段至少 256 个 token
        # Slices: the least work for the busiest persistent program, at least 256 tokens a slice
        by_makespan = choose_prefix_splits(len(pieces), self._prefix_programs, MAX_CASCADE_SPLITS)
        cas_len, cas_splits, members = [0] * max_bs, [0] * max_bs, []
        group_indptr, first, prefix_lens, group_splits = [0], [], [], []
        for rows, n in pieces:
            k = max(1, min(by_makespan, -(-n // 256)))
            for b in rows:
                cas_len[b], cas_splits[b] = n, k
            members += rows
            group_indptr.append(len(members))
            first.append(rows[0])
            prefix_lens.append(n)
            group_splits.append(k)
        pad = G - len(pieces)  # 填充组：没有成员、没有前缀 / padding groups: no members, no prefix
        members += [0] * (max_bs - len(members))
        packed = (cas_len + cas_splits + members + group_indptr + [group_indptr[-1]] * pad
                  + first + [0] * pad + prefix_lens + [0] * pad + group_splits + [0] * pad
                  + prefix_work_items(group_splits))
        host = host_tensor(packed, torch.int32)
        # 固定地址的缓冲区，原地写入（锁页内存 + 异步，主机不等）；工作表在最后，只写到它用到的地方。
        # In place, pinned + async (the host never waits); the work list is last and written only as far as used.
        self.cas_meta[: len(packed)].copy_(host.pin_memory() if self.cas_meta.is_cuda else host, non_blocking=True)
        need = sum(prefix_lens)
        if self.cas_prefix_indices is None or self.cas_prefix_indices.numel() < need:
            # 第一次用到时按上限分配（之后地址不变，图里可以用）/ sized to the bound once, then fixed
            bound = max(need, G * self.req_to_token.shape[1])
            self.cas_prefix_indices = torch.empty(bound, dtype=torch.int64, device=self.device)
        return True

    def init_cascade_device(self, fb) -> None:
        """设备：由 cas_meta 算出前缀/后缀两套 CSR 元数据（可录进 CUDA graph）。

        Device side (capturable): build the prefix lists of every group and each request's suffix
        list [L, seq_len) from cas_meta; padding groups list nothing.
        """
        bs, G = fb.batch_size, self.cascade_max_groups
        if self.cas_prefix_indices is None:  # 录图时也要一个固定地址 / a fixed address for capture too
            self.cas_prefix_indices = torch.empty(G * self.req_to_token.shape[1], dtype=torch.int64,
                                                  device=self.device)
        cas_len, cas_splits = self._cas_view(0, bs), self._cas_view(1, bs)
        first = self._cas_view(4).long()
        prefix_lens = self._cas_view(5)
        # 每组用第一个成员的行（组内 [0, L) 的槽位都相同）/ each group's prefix from its first member's row
        self._fill_indices(fb.req_pool_indices[first.clamp(max=bs - 1)], prefix_lens, self.cas_prefix_indptr,
                           self.cas_prefix_indices)
        # 后缀：[L, seq_len)；不在组里的请求 L = 0，就是整行 / suffix [L, seq_len); L = 0 outside groups
        suffix_lens = fb.seq_lens.to(torch.int32) - cas_len
        self._fill_indices(fb.req_pool_indices, suffix_lens, self.kv_indptr, self.kv_indices, starts=cas_len)
        self.num_kv_splits[:bs].copy_(get_num_kv_splits(suffix_lens, self.max_kv_splits, self.num_kv_heads))
        cascade = CascadeMetadata(self._cas_view(3), self._cas_view(2), self.cas_prefix_indptr,
                                  self.cas_prefix_indices, self._cas_view(6), self._cas_view(7), cas_len, cas_splits)
        fb.attn_metadata = TritonMetadata(self.kv_indptr[: bs + 1], self.kv_indices,
                                          num_kv_splits=self.num_kv_splits[:bs], cascade=cascade)

    def _fill_indices(self, req_pool_indices, lens, kv_indptr, kv_indices, starts=None) -> None:
        bs = len(req_pool_indices)
        kv_indptr[:1].zero_()  # 不用 [0] = 0：那是一次主机→设备拷贝，CUDA graph 录不进 / no host copy (graph-safe)
        torch.cumsum(lens, dim=0, out=kv_indptr[1 : bs + 1])
        create_kv_indices_kernel[(bs,)](
            self.req_to_token, req_pool_indices, lens, kv_indptr, kv_indices,
            starts if starts is not None else lens, self.req_to_token.stride(0), BLOCK=512,
            HAS_START=starts is not None,
        )

    def init_forward_metadata(self, fb) -> None:
        bs = fb.batch_size
        if fb.forward_mode.is_decode() and fb.prefix_groups is not None and self.write_cascade_plan(fb):
            self.init_cascade_device(fb)
            return
        if fb.forward_mode.is_decode():
            self._fill_indices(fb.req_pool_indices, fb.seq_lens, self.kv_indptr, self.kv_indices)
            self.num_kv_splits[:bs].copy_(get_num_kv_splits(fb.seq_lens, self.max_kv_splits, self.num_kv_heads))
            fb.attn_metadata = TritonMetadata(self.kv_indptr[: bs + 1], self.kv_indices,
                                              num_kv_splits=self.num_kv_splits[:bs])
            return
        prefix_lens = to_device(fb.extend_prefix_lens, torch.int32, self.device)
        extend_lens = to_device(fb.extend_seq_lens, torch.int32, self.device)
        kv_indptr = torch.zeros(bs + 1, dtype=torch.int32, device=self.device)
        kv_indices = torch.empty(max(sum(fb.extend_prefix_lens), 1), dtype=torch.int64, device=self.device)
        self._fill_indices(fb.req_pool_indices, prefix_lens, kv_indptr, kv_indices)
        qo_indptr = torch.zeros(bs + 1, dtype=torch.int32, device=self.device)
        torch.cumsum(extend_lens, dim=0, out=qo_indptr[1:])
        fb.attn_metadata = TritonMetadata(kv_indptr, kv_indices, qo_indptr=qo_indptr,
                                          max_len_extend=max(fb.extend_seq_lens))

    def forward(self, q, k, v, layer_id: int, scaling: float, fb) -> torch.Tensor:
        pool = fb.token_to_kv_pool
        pool.set_kv_buffer(layer_id, fb.out_cache_loc, k, v)
        k_buf, v_buf = pool.k_buffer[layer_id], pool.v_buffer[layer_id]
        md: TritonMetadata = fb.attn_metadata
        o = torch.empty_like(q)
        if fb.forward_mode.is_decode():
            bs = fb.batch_size
            partials = None
            if md.cascade is not None:
                c = md.cascade
                # 前缀级先算：每组的共享前缀只读一次 / the prefix level first: each shared prefix read once
                cfg = cascade_prefix_fwd(q, k_buf, v_buf, self.cas_out, self.cas_lse, c.group_indptr, c.members,
                                         c.prefix_indptr, c.prefix_indices, c.group_splits, c.work_items,
                                         self.cascade_max_members, scaling)
                partials = (self.cas_out, self.cas_lse, c.cas_len, c.cas_splits, cfg["BLOCK_N"])
            decode_attention_fwd(q, k_buf, v_buf, o, md.kv_indptr, md.kv_indices, self.attn_logits[:bs],
                                 self.attn_lse[:bs], md.num_kv_splits, self.max_kv_splits, scaling,
                                 prefix_partials=partials)
        else:
            extend_attention_fwd(q, k.contiguous(), v.contiguous(), o, k_buf, v_buf, md.qo_indptr, md.kv_indptr,
                                 md.kv_indices, md.max_len_extend, scaling)
        return o
