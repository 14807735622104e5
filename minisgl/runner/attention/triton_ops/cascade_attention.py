# ================================================================================
# ⚡ 共享前缀的 decode 注意力（cascade attention）：一组请求共用的前缀只读一次
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   RadixAttention 让 16 个请求共用同一段 2k token 的系统提示的 KV（同一批槽位），省掉了 prefill；
#   可是 decode 时普通内核仍然为每个请求把这 2k 个 token 的 K/V 各读一遍——显存流量没有省。
#   这里把 decode 注意力拆成两级（cascade）：
#     前缀级：一组共享前缀的请求，它们的全部 query 头拼成一个矩阵，和前缀的 K/V 做一次注意力，
#             前缀每个 token 只从显存读一次（一组一次，而不是一个请求一次）；
#     后缀级：每个请求自己的后缀（问题 + 已生成的 token）照常走 decode_attention.py 的 stage 1。
#   两级的局部结果都带 log-sum-exp，最后由 decode 的 stage 2 一起合并——和 split-KV 合并各段是同一个公式。
#   RadixAttention lets 16 requests share the KV of one 2k-token system prompt (the same slots), so
#   the prefill is saved; but at decode time the plain kernel still reads those 2k tokens once per
#   request. Here decode attention runs in two levels (cascade):
#     prefix level: all query heads of a group of requests that share a prefix form one matrix that
#                   attends to the prefix once, so each prefix token is read once per group;
#     suffix level: each request's own tokens go through decode_attention.py's stage 1 as usual.
#   Both levels leave partial outputs with their log-sum-exp, and decode's stage 2 merges them all:
#   the same formula that merges split-KV slices.
#
# 【生活比喻】Metaphor
#   一个旅行团参观博物馆：导游把公共展厅（共享前缀）给全团讲一遍，而不是给每位游客单独讲一遍；
#   之后每人再去看自己感兴趣的小展厅（后缀）。最后每人把两部分的印象按分量（lse）合在一起。
#   A guided tour: the guide explains the shared hall (the prefix) once to the whole group instead of
#   once per visitor; then everyone visits their own small room (the suffix) and weighs both (lse).
#
# 【核心架构】Architecture
#   组 g（由 plan_prefix_groups 在主机上找出：同一个 radix 节点、同一前缀长度 L_g 的请求）
#   group g (found on the host: requests matched to the same radix position, prefix length L_g)
#
#   前缀级 grid = (P, Hkv)，P 个常驻 program（每 SM 两个）领工作表里的 (组 g, 段 s) 项 / P persistent
#   programs per KV head take (group g, slice s) items from a work list (prefix_work_items)
#     item (g, s) in program (p, kvh):
#       Q 行 = 组内每个成员 × 共享 kvh 的 GROUP 个 query 头 → [BLOCK_M, D]（成员 ≤ BLOCK_M / GROUP）
#       for 前缀第 s 段的每块 BLOCK_N 个 token: qk = Q @ K^T [BLOCK_M, BLOCK_N]；在线 softmax；acc += p @ V
#       写 cas_out[b, h, s, :]、cas_lse[b, h, s]（b = 成员在 batch 里的行）
#   后缀级 = decode stage 1，kv_indices 只列 [L_g, seq_len) 的槽位
#   合并   = decode stage 2：各后缀段 + 各前缀段，一起按 lse 合并
#
# 【工作流程】Workflow
#   1. Scheduler：请求第一次拿到 req_to_token 行时记下 shared_prefix = (前缀最后一个槽位, 长度)。
#   2. plan_prefix_groups（forward_batch.py）：按 shared_prefix 分组，够长、≥ 2 个成员才成组。
#   3. TritonAttnBackend：建前缀/后缀两套 CSR 元数据（GPU 上），forward 时先调 cascade_prefix_fwd，
#      再调 decode_attention_fwd(prefix_partials=...)。
#
# 【关键概念】Key Concepts
#   - 为什么 (最后槽位, 长度) 能认出“同一段前缀”：radix 树里每个 KV 槽位只属于树上的一个位置，
#     从根到这个位置的路径唯一，所以最后一个槽位相同 ⇒ 整段槽位序列相同。请求运行期间它锁着这段前缀，
#     槽位不会被驱逐或复用。A slot sits at exactly one place in the radix tree and the path to it is
#     unique, so equal last slots mean equal slot sequences; a running request locks its prefix.
#   - 字节：普通 decode 每步读 Σ_i L_i 个前缀 token；cascade 读 Σ_g L_g。16 人一组时前缀流量降到 1/16。
#     Bytes: plain decode reads Σ_i L_i prefix tokens per step, cascade Σ_g L_g (1/16 for groups of 16).
#   - 算力：前缀级是 [BLOCK_M, D] × [D, BLOCK_N] 的矩阵乘，BLOCK_M 行都是真实的 query，张量核不再空转
#     （普通 decode 的 q 只有 GROUP 行，补齐到 16）。The prefix level is a real matrix multiply.
#   - 合并仍然精确：softmax 可以任意切段再用 lse 合并（decode_attention.py 文件头的公式）。
#     The merge is exact: a softmax can be cut anywhere and merged by lse.
#   - 能录进 CUDA graph：组的数据和工作表每步在主机上写进固定缓冲区（TritonAttnBackend.write_cascade_plan），
#     内核总是启动 P × Hkv 个常驻 program，每个按工作表领活。不录图的话，一步 decode 要在 Python 里
#     启动几百个 kernel（H200 上 bs 256 约 17 ms，比省下的显存时间还多）。
#     CUDA-graph friendly: the groups and the work list are written into fixed buffers on the host
#     every step, and the kernel always launches P x Hkv persistent programs that take work from the
#     list. Eagerly, one decode step launches hundreds of kernels from Python (~17 ms at bs 256 on an
#     H200), more than it saves.
#   - 为什么用常驻 program 和工作表：按最大组数 × 最大段数开 grid 的话，bs 256 的图要开 128 × 8 × 8 个 program，
#     真正有活的不到 1/20；其余的每个也要占一个 SM 槽位、读一次显存才退出。
#     Why persistent programs and a work list: a grid of the most groups x the most slices would be
#     128 x 8 x 8 programs for the bs-256 graph, under 1/20 of them with work; each of the others still
#     takes an SM slot and a memory read before it exits.
#
# 【使用方式】Usage
#   work = torch.tensor(prefix_work_items(splits_per_group), dtype=torch.int32, device=q.device)
#   cascade_prefix_fwd(q, k_buf, v_buf, cas_out, cas_lse, group_indptr, members, prefix_indptr,
#                      prefix_indices, group_splits, work, max_members, sm_scale)
#   decode_attention_fwd(..., prefix_partials=(cas_out, cas_lse, cas_len, cas_splits, BLOCK_N))
#
# 【对应章节】Chapter: docs/zh/08-kv-cache.md
# ================================================================================
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .decode_attention import _dot_precision, _on_interpreter, _sms_of, _tanh


