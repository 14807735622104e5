# ================================================================================
# 🎲 融合采样内核（Triton）：一次读 logits，同时做 NaN 检查、温度、抽样（Gumbel-max）
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   最常见的一批请求（不截断、不惩罚、无语法、无 seed）只需要“按 softmax(logits / T) 抽一个 token”。
#   torch 写法要把 [bs, V] 的 logits 在显存里来回走十来遍（转 float、isfinite、where、除以 T、
#   softmax、指数噪声、相除、argmax……），bs=256、V≈15 万时每步约 1.7 ms（H200 实测）。
#   这里一个内核只读 logits 一遍：每个 program 扫词表的一段，边读边做有限性检查、加 Gumbel 噪声、
#   记下最大值和它的下标；最后在各段之间取最大。贪心行不加噪声，就是 argmax。
#   The common batch (no truncation, no penalties, no grammar, no seed) only needs "draw one token
#   from softmax(logits / T)". In torch that walks the [bs, V] logits through memory a dozen times
#   (float cast, isfinite, where, divide, softmax, noise, divide, argmax): ~1.7 ms per step at
#   bs = 256, V ≈ 152k (measured on an H200). This kernel reads the logits once: each program scans
#   a slice of the vocabulary, checks finiteness, adds Gumbel noise and keeps the best score and
#   its index; a tiny second step picks the best slice. Greedy rows add no noise: plain argmax.
#
# 【生活比喻】Metaphor
#   抽奖箱换成“掷骰子比大小”：每个 token 的分数加上一颗随机骰子（Gumbel 噪声），点数最大的胜出。
#   不用先把每张奖券的面积（概率）算出来、排好，再转轮盘——只要一遍看过所有人报的点数。
#   Instead of sizing every slice of the roulette wheel (probabilities) and spinning it, every token
#   rolls a die (Gumbel noise) added to its score, and the highest total wins: one look at everyone.
#
# 【核心架构】Architecture
#   grid = (bs, n_splits)，每段 SPLIT 个 token / SPLIT tokens per slice
#     program (row, s): for 每块 BLOCK 个 token:
#         x = logits[row, cols] (→ float32)；bad |= !isfinite(x)
#         score = x                       （贪心行 / greedy row）
#               = x / T + Gumbel(u)       （u = tl.rand(seed, row·V + col)）
#         逐位置保留最大 score 与下标 / keep the best score and its column per lane
#     → part_val / part_idx / part_bad [bs, n_splits]
#   torch：argmax over splits → gather → ids [bs]；bad = any over splits
#
# 【工作流程】Workflow
#   1. Sampler.sample 判断这一批能否走融合路径（fusable）；否则走 torch 路径（sampler.py）。
#   2. sample_fused(logits, temperatures, seed) 启动内核，再用两个小 torch 运算合并各段。
#   3. 结果留在设备上，不同步主机（重叠调度需要，第 06 章）。
#
# 【关键概念】Key Concepts
#   - Gumbel-max 技巧：g_i = −log(−log u_i)，u_i ~ U(0,1) 独立，则 argmax_i (x_i / T + g_i) 恰好
#     服从 softmax(x / T)。它就是 sampler.py 里“指数竞赛” argmax(p_i / E_i) 取对数后的样子
#     （E_i = −log u_i，log p_i 与 x_i / T 只差一个对所有 i 相同的常数），所以不需要 softmax。
#     The Gumbel-max trick: argmax(x_i / T + g_i) is an exact draw from softmax(x / T); it is the
#     exponential race of sampler.py after a log (the softmax normaliser is the same for every i).
#   - 与 torch.argmax 相同的并列规则：每条 lane 只在严格更大时替换（保留最早的），lane 之间与段之间
#     都取下标最小的那个 → 贪心结果与 torch 路径逐 token 相同。
#     Ties break like torch.argmax (first index wins), so greedy output equals the torch path's.
#   - 随机数：tl.rand(seed, offset) 是无状态的 Philox；seed 每步从 torch 的 CPU 生成器取一个，
#     所以 torch.manual_seed 之后整次运行可复现。带 seed 的请求仍走 torch 路径（每个请求自己的生成器）。
#     Stateless Philox random numbers; the per-step seed comes from torch's CPU generator, so a run
#     after torch.manual_seed is reproducible. Requests with their own seed take the torch path.
#   - 字节：读 bs·V·sizeof(logits) 一遍（bf16 时 bs=256 约 78 MB，H200 上 ~20 µs），其余可忽略。
#     Bytes: the logits once (~78 MB at bs 256 in bf16: ~20 µs on an H200).
#
# 【使用方式】Usage
#   ids, bad = sample_fused(logits, temperatures=[0.0, 0.7], seed=1234)   # 0.0 = 贪心 / greedy
#   CPU 上只能在 Triton 解释器里跑（TRITON_INTERPRET=1，测试用）/ on CPU only under the interpreter.
#
# 【对应章节】Chapter: docs/zh/09-sampling.md
# ================================================================================
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from minisgl.utils import to_device

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # 只装了 CPU 的 torch：永远走 torch 路径 / CPU-only installs use the torch path
    HAS_TRITON = False


