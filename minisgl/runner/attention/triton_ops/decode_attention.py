# ================================================================================
# ⚡ Decode 注意力 Triton 内核（分页 KV + Split-KV + GQA）
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   decode 阶段每个请求只有 1 个新 query token，要和它全部的历史 K/V 做注意力。
#   本文件用 Triton 手写两个内核：stage 1 把每个请求的 KV 切成若干段（split），
#   各段并行计算“局部注意力 + log-sum-exp”；stage 2 用 log-sum-exp 把各段合并成最终输出。
#   Decode attention: one new query token per request attends to all of its cached K/V.
#   Two hand-written Triton kernels: stage 1 splits each request's KV into slices and
#   computes a partial attention (+ its log-sum-exp) per slice in parallel; stage 2 merges
#   the slices by log-sum-exp into the final output.
#
# 【生活比喻】Metaphor
#   银行点钞：一大箱钞票（一个请求的 KV）交给几个柜员（split）同时点，
#   每人报出“我这叠的小计 + 这叠有多重要（lse）”，最后主管（stage 2）按权重汇总。
#   KV 槽位散落在分页内存池里（操作系统的分页虚拟内存：kv_indices 就是页表）。
#   Counting cash at a bank: a big box of notes (one request's KV) is shared among several
#   tellers (splits) who count at once; each reports a subtotal and its weight (lse); the
#   supervisor (stage 2) adds them up. The slots lie scattered in a paged pool (OS paging:
#   kv_indices is the page table).
#
# 【核心架构】Architecture
#   Stage 1  grid = (bs, num_kv_heads, S)  —— 每个 program 是一个 (请求, KV 头)，做第 s、s+S、s+2S… 段
#            （S = _grid_splits：小批量 = 段数上限；大批量 = 16，cascade 的后缀 = 2；每个 program 做一段或几段）
#            one program per (request, KV head, s) does slices s, s+S, ... (S = _grid_splits)
#
#     program (b, kvh, s)                         kv_indices[kv_indptr[b] : kv_indptr[b+1]]
#     ┌────────────────────────────┐              ├── split 0 ──┼── split 1 ──┼── split 2 ──┤
#     │ q: [BLOCK_H, BLOCK_D]       │                                 ▲
#     │  行 = 共享此 KV 头的 GROUP   │                                 │ 本 program 只走自己的段
#     │  个 query 头（补齐到 ≥16）   │             ┌─BLOCK_N─┬─BLOCK_N─┬─...
#     │ 循环: 每次取 BLOCK_N 个 token│ ──gather──► │ K^T [BLOCK_D, BLOCK_N] │ V [BLOCK_N, BLOCK_D]
#     │ qk = q @ K^T  [BLOCK_H, N]   │             └─────────────────────────
#     │ acc += softmax(qk) @ V       │
#     └────────────────────────────┘
#        写出 attn_logits[b, h, s, :] (局部输出 partial out) 和 attn_lse[b, h, s]
#
#   Stage 2  grid = (bs, num_heads) —— 每个 program 合并一个 (请求, query 头) 的所有段 → o[b, h, :]
#
# 【工作流程】Workflow
#   1. get_num_kv_splits(seq_lens, max_kv_splits)：在 GPU 上（不同步主机）为每个请求选段数：
#      小批量为占满 GPU 而切，大批量为均衡而切（每段 ≤ 512 token，长短不一的批里没有谁拖尾）。
#      Pick the number of splits per request on the device (no host sync): to fill the GPU at
#      small batch, for balance at large batch (slices of <= 512 tokens, so no long request lags).
#   2. _decode_stage1_kernel：每段做在线 softmax（online softmax），写局部输出和 lse。
#      Each slice runs an online softmax and writes its partial output and lse.
#   3. _decode_stage2_kernel：按 log-sum-exp 合并各段，写 o。
#      Merge the slices by log-sum-exp into o.
#
# 【关键概念】Key Concepts
#   - 在线 softmax (online softmax)，对每个 K/V 块 (qk: 本块分数)：
#         m_new = max(m, max_j qk_j)
#         α     = exp(m - m_new)                  # 旧结果的缩放 / rescale of what we had
#         p_j   = exp(qk_j - m_new)
#         l     = l·α + Σ_j p_j                   # 分母 / denominator
#         acc   = acc·α + Σ_j p_j · v_j           # 未归一化的输出 / unnormalised output
#     结束时 out = acc / l，lse = m + log(l)。
#   - log-sum-exp 合并 (merge)，段 s 有 (out_s, lse_s)：
#         M   = max_s lse_s
#         w_s = exp(lse_s - M)
#         o   = Σ_s w_s · out_s / Σ_s w_s
#     这是精确的：把所有段拼起来算一次 softmax 得到同一个结果（只差浮点舍入）。
#     Exact: it equals one softmax over the whole sequence, up to rounding.
#   - GQA：H 个 query 头共享 Hkv 个 KV 头，GROUP = H / Hkv。一个 program 处理一个 KV 头
#     对应的全部 GROUP 个 query 头，K/V 只从显存读一次；q 拼成 [GROUP, D] 的小矩阵用 tl.dot。
#     tl.dot 在 GPU 上要求每一维 ≥ 16，所以 GROUP 行补齐 (pad) 到 BLOCK_H = max(16, 2^k)。
#     One program serves all GROUP query heads of one KV head, so K/V is read from memory
#     once; tl.dot needs every dimension ≥ 16 on the GPU, hence the padding to BLOCK_H.
#   - 字节估算 (bytes moved, decode 是访存瓶颈 memory-bound)：
#         K+V: bs × L × Hkv × D × 2 × sizeof(dtype)   (+ kv_indices 4–8 B/token)
#         partials: bs × H × splits × (D+1) × 4 B × 2 (写+读)，很小 / small
#     例 Qwen3-0.6B 一层：bs=64, L=2048, Hkv=8, D=128, bf16 → 64·2048·8·128·2·2 B ≈ 537 MB，
#     H100 拷贝带宽 ~3 TB/s（读+写）→ 下限约 0.18 ms/层；实测 0.199 ms（2.7 TB/s，拷贝的 90%）；
#     bs 256 × 4k：1.44 ms，2.98 TB/s ≈ 拷贝带宽的 99%（H100, 2026-11, bench/kernels.py）。
#     E.g. one Qwen3-0.6B layer at bs 64, L 2048: ≈ 537 MB → ≥ 0.18 ms at ~3 TB/s;
#     measured 0.199 ms (90% of copy); bs 256 × 4k: 1.44 ms, 99% of copy (H100, bench/kernels.py).
#   - 累加一律用 float32：bf16 只有 8 位尾数，几千项相加会丢精度；exp 的动态范围也要 fp32。
#     Accumulate in float32: bf16 has 8 mantissa bits and would lose thousands of small terms.
#
# 【使用方式】Usage
#   from minisgl.runner.attention.triton_ops import decode_attention_fwd, get_num_kv_splits
#   num_kv_splits = get_num_kv_splits(seq_lens, max_kv_splits=16, num_kv_heads=Hkv)
#   attn_logits = torch.empty(bs, H, 16, D, dtype=torch.float32, device="cuda")
#   attn_lse = torch.empty(bs, H, 16, dtype=torch.float32, device="cuda")
#   decode_attention_fwd(q, k_buf, v_buf, o, kv_indptr, kv_indices, attn_logits, attn_lse,
#                        num_kv_splits, 16, sm_scale=D ** -0.5)
#
# 【对应章节】Chapter: docs/zh/07-model-inference.md
# ================================================================================

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import triton
import triton.language as tl


