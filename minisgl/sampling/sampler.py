# ================================================================================
# 🎡 采样器（Sampler）：logits → 下一个 token
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   把模型输出的 logits 变成每个请求的下一个 token id：先惩罚重复，再除以温度，
#   再按 top-k / top-p / min-p 截断，最后抽样（温度为 0 时直接取最大值）。
#   Turns the model's logits into each request's next token: penalties → temperature →
#   top-k / top-p / min-p truncation → draw (argmax when temperature is 0).
#
# 【生活比喻】Metaphor
#   决策轮盘：每个 token 在轮盘上占一格，格子大小由 logits 决定。温度让格子更平均或更悬殊，
#   top-k / top-p / min-p 先把太小的格子涂掉，最后转动轮盘。
#   A roulette wheel sized by logits: temperature evens out or sharpens the slices,
#   top-k / top-p / min-p paint out the thin ones, then the wheel spins.
#
# 【核心架构】Architecture
#   Scheduler ──(logits [bs, V], reqs)──► Sampler.sample（结果留在设备上 / result stays on the device）
#                                          │  （__call__ = sample + 拷回主机 / + the copy to the host）
#                                          ├─ GPU 上的常见批次：sample_fused 一个内核完成（triton_sampler.py）
#                                          │  common GPU batches: one fused kernel (triton_sampler.py)
#                                          ├─ apply_grammar_mask            语法位掩码 / grammar bitmask
#                                          ├─ SamplingBatchInfo.from_reqs   收集每行参数 / per-row knobs
#                                          ├─ apply_penalties                重复惩罚 / penalties
#                                          ├─ temperature → softmax → top_k/top_p/min_p 截断
#                                          └─ 抽样 / draw（每个带 seed 的请求用自己的 Generator）
#
# 【工作流程】Workflow
#   1. 检查 NaN/Inf：坏行交给调度器以 abort 结束请求。Non-finite rows → abort, not a crash.
#      结构化输出的请求再按语法位掩码把不合法的 token 设为 -inf（第 11 章）。Grammar bitmask (ch. 11).
#   2. 惩罚 Penalties（OpenAI 语义 + HF 的 repetition 语义）。
#   3. min_new_tokens 未到时屏蔽 EOS / stop_token_ids。Hide EOS until min_new_tokens.
#   4. 贪心行 argmax；其余行 logits/T → softmax → 截断 → 重新归一化 → 抽样。
#
# 【关键概念】Key Concepts
#   - frequency:  l_i -= f * c_i；presence: l_i -= p * 1[c_i > 0]（c_i = 已生成中 token i 的次数）
#   - repetition (HF/CTRL): 出现过（prompt+输出）的 token，l>0 则 l/r，否则 l*r。
#   - top-p（nucleus）：按概率降序排序，保留累计概率刚好达到 p 的最小集合（至少 1 个）。
#   - min-p：丢弃 prob < min_p * max_prob 的 token。
#   - sample() 不同步主机：重叠调度（第 06 章）靠它在 GPU 算这一步时先去准备下一步。
#     sample() never syncs the host: the overlap scheduler (chapter 06) relies on that.
#   - 这是 CPU/GPU 通用的 torch 实现；需要截断时每步 O(bs·V·log V)（排序），否则不排序。
#     Plain torch on any device; the sort (O(bs·V·log V)) runs only when a row truncates.
#   - GPU 上没有惩罚/截断/语法/seed 的批次走融合内核（Gumbel-max，一遍读 logits，见 triton_sampler.py）。
#     On the GPU, batches without penalties/truncation/grammar/seed take the fused Gumbel-max kernel.
#
# 【使用方式】Usage
#   >>> sampler = Sampler()
#   >>> next_ids, bad_rows = sampler(logits, reqs)   # logits: [bs, V] float32 → CPU ids, list of bool
#   >>> ids, bad = sampler.sample(logits, reqs)       # 都在设备上 / both on the device
#
# 【对应章节】Chapter: docs/zh/09-sampling.md
# ================================================================================
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from minisgl.sampling.sampling_params import SamplingParams
from minisgl.sampling.triton_sampler import HAS_TRITON, sample_fused
from minisgl.utils import to_device


