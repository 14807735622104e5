# ================================================================================
# ✖️ 分段矩阵乘（segmented matmul）：LoRA 的 A 乘与 B 乘，纯 PyTorch 参考实现
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   一个 batch 里的 token 按适配器分成若干段（segment），每段用自己适配器的 A、B：
#       xa[seg]        = x[seg] @ A_w^T                      （sgemm_lora_a，“收缩 shrink”）
#       out[seg, part] += xa[seg, part] @ B_w[part]^T · s_w  （sgemm_lora_b，“扩张 expand”，原地加到基座输出上）
#   这里是逐段循环的 PyTorch 版本：CPU 上引擎就用它，测试拿它当 Triton 内核的标准答案。
#   The tokens of a batch fall into segments, one adapter each; each segment multiplies by its own
#   A and B. This file is the readable loop over segments: the engine uses it on the CPU, and the
#   tests use it as the answer key for the Triton kernels (triton_ops.py, same arguments).
#
# 【生活比喻】Metaphor
#   同一条流水线上给不同客户定制：车身（基座 GEMM）一起冲压，到了加装工位，按客户分组，
#   每组装自己订的小配件（A、B）。没订配件的车（不用适配器的请求）直接通过。
#   Custom orders on one assembly line: every body is stamped together (the base GEMM); at the
#   add-on station the cars are grouped by customer and each group gets its own kit (A, B).
#
# 【核心架构】Architecture
#   token:   0 1 2 3 4 │ 5 │ 6 7 8 │ 9          ← 4 段 / 4 segments
#   seg_indptr = [0, 5, 6, 9, 10]   weight_indices = [1, -1, 0, 1]（槽位；-1 = 无适配器 / no adapter）
#
#   x [N, in] ──sgemm_lora_a──► xa [N, P·R] ──sgemm_lora_b──► out [N, out_total] += …
#                A [S, P·R, in]                 B [S, out_total, R]
#   P = 这一层拼了几个部分（qkv_proj: 3，gate_up_proj: 2，其余 1）；R = 各适配器里最大的秩。
#   P = parts stacked in this layer (qkv: 3, gate_up: 2, else 1); R = the largest rank of any adapter.
#   第 p 部分：xa 的列 [p·R, (p+1)·R) 乘 B 的行 [off_p, off_{p+1})，写进 out 的同一段列。
#   Part p: xa columns [p·R, (p+1)·R) times B rows [off_p, off_{p+1}) go into the same out columns.
#
# 【工作流程】Workflow
#   1. LoRAManager.prepare 每次前向构造一次 LoRABatchInfo（段长、每段的槽位）。Built once per forward.
#   2. 每个 LoRALinear：out = base(x)；xa = sgemm_lora_a(x)；sgemm_lora_b(xa, …, out)。
#
# 【关键概念】Key Concepts
#   - 秩不同的适配器放进同一个 [.., R, ..] 缓冲区：多出的行（A）和列（B）是 0，乘出来也是 0，结果不变。
#     Adapters of smaller rank are zero-padded to R: the padding contributes exactly 0.
#   - 拼接层的增量 = 各部分增量的拼接：Δqkv = [Δq | Δk | Δv]，行序与 qkv_proj 相同。
#     The delta of a stacked layer is the concatenation of the per-part deltas, in qkv_proj's row order.
#   - 计算量：每个 token 2·in·P·R + 2·P·R·out_part 次浮点运算，r=16 时约为基座 GEMM 的 1–3%。
#     FLOPs per token 2·in·P·R + 2·P·R·out_part: about 1-3 % of the base GEMM at r = 16.
#
# 【使用方式】Usage
#   >>> info = LoRABatchInfo.build([5, 1, 3, 1], [1, -1, 0, 1], "cpu")
#   >>> xa = sgemm_lora_a_ref(x, A, info)                       # [10, P·R]
#   >>> sgemm_lora_b_ref(xa, B, info, scalings, [0, 64, 80, 96], out)   # out += Δ，原地 / in place
#
# 【对应章节】Chapter: docs/zh/11-advanced.md
# ================================================================================
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch


@dataclass
class LoRABatchInfo:
    """一次前向的分段信息（CPU 列表给参考实现，设备张量给 Triton）。Segment info of one forward pass."""

    seg_lens: List[int]  # 每段 token 数 / tokens per segment
    weight_indices: List[int]  # 每段的槽位，-1 = 不用适配器 / slot per segment, -1 = none
    seg_indptr_t: torch.Tensor  # [num_segments + 1] int32（设备上 / on the device）
    weight_indices_t: torch.Tensor  # [num_segments] int32
    max_seg_len: int

    @property
    def num_segments(self) -> int:
        return len(self.seg_lens)

    @classmethod
    def build(cls, seg_lens: List[int], weight_indices: List[int], device) -> "LoRABatchInfo":
        from minisgl.utils import to_device

        indptr = [0]
        for n in seg_lens:
            indptr.append(indptr[-1] + n)
        return cls(list(seg_lens), list(weight_indices), to_device(indptr, torch.int32, device),
                   to_device(weight_indices, torch.int32, device), max(seg_lens))


def sgemm_lora_a_ref(x: torch.Tensor, weights: torch.Tensor, info: LoRABatchInfo) -> torch.Tensor:
    """xa[seg] = x[seg] @ A_w^T。x [N, in]，weights [S, P·R, in] → xa [N, P·R]。

    Rows of segments without an adapter are left at 0 (the Triton kernel leaves them unwritten:
    sgemm_lora_b never reads them).
    """
    xa = x.new_zeros(x.shape[0], weights.shape[1])
    start = 0
    for n, w in zip(info.seg_lens, info.weight_indices):
        if w >= 0:
            xa[start : start + n] = x[start : start + n] @ weights[w].T
        start += n
    return xa


def sgemm_lora_b_ref(xa: torch.Tensor, weights: torch.Tensor, info: LoRABatchInfo, scalings: torch.Tensor,
                     part_offsets: List[int], out: torch.Tensor) -> torch.Tensor:
    """out[seg, part] += (xa[seg, part] @ B_w[part]^T) · scaling_w，原地。In place; returns out.

    xa [N, P·R]，weights [S, out_total, R]，scalings [S]，part_offsets [P + 1]（out 的列边界 / column bounds）。
    """
    rank = weights.shape[2]
    start = 0
    for n, w in zip(info.seg_lens, info.weight_indices):
        if w >= 0:
            rows = slice(start, start + n)
            for p in range(len(part_offsets) - 1):
                cols = slice(part_offsets[p], part_offsets[p + 1])
                delta = xa[rows, p * rank : (p + 1) * rank] @ weights[w, cols].T  # [n, out_p]
                out[rows, cols] += delta * scalings[w]
        start += n
    return out


def sgemm_lora_a(x: torch.Tensor, weights: torch.Tensor, info: LoRABatchInfo) -> torch.Tensor:
    """GPU 上走 Triton，CPU 上走参考实现。Triton on CUDA, the reference on the CPU."""
    if x.is_cuda:
        from minisgl.lora import triton_ops

        return triton_ops.sgemm_lora_a_fwd(x, weights, info)
    return sgemm_lora_a_ref(x, weights, info)


def sgemm_lora_b(xa: torch.Tensor, weights: torch.Tensor, info: LoRABatchInfo, scalings: torch.Tensor,
                 part_offsets: List[int], part_offsets_t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """同上；part_offsets_t 是 part_offsets 的设备张量（给 Triton）。part_offsets_t: the device copy."""
    if xa.is_cuda:
        from minisgl.lora import triton_ops

        return triton_ops.sgemm_lora_b_fwd(xa, weights, info, scalings, part_offsets, part_offsets_t, out)
    return sgemm_lora_b_ref(xa, weights, info, scalings, part_offsets, out)