# ======== 小工具 / Helpers ========


@triton.jit
def _tanh(x):
    # tanh(x) = 2·sigmoid(2x) − 1：用 sigmoid 写，不依赖各版本 Triton 是否提供 tanh。
    # Written with sigmoid so it works on every Triton version.
    return 2 * tl.sigmoid(2 * x) - 1


def _dot_precision(dtype: torch.dtype) -> str:
    # float32 输入时 tl.dot 默认走 tf32（只有 10 位尾数，误差 ~3e-4），这里要求 "ieee" 精确计算；
    # fp16/bf16 输入时这个参数不起作用。
    # For float32 inputs tl.dot defaults to tf32 (~3e-4 error); ask for exact "ieee" math.
    # The setting does nothing for fp16/bf16 inputs.
    return "ieee" if dtype == torch.float32 else "tf32"


def _on_interpreter(t: torch.Tensor) -> bool:
    # CPU 张量只能在 Triton 解释器（TRITON_INTERPRET=1）下运行内核。
    # CPU tensors can only run under the Triton interpreter.
    return t.device.type == "cpu"


@functools.lru_cache(maxsize=8)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _sms_of(t: torch.Tensor) -> int:
    """t 所在 GPU 的 SM 数；解释器里当作 1。The SM count of t's GPU; 1 under the interpreter."""
    return 1 if _on_interpreter(t) else _num_sms(t.device.index or 0)


# ======== 段数选择 / Choosing the number of splits ========


def fills_gpu(bs: int, num_kv_heads: int, num_sms: int) -> bool:
    """bs × Hkv 个 (请求, KV 头) 已能铺满约 2 × SM 数？Do bs x Hkv programs already cover ~2x the SMs?"""
    return bs * num_kv_heads >= 2 * num_sms