@triton.jit
def _prefix_stage_kernel(
    Q,  # [bs, H, D]
    K_Buffer,  # [pool_size, Hkv, D]
    V_Buffer,  # [pool_size, Hkv, D]
    Cas_Out,  # [bs, H, num_splits, D] float32：前缀各段的局部输出 / partial outputs of the prefix slices
    Cas_Lse,  # [bs, H, num_splits] float32
    group_indptr,  # [n_groups + 1]：组 g 的成员是 members[group_indptr[g] : group_indptr[g+1]]
    members,  # [Σ 成员数]：成员在 batch 里的行号 / batch rows of the members
    prefix_indptr,  # [n_groups + 1]：组 g 的前缀槽位是 prefix_indices[prefix_indptr[g] : ...]
    prefix_indices,  # [Σ L_g]
    group_splits,  # [n_groups] int32：组 g 的前缀切几段 / slices of group g's prefix
    work_items,  # int32 [1 + 2n]：n, g0, s0, g1, s1, …（prefix_work_items）/ the (group, slice) list
    sm_scale,
    stride_qb,
    stride_qh,
    stride_kbuf_s,
    stride_kbuf_h,
    stride_vbuf_s,
    stride_vbuf_h,
    stride_ob,
    stride_oh,
    stride_os,
    stride_lb,
    stride_lh,
    GROUP: tl.constexpr,  # H // Hkv
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,  # ≥ 成员数 × GROUP 的 2 的幂 / power of 2 ≥ members × GROUP
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    LOGIT_CAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # 常驻 program（persistent）：grid 的第 0 维是固定的 program 数，每个 program 从工作表里领第
    # p、p + P、p + 2P… 项，一项是一个 (组, 段)。表里只有真实的项，所以没有 program 空跑。
    # Persistent programs: axis 0 is a fixed number P of programs; program p takes items p, p + P,
    # ... of the work list, one (group, slice) each. The list holds only real items: nobody idles.
    first_item = tl.program_id(0)
    cur_kv_head = tl.program_id(1)
    n_items = tl.load(work_items)

    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    offs_n = tl.arange(0, BLOCK_N)

    for item in range(first_item, n_items, tl.num_programs(0)):
        g = tl.load(work_items + 1 + 2 * item)  # 第几组 / which group
        split_id = tl.load(work_items + 2 + 2 * item)  # 它的第几段 / which of its slices

        m_start = tl.load(group_indptr + g)
        n_members = tl.load(group_indptr + g + 1) - m_start
        p_start = tl.load(prefix_indptr + g)
        prefix_len = tl.load(prefix_indptr + g + 1) - p_start
        num_splits = tl.maximum(tl.load(group_splits + g), 1)

        # ---- Q 的行：第 r 行 = 成员 r // GROUP 的第 r % GROUP 个头 / row r: member r // GROUP, head r % GROUP ----
        member = offs_m // GROUP
        mask_m = member < n_members
        b = tl.load(members + m_start + member, mask=mask_m, other=0)  # 每行属于 batch 的哪一行 / its batch row
        heads = cur_kv_head * GROUP + offs_m % GROUP

        # 段边界与 decode stage 1 的公式相同（stage 2 会复算）/ the same slice formula as stage 1 (stage 2 recomputes it)
        split_len = tl.cdiv(prefix_len, num_splits)
        split_len = tl.cdiv(split_len, BLOCK_N) * BLOCK_N
        split_start = split_len * split_id
        split_end = tl.minimum(split_start + split_len, prefix_len)

        # 向上取整后最后一段可能是空的；stage 2 也跳过它。After the rounding a last slice may be empty; stage 2 skips it too.
        if split_end > split_start:
            q_ptrs = Q + b[:, None] * stride_qb + heads[:, None] * stride_qh + offs_d[None, :]
            q = tl.load(q_ptrs, mask=mask_m[:, None] & mask_d[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]

            e_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
            e_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
            acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
            # 和 decode stage 1 的循环一样，只是 q 有 BLOCK_M 行（全组的 query），K/V 每块只读一次。
            # The loop of decode stage 1, with BLOCK_M query rows (the whole group): each K/V block is read once.
            for start_n in range(split_start, split_end, BLOCK_N):
                offs_tok = start_n + offs_n
                mask_n = offs_tok < split_end
                kv_loc = tl.load(prefix_indices + p_start + offs_tok, mask=mask_n, other=0).to(tl.int64)
                k_ptrs = K_Buffer + kv_loc[None, :] * stride_kbuf_s + cur_kv_head * stride_kbuf_h + offs_d[:, None]
                k = tl.load(k_ptrs, mask=mask_n[None, :] & mask_d[:, None], other=0.0)  # [BLOCK_D, BLOCK_N]
                qk = tl.dot(q, k, input_precision=DOT_PRECISION) * sm_scale  # [BLOCK_M, BLOCK_N]
                if LOGIT_CAP > 0:
                    qk = LOGIT_CAP * _tanh(qk / LOGIT_CAP)
                qk = tl.where(mask_n[None, :], qk, float("-inf"))
                v_ptrs = V_Buffer + kv_loc[:, None] * stride_vbuf_s + cur_kv_head * stride_vbuf_h + offs_d[None, :]
                v = tl.load(v_ptrs, mask=mask_n[:, None] & mask_d[None, :], other=0.0)  # [BLOCK_N, BLOCK_D]
                m_new = tl.maximum(e_max, tl.max(qk, 1))
                alpha = tl.exp(e_max - m_new)
                p = tl.exp(qk - m_new[:, None])
                e_sum = e_sum * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None]
                acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
                e_max = m_new

            # 写回到每个成员自己的 (b, h) 位置；补齐的行不写 / store at each member's own (b, h); padding rows are skipped
            out_ptrs = (Cas_Out + b[:, None] * stride_ob + heads[:, None] * stride_oh + split_id * stride_os
                        + offs_d[None, :])
            tl.store(out_ptrs, acc / e_sum[:, None], mask=mask_m[:, None] & mask_d[None, :])
            lse_ptrs = Cas_Lse + b * stride_lb + heads * stride_lh + split_id
            tl.store(lse_ptrs, e_max + tl.log(e_sum), mask=mask_m)


# ======== 工作表与段数（主机上）/ The work list and the slice count (host side) ========


def prefix_programs(num_kv_heads: int, num_sms: int) -> int:
    """前缀级每个 KV 头开几个常驻 program：每个 SM 两个（一个 program 约 112 KB 共享内存，SM 有 228 KB）。

    Persistent programs per KV head: two per SM (one program holds ~112 KB of shared memory of an
    SM's 228 KB), so P x Hkv programs fill the GPU in one wave.
    """
    return max(1, -(-2 * num_sms // num_kv_heads))


# 每一项的固定开销（读 Q、流水线的头尾、写局部结果），按“一整个前缀的时间”计。H200 上 16 组、33 个 program
# （bench/kernels.py --sections cascade）：最忙的 program 都读 1,024 个 token 时，2 段 0.060 ms、4 段 0.065、8 段 0.072，
# 多一项约多 0.04 个前缀的时间。Fixed cost per item (loading Q, the pipeline's start and end, storing
# the partials), in units of one whole prefix: on the H200 with 16 groups on 33 programs, the same 1,024
# tokens for the busiest program took 0.060 / 0.065 / 0.072 ms as 1 / 2 / 4 items (2, 4, 8 slices).
PREFIX_ITEM_OVERHEAD = 0.05


def choose_prefix_splits(n_groups: int, programs: int, max_splits: int) -> int:
    """每组前缀切几段，使最慢的 program 做得最少。How many slices per group prefix, for the least makespan.

    n_groups × k 项分给 programs 个 program：最忙的做 ceil(n_groups·k / programs) 项，每项是前缀的 1/k 再加固定开销，
    所以耗时 ∝ ceil(n_groups·k / programs) × (1/k + PREFIX_ITEM_OVERHEAD)。例（33 个 program）：16 组 → k = 2
    （32 项，一轮）；17 组 → k = 5（85 项，3 轮，3 × 0.25 = 0.75，而 k = 1 是 1.05、k = 2 是 1.1）；64 组 → k = 1。
    打平时取小的 k（合并更省）。
    n_groups·k items go to `programs` programs; the busiest does ceil(n_groups·k / programs) items of
    1/k of a prefix plus a fixed cost each. E.g. on 33 programs: 16 groups → k = 2 (one round);
    17 groups → k = 5 (3 rounds of 0.25, vs 1.05 for k = 1 and 1.1 for k = 2); 64 groups → k = 1.
    Ties take the smaller k (less to merge).
    """
    if n_groups <= 0:
        return 1

    def cost(k: int) -> float:
        return -(-n_groups * k // programs) * (1 / k + PREFIX_ITEM_OVERHEAD)

    return min(range(1, max_splits + 1), key=lambda k: (cost(k), k))


def prefix_work_items(group_splits) -> list:
    """工作表 [n, g0, s0, g1, s1, …]：每组的每一段一项（内核领取它们）。The work list: one item per (group, slice)."""
    items = [0]
    for g, k in enumerate(group_splits):
        for s in range(k):
            items += (g, s)
    items[0] = (len(items) - 1) // 2
    return items


def cascade_config(q: torch.Tensor) -> dict:
    """前缀级的块大小。解释器里用小块，让短前缀也走过多块。Small blocks under the interpreter.

    GPU：BLOCK_N=64、4 warps、3 stages：K/V 块 2 × 64 × 128 × 2 B × 3 stages = 96 KB 共享内存，加上
    [64, 128] 的 Q，放得下任何 SM 8.0+ 的卡（stage 1 的 192 KB 配置只适合 GROUP 行的小 q）。
    H200 上扫过（bench/kernels.py --sections cascade：16 组 × 16，前缀 2048，BLOCK_N 32/64/128 × warps 4/8 × stages 2/3，
    段数 1/2/4/8）：64/4/3、2 段最快，0.066 ms/层（64/4/2 是 0.068）。
    GPU: BLOCK_N=64, 4 warps, 3 stages (96 KB of shared memory plus a [64, 128] Q); the H200 sweep
    (bench/kernels.py --sections cascade) found it fastest, 0.066 ms per layer with 2 slices.
    """
    if _on_interpreter(q):
        return dict(BLOCK_N=16, num_warps=1, num_stages=1)
    return dict(BLOCK_N=64, num_warps=4, num_stages=3)


def cascade_prefix_fwd(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    cas_out: torch.Tensor,
    cas_lse: torch.Tensor,
    group_indptr: torch.Tensor,
    members: torch.Tensor,
    prefix_indptr: torch.Tensor,
    prefix_indices: torch.Tensor,
    group_splits: torch.Tensor,
    work_items: torch.Tensor,
    max_members: int,
    sm_scale: float,
    logit_cap: float = 0.0,
    config: Optional[dict] = None,
) -> dict:
    """前缀级：每组的共享前缀只读一次，局部结果写进 cas_out / cas_lse。Returns the config used.

    q: [bs, H, D]；cas_out: [bs, H, ≥max(group_splits), D] float32；cas_lse: [bs, H, ≥max(group_splits)] float32
    group_indptr / prefix_indptr: [n_groups + 1]；members: 成员的 batch 行 / batch rows of the members
    group_splits: [n_groups] int32，每组的段数 / slices per group
    work_items: int32，prefix_work_items(每组段数) 的结果（可以更长：只读前 1 + 2n 个）/ the work list
        (may be longer: only its first 1 + 2n entries are read)
    max_members: 一组最多几个成员（决定 BLOCK_M）/ the most members a group may have (sets BLOCK_M)
    n_groups 可以包含成员为 0 的填充组（CUDA graph 用固定的组数；工作表里没有它们）/ may include
    empty padding groups (CUDA graphs use a fixed count; the work list skips them).
    config: 可选，覆盖 BLOCK_N / num_warps / num_stages / num_programs / optional override for tuning
    之后调用 decode_attention_fwd(..., prefix_partials=(cas_out, cas_lse, cas_len, cas_splits, cfg["BLOCK_N"]))，
    cas_splits [bs] 是每个请求所在组的段数（不在组里为 0）/ each request's group's slices (0 outside groups).
    """
    bs, num_heads, head_dim = q.shape
    num_kv_heads = k_buffer.shape[1]
    group = num_heads // num_kv_heads
    n_groups = group_indptr.shape[0] - 1
    cfg = dict(cascade_config(q))
    cfg.update(config or {})
    if n_groups == 0:
        return cfg
    programs = cfg.get("num_programs") or prefix_programs(num_kv_heads, _sms_of(q))
    block_m = max(16, triton.next_power_of_2(max_members * group))
    block_d = max(16, triton.next_power_of_2(head_dim))
    _prefix_stage_kernel[(programs, num_kv_heads)](
        q, k_buffer, v_buffer, cas_out, cas_lse,
        group_indptr, members, prefix_indptr, prefix_indices, group_splits, work_items, sm_scale,
        q.stride(0), q.stride(1),
        k_buffer.stride(0), k_buffer.stride(1),
        v_buffer.stride(0), v_buffer.stride(1),
        cas_out.stride(0), cas_out.stride(1), cas_out.stride(2),
        cas_lse.stride(0), cas_lse.stride(1),
        GROUP=group, HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_D=block_d,
        BLOCK_N=cfg["BLOCK_N"], LOGIT_CAP=float(logit_cap), DOT_PRECISION=_dot_precision(q.dtype),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    return cfg
