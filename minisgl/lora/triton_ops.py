# ================================================================================
# ⚡ 分段矩阵乘的 Triton 内核：sgemm_lora_a（收缩）与 sgemm_lora_b（扩张 + 原地累加）
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   ops.py 里两个参考实现的 GPU 版本，参数相同：一次启动算完 batch 里所有段（每段一个适配器），
#   不必按适配器逐个启动 GEMM。思路同 Punica 的 SGMV、SGLang 的 sgemm_lora_a/b，代码是我们自己写的。
#   The GPU versions of the two references in ops.py, same arguments: one launch covers every
#   segment of the batch (one adapter each) instead of one GEMM per adapter. Same idea as Punica's
#   SGMV and SGLang's sgemm_lora_a / lora_b kernels; the code is written afresh.
#
# 【生活比喻】Metaphor
#   一次派出很多小组（program），每组领一张任务卡：“第几段、第几块行、第几块列”，先看卡上写的
#   适配器编号去取对应的 A/B，没写编号（-1）的小组直接收工。
#   Many small crews go out at once, each with a card "segment, row tile, column tile"; a crew
#   fetches the A/B named on its card, and a crew whose card says -1 (no adapter) goes home.
#
# 【核心架构】Architecture
#   sgemm_lora_a：grid = (段数 segments, cdiv(最长段, BLOCK_M), cdiv(P·R, BLOCK_R))
#     program (s, m, r)：xa[段 s 的第 m 块行, 第 r 块列] = Σ_k x[行, k] · A[w_s, 列, k]
#   sgemm_lora_b：grid = (段数, cdiv(最长段, BLOCK_M), P · cdiv(最宽部分, BLOCK_N))
#     program (s, m, pn)：部分 p = pn // nb，列块 = pn % nb；
#       out[行, 列] += (xa[行, p·R : p·R+R] @ B[w_s, 列, :]^T) · scaling[w_s]
#   每个输出元素只属于一个 program：原地累加没有竞争。Each output element has one owner: no races.
#
# 【工作流程】Workflow
#   1. 读本段的 [start, end) 与槽位 w（seg_indptr、weight_indices）。Read the segment's range and slot.
#   2. 本块超出段尾或 w < 0：什么都不做。Past the segment's end or w < 0: nothing to do.
#   3. 按 K 方向分块做 tl.dot，float32 累加；b 内核乘 scaling 后加进 out。
#      tl.dot over K tiles with float32 accumulation; the b kernel scales and adds into out.
#
# 【关键概念】Key Concepts
#   - tl.dot 要求每一维 ≥ 16：BLOCK_M = 16，BLOCK_R = R 补齐到 2 的幂（至少 16），多出的行列掩码为 0。
#     tl.dot needs every dim >= 16: R is padded to a power of 2 and masked.
#   - 字节：a 内核读 x 一次、每段读一次 A[w]（P·R·in）；decode 时每段可能只有 1 个 token，
#     这时它是访存受限的（GEMV），与基座 GEMM 相比仍很小（r=16, in=4096：每段 0.4 MB bf16）。
#     Bytes: x once, A[w] once per segment; with 1-token decode segments this is memory-bound (a GEMV).
#   - float32 输入用 input_precision="ieee"（TF32 会有 ~1e-3 误差），同 extend_attention.py。
#   - 不在 CUDA graph 里用（段数与段长每步都变），LoRA 打开时引擎关闭 CUDA graph。
#     Not used under CUDA graphs (segments change every step): the engine turns graphs off with LoRA.
#
# 【使用方式】Usage
#   >>> xa = sgemm_lora_a_fwd(x, A, info)                                # [N, P·R]
#   >>> sgemm_lora_b_fwd(xa, B, info, scalings, offsets, offsets_t, out) # out += Δ
#   CPU 上测试：TRITON_INTERPRET=1（tests/test_lora.py）。On a CPU: TRITON_INTERPRET=1.
#
# 【对应章节】Chapter: docs/zh/11-advanced.md
# ================================================================================
from __future__ import annotations

from typing import List

import torch
import triton
import triton.language as tl

from minisgl.lora.ops import LoRABatchInfo

BLOCK_M = 16