if HAS_TRITON:

    @triton.jit(do_not_specialize=["seed"])
    def _sample_kernel(logits_ptr, stride_row, temps_ptr, seed, V, part_val_ptr, part_idx_ptr, part_bad_ptr,
                       n_splits, ALL_GREEDY: tl.constexpr, SPLIT: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        split = tl.program_id(1)
        if ALL_GREEDY:  # 编译期分支：全是贪心时连温度都不读 / compile-time: no temperatures needed
            greedy = True
            inv_t = 1.0
        else:
            t = tl.load(temps_ptr + row)
            greedy = t == 0.0  # 约定：温度 0 = 贪心 / convention: temperature 0 means greedy
            inv_t = 1.0 / tl.where(greedy, 1.0, t)
        offs = tl.arange(0, BLOCK)
        best_val = tl.full([BLOCK], float("-inf"), dtype=tl.float32)  # 每条 lane 目前最好的分数 / best per lane
        best_idx = tl.zeros([BLOCK], dtype=tl.int32)
        bad = tl.zeros([BLOCK], dtype=tl.int32)
        for start in range(split * SPLIT, split * SPLIT + SPLIT, BLOCK):
            cols = start + offs
            mask = cols < V
            # 掩码外读成 0（有限），不会被误判为坏行 / masked lanes read 0, which is finite
            x = tl.load(logits_ptr + row * stride_row + cols, mask=mask, other=0.0).to(tl.float32)
            bad |= ((x != x) | (tl.abs(x) == float("inf"))).to(tl.int32)  # NaN 或 ±inf / NaN or ±inf
            if ALL_GREEDY:
                score = x
            else:
                u = tl.rand(seed, row * V + cols)  # [0, 1)；u = 0 → g = −inf，永远不会被选中 / never wins
                g = -tl.log(-tl.log(u))  # Gumbel(0, 1)
                score = tl.where(greedy, x, x * inv_t + g)
            score = tl.where(mask, score, float("-inf"))
            take = score > best_val  # 严格大于：并列时保留先出现的 / strict: the first of a tie stays
            best_val = tl.where(take, score, best_val)
            best_idx = tl.where(take, cols, best_idx)
        m = tl.max(best_val, 0)
        # lane 之间：取等于最大值的最小下标（与 torch.argmax 相同）/ across lanes: the smallest index at the max
        idx = tl.min(tl.where(best_val == m, best_idx, V), 0)
        idx = tl.where(idx == V, split * SPLIT, idx)  # 整段都是 −inf/NaN 时给一个合法下标 / keep it in range
        tl.store(part_val_ptr + row * n_splits + split, m)
        tl.store(part_idx_ptr + row * n_splits + split, idx)
        tl.store(part_bad_ptr + row * n_splits + split, tl.max(bad, 0))


def _config(logits: torch.Tensor) -> Tuple[int, int, int]:
    """(SPLIT, BLOCK, num_warps)。GPU：每个 program 扫 8k 个 token（V≈15 万 → 19 段，bs=1 也有 19 个 program）；
    解释器里块小一些，让很小的词表也能走过多段多块。Small blocks under the interpreter."""
    if logits.is_cuda:
        return 8192, 1024, 4
    return 32, 16, 1


def sample_fused(logits: torch.Tensor, temperatures: Sequence[float], seed: Optional[int] = None
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """一次读 logits 完成检查 + 抽样。One pass over the logits: finiteness check and draw.

    logits: [bs, V]（任意浮点 dtype，最后一维连续 / any float dtype, contiguous rows）
    temperatures: 每行一个，0 = 贪心 / one per row, 0 means greedy
    seed: 本步的 Philox 种子；None 时从 torch 的 CPU 生成器取 / from torch's CPU generator when None
    Returns (next_ids [bs] int64, bad [bs] bool: rows whose logits were not all finite), on logits' device.
    """
    assert HAS_TRITON, "sample_fused needs triton"
    assert logits.dim() == 2 and logits.stride(-1) == 1
    bs, vocab = logits.shape
    all_greedy = all(t == 0 for t in temperatures)
    if seed is None:
        seed = 0 if all_greedy else int(torch.randint(0, 2**31 - 1, (1,)))
    split, block, warps = _config(logits)
    n_splits = triton.cdiv(vocab, split)
    dev = logits.device
    part_val = torch.empty(bs, n_splits, dtype=torch.float32, device=dev)
    part_idx = torch.empty(bs, n_splits, dtype=torch.int32, device=dev)
    part_bad = torch.empty(bs, n_splits, dtype=torch.int32, device=dev)
    # 全贪心时不拷温度（内核不读），传 part_val 占位 / all greedy: no copy, part_val is a placeholder pointer
    temps = part_val if all_greedy else to_device(list(temperatures), torch.float32, dev)
    if bs:
        _sample_kernel[(bs, n_splits)](logits, logits.stride(0), temps, seed, vocab, part_val, part_idx, part_bad,
                                       n_splits, ALL_GREEDY=all_greedy, SPLIT=split, BLOCK=block, num_warps=warps)
    # 段之间：torch.argmax 也取第一个最大值，所以仍是“最小下标优先” / across slices: first max wins again
    best = part_val.argmax(dim=1, keepdim=True)  # [bs, 1]
    next_ids = part_idx.gather(1, best).squeeze(1).to(torch.int64)
    return next_ids, part_bad.amax(dim=1) > 0
