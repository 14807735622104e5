# ================================================================================
# ⚡ Extend（prefill）注意力 Triton 内核：缓存前缀 + 新 token 因果注意力
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   extend（也叫 prefill）阶段每个请求有一批新 token，它们要看到：① 前缀缓存 (prefix cache)
#   里已经算好的 K/V（来自 RadixCache 命中，散落在分页池里）；② 本批新 token 自己的 K/V（因果）。
#   本文件用一个 Triton 内核完成两段，两段共用同一个在线 softmax。
#   Extend (prefill) attention: each request's new tokens attend to (1) its cached prefix K/V
#   (a radix-cache hit, scattered in the paged pool) and (2) the new tokens' own K/V, causally.
#   One Triton kernel does both stages under ONE online softmax.
#
# 【生活比喻】Metaphor
#   读一本续写的小说：新来的每一页（query）先把已经读过的旧章节（前缀，全部可见）翻一遍，
#   再读本次新写的几页，但只能读到自己为止（因果掩码 causal mask），不能偷看后文。
#   旧章节放在图书馆各处（分页池），要按目录（kv_indices）去取。
#   Reading a continued novel: each new page (query) first skims all the chapters already read
#   (the prefix, fully visible), then the newly written pages up to itself only (causal mask).
#   The old chapters sit on shelves all over the library (the paged pool), found via the
#   catalogue (kv_indices).
#
# 【核心架构】Architecture
#   grid = (bs, H, cdiv(max_len_extend, BLOCK_M))  —— 每个 program 是 (请求, query 头, M 块)
#
#       请求 b 的新 token（qo_indptr[b] : qo_indptr[b+1]）
#       ├─ M 块 0 ─┼─ M 块 1 ─┼─ M 块 2 ─┤   ← program (b, h, m) 负责 BLOCK_M 个 query
#
#   program (b, h, m):  q 块 [BLOCK_M, BLOCK_D]
#     stage 1 前缀 prefix（无掩码 / no mask）      stage 2 新 token extend（因果 / causal）
#     kv_indices[kv_indptr[b]:kv_indptr[b+1]]     k_extend[qo_indptr[b] + j]
#     ┌─BLOCK_N─┬─BLOCK_N─┬─...─┐                 ┌─BLOCK_N─┬─BLOCK_N─┐  只到本 M 块的末尾
#     │ gather  │ gather  │     │  ───同一个───►   │ ▚       │         │  (j ≤ i 才可见)
#     └─────────┴─────────┴─────┘  m, l, acc     └─────────┴─────────┘
#                                                    写 o_extend[qo_indptr[b] + i, h, :]
#
#     每个 M×N 块：qk = q @ K^T → [BLOCK_M, BLOCK_N]，p = exp(qk − m)，acc += p @ V
#     M 块倒序启动（最重的先开工）/ M tiles launch in reverse order (heaviest first)
#
# 【工作流程】Workflow
#   1. 读本 program 的 q 块（BLOCK_M 个新 token × 一个头）。Load the q tile.
#   2. 前缀：按 kv_indices 从池子里 gather K/V，逐块在线 softmax（全部可见，只屏蔽末块越界列）。
#      Prefix: gather K/V through kv_indices, online softmax block by block (all visible).
#   3. 新 token 中对角线左边的块：连续读取 k_extend/v_extend，完全不需要掩码。
#      New-token blocks left of the diagonal: contiguous reads, no mask at all.
#   4. 对角线上的块：加因果掩码 j ≤ i。Diagonal blocks: causal mask j ≤ i.
#   5. o = acc / l，写回。Normalise and store.
#
# 【关键概念】Key Concepts
#   - 在线 softmax (online softmax)，对每个 K/V 块：
#         m_new = max(m, rowmax(qk))          α = exp(m − m_new)
#         p     = exp(qk − m_new)             l = l·α + rowsum(p)
#         acc   = acc·α + p @ V               结束 / at the end: o = acc / l
#     两个 stage 串起来就是对 [前缀 ‖ 新 token] 做一次完整 softmax。
#     Running both stages through it is one softmax over [prefix ‖ new tokens].
#     实现里以 2 为底：qk 先乘 sm_scale·log2(e)，再用 exp2（GPU 上一条指令）；结果完全相同。
#     The code works in base 2: qk · sm_scale · log2(e), then exp2 (one GPU instruction).
#   - 因果掩码：新 token i（请求内第 i 个新 token）能看到新 token j 当且仅当 j ≤ i；
#     前缀总在它前面，全部可见。M 块只需要循环到自己的末尾 (m+1)·BLOCK_M，后面的全被屏蔽。
#     Causal: new token i sees new token j iff j ≤ i; the whole prefix is before it.
#     An M tile loops only up to its own end — everything later would be masked.
#   - 计算量 (FLOPs)：每个请求 4 × H × D × (Lq·Lp + Lq·(Lq+1)/2)（QK^T 和 PV 各 2 flops/乘加）；
#     例：Lq=1024, Lp=0, H=16, D=128 → 4.3 GFLOP；Lp=1024 时再加 8.6 GFLOP。
#     字节 (bytes)：读 q、o 各一次，K/V 每个 M 块读一遍：≈ (Lq/BLOCK_M) × (Lp+Lq/2) × Hkv·D·2·2 B
#     （同一 KV 头的 GROUP 个 query 头会在 L2 里复用）。Lq 较大时是算力瓶颈 (compute-bound)。
#     Compute-bound for long prompts; K/V tiles are re-read once per M tile (mostly from L2).
#   - 补齐：tl.dot 每维 ≥16，BLOCK_D = D 补齐到 2 的幂（D=96 → 128，多出的列掩码为 0）。
#     Padding: tl.dot dims ≥ 16; BLOCK_D is D rounded up to a power of 2, extra columns masked.
#   - 累加一律 float32；p 在进入第二个 tl.dot 前转回 bf16/fp16（与 FlashAttention 相同）。
#     Accumulate in float32; p is cast back to bf16/fp16 for the second dot, as FlashAttention does.
#
# 【使用方式】Usage
#   from minisgl.runner.attention.triton_ops import extend_attention_fwd
#   extend_attention_fwd(q_ext, k_ext, v_ext, o_ext, k_buf, v_buf,
#                        qo_indptr, kv_indptr, kv_indices, max_len_extend, sm_scale=D ** -0.5)
#
# 【对应章节】Chapter: docs/zh/07-model-inference.md
# ================================================================================

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl


@triton.jit
def _tanh(x):
    # tanh(x) = 2·sigmoid(2x) − 1（各版本 Triton 都有 sigmoid）/ portable across Triton versions
    return 2 * tl.sigmoid(2 * x) - 1


def _dot_precision(dtype: torch.dtype) -> str:
    # float32 输入用精确的 "ieee"（默认 tf32 误差 ~3e-4）；fp16/bf16 时此参数无作用。
    # Exact "ieee" for float32 inputs (tf32 would give ~3e-4 error); no effect for fp16/bf16.
    return "ieee" if dtype == torch.float32 else "tf32"


@triton.jit
def _online_softmax_block(
    q, k, v, m_i, l_i, acc, mask, sm_scale,
    USE_MASK: tl.constexpr, LOGIT_CAP: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """一个 K/V 块的在线 softmax 更新（三处循环共用）。One online-softmax step for one K/V block.

    q: [BLOCK_M, BLOCK_D]，k: [BLOCK_D, BLOCK_N]（已转置 / transposed），v: [BLOCK_N, BLOCK_D]
    m_i, l_i: [BLOCK_M]，acc: [BLOCK_M, BLOCK_D]，全部 float32 / all float32。
    以 2 为底：分数先乘 log2(e)，之后用 exp2（GPU 上 exp2 是一条硬件指令，exp 要多一次乘法）；
    m_i 因此也在“log2 单位”里，最后 acc / l_i 不受影响。
    Base 2: scores are multiplied by log2(e) and exp2 is used (one hardware instruction;
    exp costs an extra multiply); m_i lives in log2 units, acc / l_i is unchanged.
    """
    # tl.dot 用张量核 (tensor core)：[BLOCK_M, D] × [D, BLOCK_N] → float32。
    # 补齐的 D 列两边都是 0，不影响点积 / padded D columns are 0 on both sides.
    qk = tl.dot(q, k, input_precision=DOT_PRECISION)
    # 1.4426950408889634 = log2(e)
    if LOGIT_CAP > 0:  # 编译期分支 / compile-time branch
        qk = LOGIT_CAP * _tanh(qk * sm_scale / LOGIT_CAP) * 1.4426950408889634
    else:
        qk = qk * (sm_scale * 1.4426950408889634)
    if USE_MASK:  # 编译期分支：不需要掩码的块连这条指令都不生成 / no code at all for unmasked blocks
        # 看不见的位置设 -inf → exp2 后为 0 / invisible positions get -inf → 0 after exp2
        qk = tl.where(mask, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    alpha = tl.exp2(m_i - m_new)  # 旧结果的缩放；第一块时 m_i=-inf → 0 / rescale; 0 on the first block
    p = tl.exp2(qk - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    # 先缩放 acc，再让 tl.dot 直接累加进 acc（张量核原地累加，省一次 [M, D] 加法）。
    # Rescale acc, then let tl.dot accumulate into it in place (saves an [M, D] add).
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return m_new, l_i, acc


@triton.jit
def _extend_kernel(
    Q_Extend,  # [N_extend, H, D]
    K_Extend,  # [N_extend, Hkv, D]
    V_Extend,  # [N_extend, Hkv, D]
    O_Extend,  # [N_extend, H, D]
    K_Buffer,  # [pool_size, Hkv, D]
    V_Buffer,  # [pool_size, Hkv, D]
    qo_indptr,  # [bs + 1]
    kv_indptr,  # [bs + 1]（只含前缀 / prefix only）
    kv_indices,  # 前缀槽位 / prefix slots
    sm_scale,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_ot,
    stride_oh,
    stride_kbuf_s,
    stride_kbuf_h,
    stride_vbuf_s,
    stride_vbuf_h,
    GROUP: tl.constexpr,  # H // Hkv
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,  # 每个 program 的 query 行数 / query rows per program
    BLOCK_N: tl.constexpr,  # 每次循环的 key 列数（整除 BLOCK_M）/ key columns per step (divides BLOCK_M)
    LOGIT_CAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # ---- program id：(请求, query 头, M 块) / (request, query head, M tile) ----
    # Triton 把同一个函数启动成很多份 (program，类似 CUDA 的 thread block)；
    # tl.program_id(axis) 是本份在 grid 第 axis 维的坐标。
    # Triton launches many copies (programs, like CUDA thread blocks); program_id is our coordinate.
    cur_batch = tl.program_id(0)
    cur_head = tl.program_id(1)
    # M 块倒序编号：GPU 大致按 program 编号顺序开工，因果注意力里越靠后的 M 块活越多，
    # 让最重的先开工，最后不会剩几个大块拖尾（“最长任务优先”调度）。
    # Reverse the M tiles: the GPU starts programs roughly in id order and later tiles have
    # more work under the causal mask, so start the heaviest first (longest-job-first).
    cur_block_m = tl.num_programs(2) - 1 - tl.program_id(2)
    # GQA：连续 GROUP 个 query 头共享一个 KV 头 / GROUP consecutive query heads share a KV head
    cur_kv_head = cur_head // GROUP

    # ---- 本请求的新 token 范围和前缀范围（两个 CSR）/ the request's two CSR ranges ----
    q_start = tl.load(qo_indptr + cur_batch)
    len_extend = tl.load(qo_indptr + cur_batch + 1) - q_start
    prefix_start = tl.load(kv_indptr + cur_batch)
    len_prefix = tl.load(kv_indptr + cur_batch + 1) - prefix_start

    # offs_m：本块 query 在“本请求新 token”里的位置 i；mask_m 去掉超出本请求的行。
    # tl.arange 的长度必须是编译期的 2 的幂，所以真实大小用“补齐 + 掩码”处理：掩码为 False 处不读不写。
    # offs_m: positions i among this request's new tokens; mask_m drops rows past its end.
    # tl.arange needs a compile-time power of 2, so sizes are padded and masked.
    m_start = cur_block_m * BLOCK_M
    offs_m = m_start + tl.arange(0, BLOCK_M)
    mask_m = offs_m < len_extend
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM  # D=96 补齐到 128，后 32 列屏蔽 / D=96 is padded to 128
    offs_n = tl.arange(0, BLOCK_N)

    # grid 按最长请求启动；短请求多出来的 M 块直接跳过。
    # The grid is sized by the longest request; extra M tiles of shorter ones do nothing.
    if m_start < len_extend:
        # ======== 第1步：读 q 块 / Step 1: load the q tile ========
        # 指针 = 基址 + 行[:, None]·行步长 + 列[None, :] → 二维指针块 / a 2-D block of pointers.
        # 补齐的行（超出请求）读成 0：分数是有限值，算了也不写回，不会产生 NaN。
        # Padded rows read as 0: their scores stay finite and they are never stored.
        q_ptrs = Q_Extend + (q_start + offs_m)[:, None] * stride_qt + cur_head * stride_qh + offs_d[None, :]
        q = tl.load(q_ptrs, mask=mask_m[:, None] & mask_d[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]

        # 在线 softmax 状态，float32（bf16 只有 8 位尾数，上千项累加会丢精度）。
        # Online-softmax state in float32 (bf16's 8 mantissa bits would lose long sums).
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

        # ======== 第2步：前缀，经 kv_indices gather，全部可见 / Step 2: prefix, gathered, all visible ========
        for start_n in range(0, len_prefix, BLOCK_N):
            offs_tok = start_n + offs_n
            mask_n = offs_tok < len_prefix  # 只屏蔽最后一块多出的列 / only the last block's tail
            # 页表查槽位；int64 防止 槽位×步长 在大池子里溢出 int32。
            # Slots from the page table; int64 so slot × stride cannot overflow int32.
            kv_loc = tl.load(kv_indices + prefix_start + offs_tok, mask=mask_n, other=0).to(tl.int64)
            # K 直接读成转置 [BLOCK_D, BLOCK_N]，正好给 q @ K^T / K loaded transposed for q @ K^T
            k_ptrs = K_Buffer + kv_loc[None, :] * stride_kbuf_s + cur_kv_head * stride_kbuf_h + offs_d[:, None]
            k = tl.load(k_ptrs, mask=mask_n[None, :] & mask_d[:, None], other=0.0)
            v_ptrs = V_Buffer + kv_loc[:, None] * stride_vbuf_s + cur_kv_head * stride_vbuf_h + offs_d[None, :]
            v = tl.load(v_ptrs, mask=mask_n[:, None] & mask_d[None, :], other=0.0)  # [BLOCK_N, BLOCK_D]
            # 每块第一列一定有效，所以 m_i 总是有限值 / the first column is always valid: m_i stays finite
            m_i, l_i, acc = _online_softmax_block(
                q, k, v, m_i, l_i, acc, mask_n[None, :], sm_scale,
                USE_MASK=True, LOGIT_CAP=LOGIT_CAP, DOT_PRECISION=DOT_PRECISION,
            )  # fmt: skip

        # ======== 第3步：新 token 中完全在对角线左边的块：无需掩码 / Step 3: blocks left of the diagonal ========
        # 列 j < m_start ≤ 本块每一行 i，所以全部可见；且 j < len_extend，读取也不用掩码。
        # （要求 BLOCK_M 是 BLOCK_N 的倍数，m_start 才落在块边界上。）
        # Columns j < m_start ≤ every row i here: all visible and in range, so no mask at all.
        # (BLOCK_M must be a multiple of BLOCK_N so that m_start is a block boundary.)
        for start_n in range(0, m_start, BLOCK_N):
            offs_tok = start_n + offs_n  # 新 token 里的位置 j / positions j among the new tokens
            k_ptrs = K_Extend + (q_start + offs_tok)[None, :] * stride_kt + cur_kv_head * stride_kh + offs_d[:, None]
            k = tl.load(k_ptrs, mask=mask_d[:, None], other=0.0)  # [BLOCK_D, BLOCK_N]
            v_ptrs = V_Extend + (q_start + offs_tok)[:, None] * stride_vt + cur_kv_head * stride_vh + offs_d[None, :]
            v = tl.load(v_ptrs, mask=mask_d[None, :], other=0.0)  # [BLOCK_N, BLOCK_D]
            m_i, l_i, acc = _online_softmax_block(
                q, k, v, m_i, l_i, acc, None, sm_scale,
                USE_MASK=False, LOGIT_CAP=LOGIT_CAP, DOT_PRECISION=DOT_PRECISION,
            )  # fmt: skip

        # ======== 第4步：对角线上的块：因果掩码 / Step 4: diagonal blocks, causal mask ========
        # 只走到本 M 块的最后一行：更靠后的 key 对本块所有行都不可见。
        # Walk only up to this tile's last row: later keys are invisible to every row here.
        end_n = tl.minimum(m_start + BLOCK_M, len_extend)
        for start_n in range(m_start, end_n, BLOCK_N):
            offs_tok = start_n + offs_n
            mask_n = offs_tok < len_extend
            k_ptrs = K_Extend + (q_start + offs_tok)[None, :] * stride_kt + cur_kv_head * stride_kh + offs_d[:, None]
            k = tl.load(k_ptrs, mask=mask_n[None, :] & mask_d[:, None], other=0.0)
            v_ptrs = V_Extend + (q_start + offs_tok)[:, None] * stride_vt + cur_kv_head * stride_vh + offs_d[None, :]
            v = tl.load(v_ptrs, mask=mask_n[:, None] & mask_d[None, :], other=0.0)
            # 因果：i ≥ j 才可见。某行在某块里可能整行被屏蔽（j 全 > i），但它之前一定见过
            # 至少一列（前缀或 j ≤ i），m_i 已是有限值，exp2(-inf − m_i) = 0，不会出 NaN。
            # Causal: visible iff i ≥ j. A row may be fully masked in a block, but it has already
            # seen a column (prefix, or j ≤ i), so m_i is finite and no NaN appears.
            causal = (offs_m[:, None] >= offs_tok[None, :]) & mask_n[None, :]
            m_i, l_i, acc = _online_softmax_block(
                q, k, v, m_i, l_i, acc, causal, sm_scale,
                USE_MASK=True, LOGIT_CAP=LOGIT_CAP, DOT_PRECISION=DOT_PRECISION,
            )  # fmt: skip

        # ======== 第5步：归一化并写回 / Step 5: normalise and store ========
        o_ptrs = O_Extend + (q_start + offs_m)[:, None] * stride_ot + cur_head * stride_oh + offs_d[None, :]
        tl.store(o_ptrs, (acc / l_i[:, None]).to(O_Extend.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])


def _extend_config(q: torch.Tensor, head_dim: int) -> dict:
    """块大小 / warp 数。Block sizes and warps.

    解释器里用小块（短序列也走多个块）。GPU：在 H100 上用 bench/kernels.py --tune 扫过
    （D=128, bf16）：BLOCK_M=64, BLOCK_N=64, 4 warps, 3 stages 在有/无前缀时都接近最快——
    bs 1 × (1k 新 + 1k 前缀)：0.059 ms ≈ 220 TFLOP/s；bs 8 × 1k：0.13 ms ≈ 263 TFLOP/s。
    Small blocks under the interpreter. GPU values from the H100 sweep in bench/kernels.py
    (1k new + 1k prefix: ~220 TFLOP/s; bs 8 × 1k new: ~263 TFLOP/s).
    """
    if q.device.type == "cpu":
        return dict(BLOCK_M=16, BLOCK_N=16, num_warps=1, num_stages=1)
    if torch.cuda.get_device_capability(q.device)[0] >= 9 and head_dim <= 128:
        return dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3)
    # 共享内存较小的卡（如 A10/L4）或更大的头维度：少一级流水 / smaller shared memory: fewer stages
    return dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2)


def extend_attention_fwd(
    q_extend: torch.Tensor,
    k_extend: torch.Tensor,
    v_extend: torch.Tensor,
    o_extend: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    qo_indptr: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    max_len_extend: int,
    sm_scale: float,
    logit_cap: float = 0.0,
    config: Optional[dict] = None,
) -> torch.Tensor:
    """extend 注意力：缓存前缀（无掩码）+ 新 token（因果）。写 o_extend 并返回。
    Extend attention: cached prefix (no mask) + new tokens (causal). Writes o_extend, returns it.

    q_extend: [N_extend, H, D]；k_extend/v_extend: [N_extend, Hkv, D]；o_extend: [N_extend, H, D]
    qo_indptr: [bs+1] 新 token 范围；kv_indptr/kv_indices: 前缀槽位（可为空）
    max_len_extend: 主机整数，最长请求的新 token 数 / host int, longest request's new tokens
    config: 可选，覆盖 BLOCK_M / BLOCK_N / num_warps / num_stages / optional tuning override
    """
    num_tokens, num_heads, head_dim = q_extend.shape
    num_kv_heads = k_extend.shape[1]
    assert num_heads % num_kv_heads == 0, "GQA needs H % Hkv == 0"
    assert k_buffer.shape[1] == num_kv_heads and k_buffer.shape[2] == head_dim
    for t in (q_extend, k_extend, v_extend, o_extend, k_buffer, v_buffer):
        assert t.stride(-1) == 1, "last dimension must be contiguous"
    bs = qo_indptr.shape[0] - 1
    if bs == 0 or num_tokens == 0 or max_len_extend == 0:
        return o_extend

    cfg = dict(_extend_config(q_extend, head_dim))
    cfg.update(config or {})
    # 第3步的无掩码循环要求 m_start 落在 BLOCK_N 的边界上 / step 3 needs m_start on a block boundary
    assert cfg["BLOCK_M"] % cfg["BLOCK_N"] == 0, "BLOCK_M must be a multiple of BLOCK_N"
    block_d = max(16, triton.next_power_of_2(head_dim))
    grid = (bs, num_heads, triton.cdiv(max_len_extend, cfg["BLOCK_M"]))
    _extend_kernel[grid](
        q_extend, k_extend, v_extend, o_extend, k_buffer, v_buffer,
        qo_indptr, kv_indptr, kv_indices,
        sm_scale,
        q_extend.stride(0), q_extend.stride(1),
        k_extend.stride(0), k_extend.stride(1),
        v_extend.stride(0), v_extend.stride(1),
        o_extend.stride(0), o_extend.stride(1),
        k_buffer.stride(0), k_buffer.stride(1),
        v_buffer.stride(0), v_buffer.stride(1),
        GROUP=num_heads // num_kv_heads, HEAD_DIM=head_dim, BLOCK_D=block_d,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
        LOGIT_CAP=float(logit_cap), DOT_PRECISION=_dot_precision(q_extend.dtype),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    return o_extend