def _dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _pow2_at_least_16(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


@triton.jit
def _sgemm_lora_a_kernel(
    X,  # [N, K]
    W,  # [S, R_total, K]
    Out,  # [N, R_total]
    seg_indptr,  # [num_segments + 1]
    weight_indices,  # [num_segments]
    K,
    R_total,
    stride_xm, stride_xk,
    stride_ws, stride_wr, stride_wk,
    stride_om, stride_or,
    BLOCK_M: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    seg = tl.program_id(0)
    seg_start = tl.load(seg_indptr + seg)
    seg_end = tl.load(seg_indptr + seg + 1)
    w = tl.load(weight_indices + seg)
    m_start = seg_start + tl.program_id(1) * BLOCK_M
    # grid 按最长段启动：短段多出的行块、无适配器的段直接跳过。
    # The grid fits the longest segment: extra row tiles of short segments, and no-adapter segments, skip.
    if (m_start < seg_end) & (w >= 0):
        offs_m = m_start + tl.arange(0, BLOCK_M)
        offs_r = tl.program_id(2) * BLOCK_R + tl.arange(0, BLOCK_R)
        offs_k = tl.arange(0, BLOCK_K)
        mask_m = offs_m < seg_end
        mask_r = offs_r < R_total
        w_base = W + w.to(tl.int64) * stride_ws
        acc = tl.zeros([BLOCK_M, BLOCK_R], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + offs_k
            mask_k = kk < K
            x = tl.load(X + offs_m.to(tl.int64)[:, None] * stride_xm + kk[None, :] * stride_xk,
                        mask=mask_m[:, None] & mask_k[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
            # A 直接读成转置 [BLOCK_K, BLOCK_R]，正好给 x @ A^T / A loaded transposed for x @ A^T
            a = tl.load(w_base + offs_r[None, :] * stride_wr + kk[:, None] * stride_wk,
                        mask=mask_k[:, None] & mask_r[None, :], other=0.0)
            acc = tl.dot(x, a, acc, input_precision=DOT_PRECISION)
        out_ptrs = Out + offs_m.to(tl.int64)[:, None] * stride_om + offs_r[None, :] * stride_or
        tl.store(out_ptrs, acc.to(Out.dtype.element_ty), mask=mask_m[:, None] & mask_r[None, :])


@triton.jit
def _sgemm_lora_b_kernel(
    XA,  # [N, P·R]
    W,  # [S, out_total, R]
    Out,  # [N, out_total]（原地累加 / accumulated in place）
    seg_indptr,
    weight_indices,
    scalings,  # [S] float32
    part_offsets,  # [P + 1]
    R,
    n_blocks_per_part,
    stride_xm, stride_xr,
    stride_ws, stride_wn, stride_wr,
    stride_om, stride_on,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    seg = tl.program_id(0)
    part = tl.program_id(2) // n_blocks_per_part
    n_block = tl.program_id(2) % n_blocks_per_part
    seg_start = tl.load(seg_indptr + seg)
    seg_end = tl.load(seg_indptr + seg + 1)
    w = tl.load(weight_indices + seg)
    part_end = tl.load(part_offsets + part + 1)
    m_start = seg_start + tl.program_id(1) * BLOCK_M
    n_start = tl.load(part_offsets + part) + n_block * BLOCK_N
    if (m_start < seg_end) & (w >= 0) & (n_start < part_end):
        offs_m = m_start + tl.arange(0, BLOCK_M)
        offs_n = n_start + tl.arange(0, BLOCK_N)
        offs_r = tl.arange(0, BLOCK_R)
        mask_m = offs_m < seg_end
        mask_n = offs_n < part_end  # 不越过本部分的列 / stay inside this part's columns
        mask_r = offs_r < R
        # 第 p 部分只用 xa 的第 p 组 R 列。Part p reads only its own R columns of xa.
        xa = tl.load(XA + offs_m.to(tl.int64)[:, None] * stride_xm + (part * R + offs_r)[None, :] * stride_xr,
                     mask=mask_m[:, None] & mask_r[None, :], other=0.0)  # [BLOCK_M, BLOCK_R]
        b = tl.load(W + w.to(tl.int64) * stride_ws + offs_n[None, :] * stride_wn + offs_r[:, None] * stride_wr,
                    mask=mask_r[:, None] & mask_n[None, :], other=0.0)  # [BLOCK_R, BLOCK_N] = B^T 块 / tile
        acc = tl.dot(xa, b, input_precision=DOT_PRECISION) * tl.load(scalings + w)
        out_ptrs = Out + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :] * stride_on
        mask = mask_m[:, None] & mask_n[None, :]
        old = tl.load(out_ptrs, mask=mask, other=0.0)
        tl.store(out_ptrs, (old.to(tl.float32) + acc).to(Out.dtype.element_ty), mask=mask)


def sgemm_lora_a_fwd(x: torch.Tensor, weights: torch.Tensor, info: LoRABatchInfo) -> torch.Tensor:
    """xa = 分段的 x @ A^T（见 ops.sgemm_lora_a_ref）。Segmented x @ A^T; see the reference."""
    N, K = x.shape
    r_total = weights.shape[1]
    # 无适配器的段的行不写（也不会被读）。Rows of no-adapter segments stay unwritten (and unread).
    xa = torch.empty(N, r_total, dtype=x.dtype, device=x.device)
    block_r = min(64, _pow2_at_least_16(r_total))
    block_k = min(64, _pow2_at_least_16(K))
    grid = (info.num_segments, triton.cdiv(info.max_seg_len, BLOCK_M), triton.cdiv(r_total, block_r))
    _sgemm_lora_a_kernel[grid](
        x, weights, xa, info.seg_indptr_t, info.weight_indices_t, K, r_total,
        x.stride(0), x.stride(1), weights.stride(0), weights.stride(1), weights.stride(2),
        xa.stride(0), xa.stride(1),
        BLOCK_M=BLOCK_M, BLOCK_R=block_r, BLOCK_K=block_k, DOT_PRECISION=_dot_precision(x.dtype),
    )  # fmt: skip
    return xa


def sgemm_lora_b_fwd(xa: torch.Tensor, weights: torch.Tensor, info: LoRABatchInfo, scalings: torch.Tensor,
                     part_offsets: List[int], part_offsets_t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out += 分段的 (xa @ B^T) · scaling，按部分（见 ops.sgemm_lora_b_ref）。In place; returns out."""
    rank = weights.shape[2]
    num_parts = len(part_offsets) - 1
    widest = max(part_offsets[p + 1] - part_offsets[p] for p in range(num_parts))
    block_n = min(64, _pow2_at_least_16(widest))
    n_blocks = triton.cdiv(widest, block_n)
    grid = (info.num_segments, triton.cdiv(info.max_seg_len, BLOCK_M), num_parts * n_blocks)
    _sgemm_lora_b_kernel[grid](
        xa, weights, out, info.seg_indptr_t, info.weight_indices_t, scalings, part_offsets_t, rank, n_blocks,
        xa.stride(0), xa.stride(1), weights.stride(0), weights.stride(1), weights.stride(2),
        out.stride(0), out.stride(1),
        BLOCK_M=BLOCK_M, BLOCK_N=block_n, BLOCK_R=_pow2_at_least_16(rank), DOT_PRECISION=_dot_precision(xa.dtype),
    )  # fmt: skip
    return out
