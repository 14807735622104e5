# ================================================================================
# 🧮 注意力内核的纯 PyTorch 参考实现（float32，逐请求循环）
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   与 decode_attention_fwd / extend_attention_fwd 参数完全相同的“慢而清楚”的版本：
#   逐个请求把 K/V 从分页池里取出来，升到 float32，直接算 softmax(q·Kᵀ·scale)·V。
#   测试拿它当标准答案。工作区参数（attn_logits 等）被忽略。
#   Slow, obvious versions with the same arguments as the Triton kernels: per request,
#   gather K/V from the paged pool, upcast to float32, compute softmax(q·Kᵀ·scale)·V.
#   The tests use them as ground truth. Workspace arguments are ignored.
#
# 【生活比喻】Metaphor
#   批改作业时老师手里的标准答案：一步一步算，不求快，只求对。
#   The teacher's answer key: worked out step by step, slow but certainly right.
#
# 【核心架构】Architecture
#   for b in range(bs):                               (没有 tiling / no tiling)
#       slots = kv_indices[kv_indptr[b]:kv_indptr[b+1]]      ← 查页表 / page-table lookup
#       K, V  = k_buffer[slots], v_buffer[slots]             ← gather → [L, Hkv, D]
#       K, V  = repeat_interleave(GROUP, dim=heads)          ← GQA: 每个 query 头配一个 KV 头
#       o     = softmax(q Kᵀ · scale [+ mask]) V             ← float32
#
# 【工作流程】Workflow
#   decode：每个请求 1 个 query，看全部 KV。extend：Lq 个新 query，
#   看全部前缀 + 新 token 中 j ≤ i 的部分（因果）。
#   Decode: one query per request sees all its KV. Extend: Lq new queries see the whole
#   prefix plus new tokens j ≤ i (causal).
#
# 【关键概念】Key Concepts
#   - 一次完整 softmax：softmax(s)_j = exp(s_j − max s) / Σ_k exp(s_k − max s)，
#     Triton 内核的在线 softmax 和 log-sum-exp 合并必须与之一致（只差舍入）。
#     One full softmax; the kernels' online softmax and lse merge must agree with it.
#   - logit cap：s ← cap · tanh(s / cap)（cap > 0 时）/ when cap > 0.
#   - 字节 (bytes)：每个请求 gather 一次 K/V 并升到 float32（2× 显存），只用于测试。
#     Each request's K/V is gathered and upcast once (2× memory); for tests only.
#
# 【使用方式】Usage
#   from minisgl.runner.attention.triton_ops.reference import decode_attention_ref
#   decode_attention_ref(q, k_buf, v_buf, o, kv_indptr, kv_indices, None, None, None, 0, D ** -0.5)
#
# 【对应章节】Chapter: docs/zh/07-model-inference.md
# ================================================================================

from __future__ import annotations

from typing import Optional

import torch


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float, logit_cap: float,
            mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """q: [Lq, H, D]，k/v: [Lk, Hkv, D] → [Lq, H, D]，全部 float32 / all float32.
    mask: [Lq, Lk] bool，True = 可见 / visible。"""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)  # [Lk, H, D]：GQA 展开 / expand for GQA
    v = v.repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) * sm_scale  # [H, Lq, Lk]
    if logit_cap > 0:
        scores = logit_cap * torch.tanh(scores / logit_cap)
    if mask is not None:
        scores = scores.masked_fill(~mask[None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("hqk,khd->qhd", probs, v)


def decode_attention_ref(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    o: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    attn_logits=None,
    attn_lse=None,
    num_kv_splits=None,
    max_kv_splits: int = 0,
    sm_scale: float = 1.0,
    logit_cap: float = 0.0,
) -> torch.Tensor:
    """decode 注意力参考实现，写 o 并返回。Reference decode attention; writes o, returns it.
    q: [bs, H, D]；o: [bs, H, D]；工作区与段数参数被忽略 / workspaces and splits are ignored."""
    bs = q.shape[0]
    for b in range(bs):
        start, end = int(kv_indptr[b]), int(kv_indptr[b + 1])
        if end == start:  # 空序列 → 0（与内核一致）/ empty sequence → 0, as the kernel does
            o[b] = 0
            continue
        slots = kv_indices[start:end].long()
        k = k_buffer[slots].float()  # [L, Hkv, D]
        v = v_buffer[slots].float()
        out = _attend(q[b : b + 1].float(), k, v, sm_scale, logit_cap)  # [1, H, D]
        o[b] = out[0].to(o.dtype)
    return o


def extend_attention_ref(
    q_extend: torch.Tensor,
    k_extend: torch.Tensor,
    v_extend: torch.Tensor,
    o_extend: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    qo_indptr: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    max_len_extend: int = 0,
    sm_scale: float = 1.0,
    logit_cap: float = 0.0,
) -> torch.Tensor:
    """extend 注意力参考实现，写 o_extend 并返回。Reference extend attention; writes o_extend.
    前缀 K/V 从池子里按 kv_indices 取；新 token 的 K/V 用 k_extend/v_extend。
    Prefix K/V comes from the pool through kv_indices; the new tokens' from k_extend/v_extend."""
    bs = qo_indptr.shape[0] - 1
    for b in range(bs):
        qs, qe = int(qo_indptr[b]), int(qo_indptr[b + 1])
        ps, pe = int(kv_indptr[b]), int(kv_indptr[b + 1])
        lq, lp = qe - qs, pe - ps
        if lq == 0:
            continue
        slots = kv_indices[ps:pe].long()
        k = torch.cat([k_buffer[slots].float(), k_extend[qs:qe].float()], dim=0)  # [Lp+Lq, Hkv, D]
        v = torch.cat([v_buffer[slots].float(), v_extend[qs:qe].float()], dim=0)
        # 新 token i 看见：全部前缀 + 新 token j ≤ i / new token i sees the prefix + new j ≤ i
        i = torch.arange(lq, device=q_extend.device)[:, None]
        j = torch.arange(lp + lq, device=q_extend.device)[None, :]
        mask = j < lp + i + 1  # [Lq, Lp+Lq]
        out = _attend(q_extend[qs:qe].float(), k, v, sm_scale, logit_cap, mask)
        o_extend[qs:qe] = out.to(o_extend.dtype)
    return o_extend