def get_num_kv_splits(
    seq_lens: torch.Tensor,
    max_kv_splits: int,
    num_kv_heads: int = 8,
    min_tokens_per_split: int = 256,
    num_sms: Optional[int] = None,
    balance_tokens: int = 512,
) -> torch.Tensor:
    """为每个请求选 KV 段数（全在设备上算，无主机同步，可被 CUDA graph 录制）。
    Choose the number of KV splits per request, on the device (no host sync; CUDA-graph safe).

    【工作流程】Workflow
      小批量（bs × Hkv 铺不满约 2 × SM 数）：为了占满 GPU 而切。
        每段至少 min_tokens_per_split 个 token（短序列不值得切），段数不超过铺满所需的份数。
        Small batch: split to fill the GPU, at least min_tokens_per_split tokens per split and no more
        splits than filling the GPU needs.
      大批量（已经铺满）：为了**均衡**而切。长短不一的批里，一个 2k token 的请求是一个 100 token 请求的 20 倍活，
        最后一波 program 要等它；把每个请求切成至多 balance_tokens 个 token 的段，每个 program 的活差不多大，
        GPU 上就没有谁在等最后一个长 program。H200 上实测（bench/kernels.py --sections mixed，长度 [100, 2048]）：
        bs 256 0.312 → 0.289 ms/层，bs 48 0.108 → 0.078 ms/层（连同下面 _decode_config 的小块配置）。
        Large batch (already full): split for **balance**. In a mixed batch a 2k-token request is 20x the
        work of a 100-token one and the last wave of programs waits for it; cutting every request into
        pieces of at most balance_tokens makes the programs about equal. Measured on an H200 (bench/kernels.py
        --sections mixed, lengths in [100, 2048]): bs 256 0.312 → 0.289 ms per layer, bs 48 0.108 → 0.078
        (together with the small-block config of _decode_config).
      两种情况都夹在 [1, max_kv_splits]。Both are clamped to [1, max_kv_splits].

    seq_lens: [bs] int（每个请求的 KV 长度 / KV length per request）→ [bs] int32
    """
    bs = seq_lens.shape[0]
    if num_sms is None:
        num_sms = _sms_of(seq_lens)
    lens = seq_lens.to(torch.int64)
    if fills_gpu(bs, num_kv_heads, num_sms):  # bs 是主机上已知的整数，不需同步 / bs is a host int: no sync
        return ((lens + balance_tokens - 1) // balance_tokens).clamp(min=1, max=max_kv_splits).to(torch.int32)
    upper = _occupancy_splits(bs, num_kv_heads, num_sms, max_kv_splits)
    by_len = (lens + min_tokens_per_split - 1) // min_tokens_per_split  # 设备端 / on device
    return by_len.clamp(min=1, max=upper).to(torch.int32)


def _occupancy_splits(bs: int, num_kv_heads: int, num_sms: int, max_kv_splits: int) -> int:
    """主机端整数：铺满 GPU 还需要每个 (请求, KV 头) 切几段。Host int: splits per (request, KV head) to fill the GPU."""
    return max(1, min(max_kv_splits, math.ceil(2 * num_sms / max(1, bs * num_kv_heads))))


# cascade 的后缀级在大批量时 grid 的第三维只开 2 个 program，每个循环做隔一段的那些段（见 _grid_splits）。
# At large batch a cascade suffix launches 2 programs along the slice axis, each looping over every
# other slice (see _grid_splits).
CASCADE_SUFFIX_GRID_SPLITS = 2


def _grid_splits(bs: int, num_kv_heads: int, max_kv_splits: int, num_sms: int, cascade_suffix: bool = False) -> int:
    """stage 1 的 grid 第三维开几个 program（内核循环做其余的段，所以任何值都对）。

    How many programs stage 1's grid has along its slice axis. The kernel loops over the slices
    it is given, so any value is correct; the choice is only about speed.

    【三种情况】Three cases
      - 小批量：段数的上限就是 _occupancy_splits（主机已知的整数），开这么多正好，每段一个 program。
        Small batch: the bound on the slice count is _occupancy_splits, a host int: exactly one program per slice.
      - 大批量、普通 decode：段数在设备上按长度算（get_num_kv_splits，每段 ≤ 512 token），主机不知道，开上限
        max_kv_splits：每段仍是一个 program，长请求的各段并行（第五次会话为均衡量过，见 get_num_kv_splits）。
        在唯一一次只开 2 个（一个 program 轮流做几段）的离线基准里，bs 33–128 的 decode 步比第六次会话慢 6–10 %
        （另一台机器，主机也更慢，所以不全是它的错；但没有证据说 2 对普通 decode 更好），所以普通 decode 保持原样。
        Large batch, plain decode: the counts are chosen on the device, unknown to the host, so launch
        the bound: still one program per slice, a long request's slices in parallel. In the one offline
        run with 2 (one program doing several slices in turn) the decode steps at bs 33-128 were 6-10 %
        slower than in the sixth session (another machine with a slower host, so not all of it is the
        grid's doing; but nothing showed 2 to be better for plain decode), so plain decode stays as it was.
      - 大批量、cascade 的后缀（cascade_suffix）：后缀很短（问题 + 已生成的 token，一两段），按上限 16 开的话
        bs 256 有 15/16 的 program 读完三个数就退出，3 万个空 program 排在 2 千个有活的后面。开
        CASCADE_SUFFIX_GRID_SPLITS 个：H200 上这一级从 0.112 降到 0.093 ms/层（bench/kernels.py --sections cascade；
        开 1 个或 4 个都是 0.11，为什么恰好 2 最快还没弄清）。
        Large batch, a cascade suffix: suffixes are short (one or two slices), so a grid of 16 would
        leave 15 of 16 programs of a bs-256 step reading three numbers and exiting, 30 thousand empty
        programs queued behind 2 thousand real ones. CASCADE_SUFFIX_GRID_SPLITS took that level from
        0.112 to 0.093 ms per layer on the H200 (1 and 4 both gave 0.11; why 2 is best is not yet
        understood).
    """
    if not fills_gpu(bs, num_kv_heads, num_sms):
        return _occupancy_splits(bs, num_kv_heads, num_sms, max_kv_splits)
    return min(max_kv_splits, CASCADE_SUFFIX_GRID_SPLITS) if cascade_suffix else max_kv_splits


# ======== Stage 1：每个 (请求, KV 头, 段) 一个 program ========
# ======== Stage 1: one program per (request, KV head, split) ========


@triton.jit
def _decode_stage1_kernel(
    Q,  # [bs, H, D]
    K_Buffer,  # [pool_size, Hkv, D]
    V_Buffer,  # [pool_size, Hkv, D]
    Att_Out,  # [bs, H, max_kv_splits, D] float32：各段的局部输出 / partial outputs
    Att_Lse,  # [bs, H, max_kv_splits] float32：各段的 log-sum-exp
    kv_indptr,  # [bs + 1]
    kv_indices,  # [total_kv_tokens]
    num_kv_splits,  # [bs] int32
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
    HEAD_DIM: tl.constexpr,  # D（真实头维度 / the real head dim）
    BLOCK_H: tl.constexpr,  # GROUP 补齐到 ≥16 的 2 的幂 / GROUP padded to a power of 2 ≥ 16
    BLOCK_D: tl.constexpr,  # D 补齐到 2 的幂 / D padded to a power of 2
    BLOCK_N: tl.constexpr,  # 每次循环处理的 KV token 数 / KV tokens per loop step
    LOGIT_CAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # ---- program id：我是谁？ / Who am I? ----
    # Triton 会把同一个函数启动成很多份（program，类似 CUDA 的 thread block），
    # tl.program_id(axis) 就是本份在启动网格 grid 里第 axis 维的坐标。
    # Triton launches many copies of this function (programs, like CUDA thread blocks);
    # tl.program_id(axis) is this copy's coordinate along grid axis `axis`.
    cur_batch = tl.program_id(0)  # 第几个请求 / which request
    cur_kv_head = tl.program_id(1)  # 第几个 KV 头 / which KV head
    # 第三维不是“第几段”，而是“从第几段开始、每隔几段做一段”：grid 的段数可以少于请求真正切的段数。
    # The third axis is not "which slice" but "start at this slice, then every num_programs(2)-th":
    # the grid may have fewer slice programs than a request has slices (see _grid_splits).
    first_split = tl.program_id(2)
    split_step = tl.num_programs(2)

    # ---- 向量化的下标：Triton 一次操作一整块 / index vectors: Triton works on whole blocks ----
    # tl.arange(0, N) 得到 [0, 1, ..., N-1]；N 必须是编译期常量且是 2 的幂，
    # 所以真实大小不是 2 的幂时要“补齐 + 掩码 (mask)”：mask 为 False 的位置不读不写。
    # tl.arange needs a compile-time power of 2, so real sizes are padded and masked:
    # where the mask is False nothing is loaded or stored.
    offs_h = tl.arange(0, BLOCK_H)
    mask_h = offs_h < GROUP  # 只有前 GROUP 行是真实的 query 头 / only GROUP real heads
    cur_heads = cur_kv_head * GROUP + offs_h  # 共享本 KV 头的 query 头编号 / query heads of this KV head
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM  # D=96 时补齐到 128，后 32 列被屏蔽 / D=96 is padded to 128
    offs_n = tl.arange(0, BLOCK_N)

    # ---- 这个请求的 KV 在 kv_indices 的哪一段（CSR）/ this request's range in kv_indices ----
    kv_start = tl.load(kv_indptr + cur_batch)
    seq_len = tl.load(kv_indptr + cur_batch + 1) - kv_start
    kv_splits = tl.maximum(tl.load(num_kv_splits + cur_batch), 1)

    # 段长向上取整到 BLOCK_N 的倍数：除了最后一块，每块都是满的。stage 2 用完全相同的公式。
    # Slice length rounded up to a multiple of BLOCK_N (full blocks except the last);
    # stage 2 recomputes exactly the same formula.
    split_len = tl.cdiv(seq_len, kv_splits)
    split_len = tl.cdiv(split_len, BLOCK_N) * BLOCK_N

    # 向上取整之后，末尾的段可能是空的（stage 2 会跳过它们）：非空的段只有 cdiv(seq_len, split_len) 个。
    # After the rounding the last slices may be empty (stage 2 skips them): only cdiv(seq_len, split_len)
    # are not. seq_len = 0 (a padded row) has none.
    nonempty_splits = tl.cdiv(seq_len, tl.maximum(split_len, 1))

    # 本 program 做第 first_split、first_split + split_step、… 段；一段都没有的 program 直接结束。
    # This program does slices first_split, first_split + split_step, ...; one with none ends at once.
    for split_id in range(first_split, nonempty_splits, split_step):
        # ---- 本段负责 [split_start, split_end) / this slice is [split_start, split_end) ----
        split_start = split_len * split_id
        split_end = tl.minimum(split_start + split_len, seq_len)
        # ---- 读 q：[BLOCK_H, BLOCK_D]，补齐的行/列读成 0 / load q, padding reads as 0 ----
        # 指针算术：基址 + 行下标[:, None]·行步长 + 列下标[None, :] → 一个二维指针块。
        # Pointer arithmetic: base + rows[:, None]·row_stride + cols[None, :] = a 2-D block of pointers.
        q_ptrs = Q + cur_batch * stride_qb + cur_heads[:, None] * stride_qh + offs_d[None, :]
        q = tl.load(q_ptrs, mask=mask_h[:, None] & mask_d[None, :], other=0.0)

        # ---- 在线 softmax 的状态，全部 float32 / online-softmax state, all float32 ----
        e_max = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)  # m：目前见过的最大分数
        e_sum = tl.zeros([BLOCK_H], dtype=tl.float32)  # l：softmax 分母
        acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)  # Σ p·v（未归一化）

        # >>> ASSIGNMENT decode_attention: stage1_loop
        for start_n in range(split_start, split_end, BLOCK_N):
            offs_tok = start_n + offs_n  # 本块 token 在请求内的位置 / positions in the request
            mask_n = offs_tok < split_end  # 最后一块可能不满 / the last block may be partial

            # ---- 分页：先查页表拿到槽位号，再按槽位去池子里取 K/V（gather）----
            # ---- Paging: look up the slots, then gather K/V from the pool by slot ----
            # 转成 int64：槽位号 × 步长在大池子里会超过 2^31。
            # Cast to int64: slot × stride overflows int32 in a large pool.
            kv_loc = tl.load(kv_indices + kv_start + offs_tok, mask=mask_n, other=0).to(tl.int64)

            # K 直接按转置的形状 [BLOCK_D, BLOCK_N] 读进来，省得再转置：q @ K^T。
            # Load K already transposed, [BLOCK_D, BLOCK_N], ready for q @ K^T.
            k_ptrs = K_Buffer + kv_loc[None, :] * stride_kbuf_s + cur_kv_head * stride_kbuf_h + offs_d[:, None]
            k = tl.load(k_ptrs, mask=mask_n[None, :] & mask_d[:, None], other=0.0)

            # tl.dot 用张量核 (tensor core) 做 [BLOCK_H, D] × [D, BLOCK_N]，结果是 float32。
            # 补齐的 q 行是 0 → 分数 0，算了也不写回；补齐的 D 列两边都是 0 → 不影响点积。
            # tl.dot runs on tensor cores and returns float32. Padded q rows are 0 (computed,
            # never stored); padded D columns are 0 on both sides, so the dot is unchanged.
            qk = tl.dot(q, k, input_precision=DOT_PRECISION) * sm_scale  # [BLOCK_H, BLOCK_N]
            if LOGIT_CAP > 0:  # 编译期分支：为 0 时整段不生成 / compile-time branch
                qk = LOGIT_CAP * _tanh(qk / LOGIT_CAP)
            # 越界 token 的分数设为 -inf → exp 后为 0，不参与 softmax。
            # Out-of-range tokens get -inf → exp gives 0: they take no part in the softmax.
            qk = tl.where(mask_n[None, :], qk, float("-inf"))

            v_ptrs = V_Buffer + kv_loc[:, None] * stride_vbuf_s + cur_kv_head * stride_vbuf_h + offs_d[None, :]
            v = tl.load(v_ptrs, mask=mask_n[:, None] & mask_d[None, :], other=0.0)  # [BLOCK_N, BLOCK_D]

            # ---- 在线 softmax 更新（公式见文件头）/ online-softmax update (see header) ----
            # 每块第一个 token 一定有效，所以 m_new 有限，不会出现 exp(-inf - -inf) = NaN。
            # The first token of every block is valid, so m_new is finite (no -inf - -inf).
            m_new = tl.maximum(e_max, tl.max(qk, 1))
            alpha = tl.exp(e_max - m_new)  # 第一块时 e_max=-inf → alpha=0 / 0 on the first block
            p = tl.exp(qk - m_new[:, None])
            e_sum = e_sum * alpha + tl.sum(p, 1)
            # p 转成 V 的类型（bf16）再进张量核；先缩放 acc，再让 tl.dot 直接累加进 float32 的 acc。
            # p enters the tensor core in V's dtype; rescale acc, then tl.dot accumulates into it.
            acc = acc * alpha[:, None]
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
            e_max = m_new
        # <<< ASSIGNMENT

        # ---- 写出本段的局部输出（已归一化）和 lse / store the normalised partial output and lse ----
        # 只写真实的 GROUP 行（mask_h）和真实的 D 列（mask_d）。
        # Only the real GROUP rows and the real D columns are written.
        out_ptrs = Att_Out + cur_batch * stride_ob + cur_heads[:, None] * stride_oh + split_id * stride_os + offs_d[None, :]
        tl.store(out_ptrs, acc / e_sum[:, None], mask=mask_h[:, None] & mask_d[None, :])
        lse_ptrs = Att_Lse + cur_batch * stride_lb + cur_heads * stride_lh + split_id
        tl.store(lse_ptrs, e_max + tl.log(e_sum), mask=mask_h)