@dataclass
class SamplingBatchInfo:
    """一个 batch 的采样参数张量（每行一个请求）。Per-row sampling tensors of one batch."""

    temperatures: torch.Tensor  # [bs, 1] float32
    top_ps: torch.Tensor  # [bs] float32
    top_ks: torch.Tensor  # [bs] int64（-1 已换成 vocab 大小 / -1 replaced by V）
    min_ps: torch.Tensor  # [bs] float32
    is_greedy: List[bool]
    generators: List[Optional[torch.Generator]]
    need_top_k: bool
    need_top_p: bool
    need_min_p: bool

    @classmethod
    def from_reqs(cls, reqs: Sequence, vocab_size: int, device: torch.device) -> "SamplingBatchInfo":
        ps: List[SamplingParams] = [r.sampling_params for r in reqs]
        top_ks = [vocab_size if p.top_k < 0 else min(p.top_k, vocab_size) for p in ps]
        return cls(
            temperatures=to_device([[max(p.temperature, 1e-6)] for p in ps], torch.float32, device),
            top_ps=to_device([p.top_p for p in ps], torch.float32, device),
            top_ks=to_device(top_ks, torch.int64, device),
            min_ps=to_device([p.min_p for p in ps], torch.float32, device),
            is_greedy=[p.is_greedy for p in ps],
            generators=[getattr(r, "generator", None) for r in reqs],
            need_top_k=any(k < vocab_size for k in top_ks),
            need_top_p=any(p.top_p < 1.0 for p in ps),
            need_min_p=any(p.min_p > 0.0 for p in ps),
        )