# ======== Stage 2：每个 (请求, query 头) 一个 program，按 lse 合并各段 ========
# ======== Stage 2: one program per (request, query head), merge the slices ========


@triton.jit
def _decode_stage2_kernel(
    Att_Out,  # [bs, H, max_kv_splits, D] float32
    Att_Lse,  # [bs, H, max_kv_splits] float32
    O,  # [bs, H, D]
    kv_indptr,
    num_kv_splits,
    stride_ob,
    stride_oh,
    stride_os,
    stride_lb,
    stride_lh,
    stride_o_b,
    stride_o_h,
    Cas_Out,  # [bs, H, cas_splits, D] float32：共享前缀各段（cascade_attention.py）/ shared-prefix slices
    Cas_Lse,  # [bs, H, cas_splits] float32
    cas_len,  # [bs] int32：共享前缀长度，0 = 不是 cascade 成员 / shared prefix length, 0 = none
    cas_splits,  # [bs] int32：本请求所在组的前缀切了几段 / slices of this request's group prefix
    stride_cb,
    stride_ch,
    stride_cs,
    stride_clb,
    stride_clh,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,  # 必须与 stage 1 相同，用来复算段边界 / same as stage 1
    HAS_CASCADE: tl.constexpr,  # 编译期：没有共享前缀时这段代码不生成 / compile-time: absent without cascade
    CAS_BLOCK_N: tl.constexpr,  # 前缀级的 BLOCK_N，复算它的段边界 / the prefix level's BLOCK_N
):
    cur_batch = tl.program_id(0)
    cur_head = tl.program_id(1)

    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM

    # 复算 stage 1 的段边界：空段 stage 1 没写，这里也不能读。
    # Recompute stage 1's slice bounds: an empty slice was never written, so skip it.
    kv_start = tl.load(kv_indptr + cur_batch)
    seq_len = tl.load(kv_indptr + cur_batch + 1) - kv_start
    kv_splits = tl.maximum(tl.load(num_kv_splits + cur_batch), 1)
    split_len = tl.cdiv(seq_len, kv_splits)
    split_len = tl.cdiv(split_len, BLOCK_N) * BLOCK_N

    # log-sum-exp 合并，和在线 softmax 是同一个套路，只是“一块”换成了“一段”。
    # The log-sum-exp merge: the online softmax again, one slice at a time.
    e_max = float("-inf")  # M：目前见过的最大 lse
    e_sum = 0.0  # Σ w_s
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)  # Σ w_s · out_s
    base_out = Att_Out + cur_batch * stride_ob + cur_head * stride_oh
    base_lse = Att_Lse + cur_batch * stride_lb + cur_head * stride_lh
    # >>> ASSIGNMENT decode_attention: stage2_merge
    for split_id in range(0, kv_splits):
        split_start = split_len * split_id
        split_end = tl.minimum(split_start + split_len, seq_len)
        if split_end > split_start:
            part = tl.load(base_out + split_id * stride_os + offs_d, mask=mask_d, other=0.0)
            lse = tl.load(base_lse + split_id)
            m_new = tl.maximum(lse, e_max)
            alpha = tl.exp(e_max - m_new)  # 旧和的缩放 / rescale the old sums
            w = tl.exp(lse - m_new)  # 本段权重 / this slice's weight
            acc = acc * alpha + w * part
            e_sum = e_sum * alpha + w
            e_max = m_new
    # <<< ASSIGNMENT

    if HAS_CASCADE:
        # 共享前缀的局部结果（cascade_attention.py）按同一个公式并进来：它们只是“另外几段”。
        # The shared-prefix partials (cascade_attention.py) merge by the same formula: just more slices.
        prefix_len = tl.load(cas_len + cur_batch)
        n_cas = tl.maximum(tl.load(cas_splits + cur_batch), 1)
        c_len = tl.cdiv(prefix_len, n_cas)
        c_len = tl.cdiv(c_len, CAS_BLOCK_N) * CAS_BLOCK_N
        base_c = Cas_Out + cur_batch * stride_cb + cur_head * stride_ch
        base_cl = Cas_Lse + cur_batch * stride_clb + cur_head * stride_clh
        for split_id in range(0, n_cas):
            if split_id * c_len < prefix_len:  # prefix_len = 0（不在组里）时一段也没有 / none outside groups  # 空段前缀级没写 / empty slices were never written
                part = tl.load(base_c + split_id * stride_cs + offs_d, mask=mask_d, other=0.0)
                lse = tl.load(base_cl + split_id)
                m_new = tl.maximum(lse, e_max)
                alpha = tl.exp(e_max - m_new)
                w = tl.exp(lse - m_new)
                acc = acc * alpha + w * part
                e_sum = e_sum * alpha + w
                e_max = m_new

    # 只要有一段，e_sum ≥ 1（lse 最大的那段贡献 exp(0) = 1），所以下限 1e-30 平时不起作用；
    # seq_len == 0（例如 CUDA graph 的填充请求）时没有任何段：acc = 0 → 输出 0，而不是 0/0 = NaN。
    # With any slice, e_sum ≥ 1 (the largest lse adds exp(0) = 1), so the floor is inert;
    # with seq_len == 0 (e.g. a padded request) acc = 0 and we write 0 instead of 0/0.
    out = acc / tl.maximum(e_sum, 1e-30)
    tl.store(O + cur_batch * stride_o_b + cur_head * stride_o_h + offs_d, out.to(O.dtype.element_ty), mask=mask_d)


# ======== 启动参数 / Launch configuration ========


def _decode_config(q: torch.Tensor, head_dim: int, num_kv_heads: int) -> dict:
    """块大小和 warp 数。Block sizes and warps.

    解释器里用小块，让很短的序列也能走过多个块（测试到在线 softmax 的重缩放）。
    GPU 上按批大小分两种（H200 上 bench/kernels.py --sections mixed 扫过 BLOCK_N 32/64/128 × warps 2/4/8 × stages 2/3/4）：
      - 大批量（fills_gpu）：BLOCK_N=64、2 warps、2 stages。共享内存 2 × 2 × 64 × 128 × 2 B = 64 KB，一个 SM 能同时放 3 个
        program：一个 program 在收尾（写结果、等最后一块）时，别的 program 还在读显存。段被切成 ≤ 512 token 之后，
        program 多而短，这一点最要紧。
      - 小批量：BLOCK_N=128、4 warps、3 stages（H100 上扫出来的；192 KB，只在 Hopper 且 D ≤ 128 时用）：program 少，
        每个都要尽量深地预取。
    Small blocks under the interpreter. On the GPU two configs by batch size (H200 sweep, bench/kernels.py
    --sections mixed): large batches use BLOCK_N=64, 2 warps, 2 stages (64 KB of shared memory, three programs
    per SM, so one program's epilogue overlaps another's loads: what matters once slices are <= 512 tokens);
    small batches keep BLOCK_N=128, 4 warps, 3 stages (192 KB: Hopper and D <= 128 only), few deep programs.
    """
    if _on_interpreter(q):
        return dict(BLOCK_N=16, num_warps=1, num_stages=1)
    if fills_gpu(q.shape[0], num_kv_heads, _num_sms(q.device.index or 0)):
        return dict(BLOCK_N=64, num_warps=2, num_stages=2)
    if torch.cuda.get_device_capability(q.device)[0] >= 9 and head_dim <= 128:
        return dict(BLOCK_N=128, num_warps=4, num_stages=3)
    return dict(BLOCK_N=64, num_warps=4, num_stages=2)