def apply_penalties(logits: torch.Tensor, reqs: Sequence) -> torch.Tensor:
    """原地施加惩罚与 min_new_tokens 屏蔽。In-place penalties and the min_new_tokens mask.

    logits: [bs, V] float32. Each req provides sampling_params, output_ids, origin_input_ids,
    and eos_token_ids (a set of ids that end generation).
    """
    # >>> ASSIGNMENT sampler: apply_penalties
    bs, vocab = logits.shape
    for i, req in enumerate(reqs):
        p: SamplingParams = req.sampling_params
        row = logits[i]
        if p.frequency_penalty != 0.0 or p.presence_penalty != 0.0:
            if req.output_ids:
                ids = torch.tensor(req.output_ids, dtype=torch.int64, device=logits.device)
                counts = torch.zeros(vocab, dtype=torch.float32, device=logits.device)
                counts.scatter_add_(0, ids, torch.ones_like(ids, dtype=torch.float32))
                row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).float()
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(
                list(req.origin_input_ids) + list(req.output_ids), dtype=torch.int64, device=logits.device
            ).unique()
            vals = row[seen]
            row[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if len(req.output_ids) < p.min_new_tokens:
            banned = set(req.eos_token_ids) | set(p.stop_token_ids or [])
            banned = [t for t in banned if 0 <= t < vocab]
            if banned:
                row[banned] = float("-inf")
    return logits
    # <<< ASSIGNMENT


def top_k_top_p_min_p_filter(probs: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
    """把被截断的概率置 0 并重新归一化。Zero the truncated probabilities and renormalise.

    probs: [bs, V] (rows sum to 1). Returns probs of the same shape.
    """
    # >>> ASSIGNMENT sampler: top_k_top_p_min_p_filter
    sorted_probs, sorted_idx = probs.sort(dim=-1, descending=True)  # [bs, V]
    vocab = probs.shape[-1]
    keep = torch.ones_like(sorted_probs, dtype=torch.bool)
    if info.need_top_k:
        ranks = torch.arange(vocab, device=probs.device).unsqueeze(0)  # [1, V]
        keep &= ranks < info.top_ks.unsqueeze(1)
    if info.need_top_p:
        # 累计概率“在我之前”已经 >= p 的 token 被丢弃；第一个 token 永远保留。
        # A token is dropped when the mass *before* it already reaches top_p; the first always stays.
        cum_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        keep &= cum_before < info.top_ps.unsqueeze(1)
    if info.need_min_p:
        keep &= sorted_probs >= info.min_ps.unsqueeze(1) * sorted_probs[:, :1]
    keep[:, 0] = True
    sorted_probs = sorted_probs * keep
    filtered = torch.zeros_like(probs).scatter_(1, sorted_idx, sorted_probs)
    return filtered / filtered.sum(dim=-1, keepdim=True)
    # <<< ASSIGNMENT


def apply_grammar_mask(logits: torch.Tensor, reqs: Sequence) -> bool:
    """结构化输出：原地把语法不允许的 token 设为 -inf；返回是否有行被约束。

    Structured output (chapter 11): set the logits of tokens a request's grammar forbids to -inf,
    in place; returns whether any row is constrained. The mask is filled on the CPU while the
    device may still be finishing the forward pass; unconstrained rows keep an all-ones row.
    """
    grammars = [getattr(r, "grammar", None) for r in reqs]
    first = next((g for g in grammars if g is not None), None)
    if first is None:
        return False
    vocab_mask = first.allocate_vocab_mask(logits.shape[-1], len(reqs), logits.device)  # int32 [bs, ceil(V/32)]
    for i, grammar in enumerate(grammars):
        if grammar is not None:
            grammar.fill_vocab_mask(vocab_mask, i)
    first.apply_vocab_mask(logits, first.move_vocab_mask(vocab_mask, logits.device))
    return True


def fused_temperatures(reqs: Sequence, vocab_size: int) -> Optional[List[float]]:
    """这一批能走融合内核吗？能就返回每行温度（0 = 贪心），否则 None。

    Can this batch take the fused kernel (triton_sampler.py)? Returns the per-row temperatures
    (0 = greedy) when no row needs the torch path: no grammar, no penalty, no EOS ban from
    min_new_tokens, no top-k/top-p/min-p truncation, no per-request seed on a sampled row.
    """
    temps = []
    for r in reqs:
        p: SamplingParams = r.sampling_params
        if (getattr(r, "grammar", None) is not None or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0
                or p.repetition_penalty != 1.0 or len(r.output_ids) < p.min_new_tokens):
            return None
        if p.is_greedy:
            temps.append(0.0)
            continue
        if (0 <= p.top_k < vocab_size or p.top_p < 1.0 or p.min_p > 0.0
                or getattr(r, "generator", None) is not None):
            return None
        temps.append(max(p.temperature, 1e-6))
    return temps


class Sampler:
    """logits → next token ids（见文件头）。See the file header.

    use_fused: None = 在 GPU 上自动用融合内核 / the fused kernel on CUDA; True forces it (tests under
    TRITON_INTERPRET=1); False always takes the torch path (A/B benchmarks).
    """

    def __init__(self, use_fused: Optional[bool] = None):
        self.use_fused = use_fused

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, reqs: Sequence) -> Tuple[torch.Tensor, List[bool]]:
        """采样下一个 token，并拷回主机。Sample the next token of each row and copy it to the host.

        Returns (next_token_ids [bs] int64 on CPU, bad_rows: rows whose logits were not finite).
        The scheduler calls sample() instead, so the copy can overlap the next step (chapter 06).
        """
        next_ids, bad = self.sample(logits, reqs)
        # 唯一的一次设备→主机拷贝。The one device-to-host copy of the step.
        both = torch.stack([next_ids, bad.long()]).cpu()
        return both[0], [bool(b) for b in both[1].tolist()]

    @torch.inference_mode()
    def sample(self, logits: torch.Tensor, reqs: Sequence) -> Tuple[torch.Tensor, torch.Tensor]:
        """采样，结果留在设备上（不同步主机）。Sample, leaving the result on the device (no host sync).

        【工作流程】Workflow: NaN check → grammar mask → penalties → greedy/temperature → filter → draw.
        Returns (next_token_ids [bs] int64, bad [bs] bool: rows whose logits were not finite),
        both on logits' device.
        """
        if self.use_fused is not False and (self.use_fused or logits.is_cuda) and HAS_TRITON:
            temps = fused_temperatures(reqs, logits.shape[-1])
            if temps is not None:
                # 常见情形：一个 Triton 内核读一遍 logits 就抽完（triton_sampler.py）。
                # The common case: one Triton kernel, one read of the logits (triton_sampler.py).
                return sample_fused(logits, temps)
        logits = logits.float()
        # 坏行换成 0，让这一批其他请求照常进行；调度器会 abort 坏行的请求（不在这里同步）。
        # Zero the bad rows so the batch proceeds; the scheduler aborts them (no host sync here).
        finite = torch.isfinite(logits).all(dim=-1)  # [bs]
        logits = torch.where(finite.unsqueeze(1), logits, torch.zeros_like(logits))
        # 结构化输出：先按语法把不合法的 token 设为 -inf，惩罚、温度、截断都作用在遮过的 logits 上。
        # Structured output: the grammar hides illegal tokens first; everything below sees masked logits.
        masked = apply_grammar_mask(logits, reqs)
        guard = masked and any(getattr(r, "grammar", None) is not None
                               and len(r.output_ids) < r.sampling_params.min_new_tokens for r in reqs)
        before = logits.clone() if guard else None
        logits = apply_penalties(logits, reqs)
        if guard:
            # min_new_tokens 遮掉 EOS 时，语法可能只剩 EOS：整行都是 -inf。语法优先，这一行回到惩罚之前。
            # min_new_tokens may hide the only token the grammar allows (EOS): the grammar wins.
            dead = torch.isneginf(logits).all(dim=-1, keepdim=True)  # [bs, 1]
            logits = torch.where(dead, before, logits)

        next_ids = logits.argmax(dim=-1)  # [bs]：贪心结果 / greedy result
        if all(r.sampling_params.is_greedy for r in reqs):
            # 全是贪心（基准测试与大多数评测）：不建采样张量，省下每步四次主机→设备拷贝。
            # All greedy (benchmarks, most evals): no sampling tensors, four host→device copies saved per step.
            return next_ids, ~finite
        info = SamplingBatchInfo.from_reqs(reqs, logits.shape[-1], logits.device)
        probs = torch.softmax(logits / info.temperatures, dim=-1)
        if info.need_top_k or info.need_top_p or info.need_min_p:
            # 只在要截断时排序：[bs, V] 的排序是一步里最贵的 kernel 之一（V≈15 万、bs=256 时几毫秒）。
            # Sort only when something is truncated: a [bs, V] sort is among a step's most
            # expensive kernels (milliseconds at V ≈ 152k, bs = 256).
            probs = top_k_top_p_min_p_filter(probs, info)
        # 指数竞赛（exponential race）：argmax(p_i / E_i)，E_i ~ Exp(1)，与按 p 抽样同分布，且整批一次完成。
        # The exponential race argmax(p_i / E_i) samples from p, for the whole batch in one kernel.
        sampled = (probs / torch.empty_like(probs).exponential_()).argmax(dim=-1)
        greedy = to_device(info.is_greedy, torch.bool, logits.device)
        next_ids = torch.where(greedy, next_ids, sampled)
        for i, gen in enumerate(info.generators):
            if gen is not None and not info.is_greedy[i]:
                # 带 seed 的行用自己的发生器重抽：结果与同批的其他请求无关。
                # A seeded row redraws with its own generator, so batch-mates never matter.
                row = probs[i].to(gen.device)
                next_ids[i] = torch.multinomial(row, 1, generator=gen).to(next_ids.device)[0]
        return next_ids, ~finite