# ======== 对外接口 / Public entry point ========


def decode_attention_fwd(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    o: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    attn_logits: torch.Tensor,
    attn_lse: torch.Tensor,
    num_kv_splits: torch.Tensor,
    max_kv_splits: int,
    sm_scale: float,
    logit_cap: float = 0.0,
    config: Optional[dict] = None,
    prefix_partials: Optional[tuple] = None,
) -> torch.Tensor:
    """分页 KV 上的 decode 注意力（split-KV 两阶段）。结果写进 o 并返回 o。
    Decode attention over a paged KV pool (two-stage split-KV). Writes o and returns it.

    q: [bs, H, D]；k_buffer/v_buffer: [pool_size, Hkv, D]；o: [bs, H, D]
    kv_indptr: [bs+1]，kv_indices: 槽位号 / slot ids（int32 或 int64）
    attn_logits: [bs, H, ≥max_kv_splits, D] float32，attn_lse: [bs, H, ≥max_kv_splits] float32（工作区 / workspace）
    num_kv_splits: [bs] int32，每个值在 [1, max_kv_splits] / each in [1, max_kv_splits]
    config: 可选，覆盖 BLOCK_N / num_warps / num_stages / grid_splits（基准扫参用）/ optional override for tuning
    prefix_partials: 可选 (cas_out, cas_lse, cas_len [bs], cas_splits [bs], cas_block_n)：cascade_prefix_fwd 已算好的
        共享前缀部分；此时 kv_indptr/kv_indices 只列每个请求前缀之后的槽位，stage 2 把两部分合并。
        Optional shared-prefix partials from cascade_prefix_fwd; kv_indptr/kv_indices then list only
        the slots after each request's shared prefix, and stage 2 merges both.

    【工作流程】Workflow
      1. stage 1：grid (bs, Hkv, _grid_splits(...))，每段写局部输出 + lse。
      2. stage 2：grid (bs, H)，按 lse 合并写 o。
    """
    bs, num_heads, head_dim = q.shape
    num_kv_heads = k_buffer.shape[1]
    assert num_heads % num_kv_heads == 0, "GQA needs H % Hkv == 0"
    assert k_buffer.shape[2] == head_dim and v_buffer.shape[2] == head_dim
    assert attn_logits.dtype == torch.float32 and attn_lse.dtype == torch.float32
    assert attn_logits.shape[2] >= max_kv_splits and attn_lse.shape[2] >= max_kv_splits
    # 内核假设最后一维连续（步长 1）/ the kernels assume a contiguous last dimension
    for t in (q, k_buffer, v_buffer, o, attn_logits, attn_lse):
        assert t.stride(-1) == 1, "last dimension must be contiguous"
    if bs == 0:
        return o

    group = num_heads // num_kv_heads
    cfg = dict(_decode_config(q, head_dim, num_kv_heads))
    cfg.update(config or {})
    block_h = max(16, triton.next_power_of_2(group))  # tl.dot 每维至少 16 / ≥16 for tl.dot
    block_d = max(16, triton.next_power_of_2(head_dim))

    grid_splits = cfg.get("grid_splits") or _grid_splits(bs, num_kv_heads, max_kv_splits, _sms_of(q),
                                                         cascade_suffix=prefix_partials is not None)
    grid1 = (bs, num_kv_heads, grid_splits)
    _decode_stage1_kernel[grid1](
        q, k_buffer, v_buffer, attn_logits, attn_lse,
        kv_indptr, kv_indices, num_kv_splits,
        sm_scale,
        q.stride(0), q.stride(1),
        k_buffer.stride(0), k_buffer.stride(1),
        v_buffer.stride(0), v_buffer.stride(1),
        attn_logits.stride(0), attn_logits.stride(1), attn_logits.stride(2),
        attn_lse.stride(0), attn_lse.stride(1),
        GROUP=group, HEAD_DIM=head_dim, BLOCK_H=block_h, BLOCK_D=block_d,
        BLOCK_N=cfg["BLOCK_N"], LOGIT_CAP=float(logit_cap),
        DOT_PRECISION=_dot_precision(q.dtype),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip

    if prefix_partials is not None:
        cas_out, cas_lse, cas_len, cas_splits, cas_block_n = prefix_partials
    else:  # 占位指针，HAS_CASCADE=False 时内核不读 / placeholders, never read without cascade
        cas_out, cas_lse, cas_len, cas_splits, cas_block_n = attn_logits, attn_lse, num_kv_splits, num_kv_splits, 16
    grid2 = (bs, num_heads)
    _decode_stage2_kernel[grid2](
        attn_logits, attn_lse, o, kv_indptr, num_kv_splits,
        attn_logits.stride(0), attn_logits.stride(1), attn_logits.stride(2),
        attn_lse.stride(0), attn_lse.stride(1),
        o.stride(0), o.stride(1),
        cas_out, cas_lse, cas_len, cas_splits,
        cas_out.stride(0), cas_out.stride(1), cas_out.stride(2), cas_lse.stride(0), cas_lse.stride(1),
        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_N=cfg["BLOCK_N"],
        HAS_CASCADE=prefix_partials is not None, CAS_BLOCK_N=cas_block_n,
        num_warps=4 if not _on_interpreter(q) else 1, num_stages=2 if not _on_interpreter(q) else 1,
    )  # fmt: skip
    return o
