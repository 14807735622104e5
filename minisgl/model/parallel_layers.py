# ================================================================================
# ✂️ 张量并行的线性层与词嵌入：按列切、按行切、按词表切
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   Megatron 式张量并行的四种积木。每个 rank 只存权重的 1/N，并且知道怎样从完整的检查点张量里
#   切出自己那一份（weight_loader）。tp_size == 1 时它们就是普通的 nn.Linear / nn.Embedding。
#   The four bricks of Megatron-style tensor parallelism. Each rank stores 1/N of a weight and
#   knows how to cut its share from the full checkpoint tensor (weight_loader). With tp_size == 1
#   they are plain nn.Linear / nn.Embedding.
#
# 【生活比喻】Metaphor
#   一张大表格分给几个人算：按列分（ColumnParallel），每人算出结果的几列，不用商量；
#   按行分（RowParallel），每人算出一个部分和，最后大家把数加在一起（all_reduce）。
#   A big table split among several people: split by columns and each computes some output
#   columns on their own; split by rows and each computes a partial sum that is added up at the end.
#
# 【核心架构】Architecture
#   y = x·Wᵀ，W: [out, in]
#   ColumnParallelLinear   W 按输出行切：rank r 持有 W[r·out/N : (r+1)·out/N, :] → y 的一段，无通信
#   RowParallelLinear      W 按输入列切：rank r 持有 W[:, r·in/N : (r+1)·in/N] → 部分和 → all_reduce
#   QKVParallelLinear      q 头均分；KV 头也均分，KV 头少于 rank 数时复制（几个 rank 共用一个 KV 头）
#   VocabParallelEmbedding 词表按行切；不属于本段的 id 查出 0，all_reduce 后每个 token 恰好一份
#   ParallelLMHead         同样的词表分段 → 本地 logits [n, V/N] → all_gather → [n, V]
#
#   注意力块：qkv（列）→ 每个 rank 只算自己的头 → o_proj（行）+ all_reduce
#   MLP 块：  gate_up（列）→ SiLU·mul 在本地 → down（行）+ all_reduce
#   每层只有两次 all_reduce —— 列切之后紧跟行切，中间不需要通信。
#   Two all-reduces per layer: a column split followed by a row split needs nothing in between.
#
# 【工作流程】Workflow
#   1. 构造时按 get_tp_size() / get_tp_rank() 算出本地形状。Local shapes from the TP size and rank.
#   2. loader 对每个检查点张量调用 param.weight_loader(param, full_tensor, shard_id)，切片并拷入。
#   3. forward：本地 GEMM，必要时一次集合通信（minisgl/distributed.py）。
#
# 【关键概念】Key Concepts
#   - KV 复制：Hkv < N 时要求 N % Hkv == 0，rank r 取 KV 头 r·Hkv // N；它的 q 头正好都属于这个 KV 组。
#     KV replication: with Hkv < N (N % Hkv == 0) rank r takes KV head r·Hkv // N, which is the
#     group of all of its query heads.
#   - 偏置：列并行的偏置跟着切；行并行的偏置在 all_reduce 之后只加一次。
#     Column-parallel biases are split with the rows; a row-parallel bias is added once, after the sum.
#   - 词表不能被 N 整除时补零行到 N 的倍数；补出的 logits 在 all_gather 后被切掉。
#
# 【使用方式】Usage
#   >>> qkv = QKVParallelLinear(hidden, head_dim=128, num_heads=16, num_kv_heads=8, bias=False)
#   >>> qkv.num_heads, qkv.num_kv_heads        # 本 rank 的头数 / this rank's heads (8, 4 at N=2)
#
# 【对应章节】Chapter: docs/zh/11-advanced.md
# ================================================================================
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from minisgl.distributed import (
    get_tp_rank, get_tp_size, tensor_model_parallel_all_gather, tensor_model_parallel_all_reduce,
)


def check_tp_shapes(num_heads: int, num_kv_heads: int, intermediate_size: int, tp_size: int) -> None:
    """模型能否切成 tp_size 份？不能就给出清楚的错误。Can the model be split tp_size ways? Clear error if not."""
    if tp_size == 1:
        return
    problems = []
    if num_heads % tp_size:
        problems.append(f"{num_heads} attention heads")
    if num_kv_heads % tp_size and tp_size % num_kv_heads:
        problems.append(f"{num_kv_heads} KV heads (need KV heads % tp == 0 or tp % KV heads == 0)")
    if intermediate_size % tp_size:
        problems.append(f"intermediate size {intermediate_size}")
    if problems:
        raise ValueError(f"--tp-size {tp_size} does not divide this model: {', '.join(problems)}")


def _copy(dest: torch.Tensor, src: torch.Tensor, what: str) -> None:
    if dest.shape != src.shape:
        raise ValueError(f"weight {what} has shape {tuple(src.shape)} for this rank, expected {tuple(dest.shape)}")
    with torch.no_grad():
        dest.copy_(src)


class ColumnParallelLinear(nn.Module):
    """按输出维切分，可由几段拼成（gate_up 为 [I, I]）。Split along the output dim; may stack several parts.

    output_sizes are the *full* sizes of the stacked parts; each rank holds 1/N of every part,
    so rows [0, I/N) of the local weight are this rank's gate rows and [I/N, 2I/N) its up rows.
    """

    def __init__(self, input_size: int, output_sizes: List[int], bias: bool = False):
        super().__init__()
        self.tp_size, self.tp_rank = get_tp_size(), get_tp_rank()
        self.local_sizes = [s // self.tp_size for s in output_sizes]
        self.weight = nn.Parameter(torch.empty(sum(self.local_sizes), input_size))
        self.weight.weight_loader = self.weight_loader
        self.bias = None
        if bias:
            self.bias = nn.Parameter(torch.empty(sum(self.local_sizes)))
            self.bias.weight_loader = self.weight_loader

    def shard_rows(self, shard_id: int):
        """第 shard_id 段在完整张量里的行区间（本 rank 的那份）。The rows of part shard_id this rank owns."""
        n = self.local_sizes[shard_id]
        return self.tp_rank * n, n

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: Optional[int] = None) -> None:
        shard_id = 0 if shard_id is None else shard_id
        start, n = self.shard_rows(shard_id)
        offset = sum(self.local_sizes[:shard_id])
        _copy(param.data.narrow(0, offset, n), loaded.narrow(0, start, n), f"part {shard_id}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)  # [N, in] → [N, out/tp]（本 rank 那几列 / this rank's columns）


class QKVParallelLinear(ColumnParallelLinear):
    """q | k | v 三段的列并行；KV 头不够分时复制。Column-parallel q | k | v; KV heads replicated when too few."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False):
        tp = get_tp_size()
        local_kv = max(1, num_kv_heads // tp)
        # 复制时“完整”的 k/v 段按 local_kv·tp 个头计（多于检查点里的头）。With replication the "full" k/v
        # part counts local_kv·tp heads, more than the checkpoint has: neighbouring ranks read the same rows.
        kv_full = local_kv * tp * head_dim
        super().__init__(hidden_size, [num_heads * head_dim, kv_full, kv_full], bias)
        self.head_dim = head_dim
        self.num_heads = num_heads // tp  # 本 rank 的 q 头 / this rank's query heads
        self.num_kv_heads = local_kv  # 本 rank 的 KV 头 / this rank's KV heads
        self.kv_replicas = max(1, tp // num_kv_heads)  # 几个 rank 共用一个 KV 头 / ranks sharing one KV head

    def shard_rows(self, shard_id: int):
        n = self.local_sizes[shard_id]
        if shard_id == 0:  # q：均分 / split evenly
            return self.tp_rank * n, n
        # k / v：复制时相邻的 kv_replicas 个 rank 取同一个 KV 头。With replication neighbours share a head.
        return (self.tp_rank // self.kv_replicas) * n, n


class RowParallelLinear(nn.Module):
    """按输入维切分：本地 GEMM 得到部分和 → all_reduce → 加偏置。Split the input dim; partial sums are all-reduced."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False):
        super().__init__()
        self.tp_size, self.tp_rank = get_tp_size(), get_tp_rank()
        self.local_in = input_size // self.tp_size
        self.weight = nn.Parameter(torch.empty(output_size, self.local_in))
        self.weight.weight_loader = self.weight_loader
        self.bias = None
        if bias:
            self.bias = nn.Parameter(torch.empty(output_size))  # 完整偏置，只加一次 / full bias, added once

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: Optional[int] = None) -> None:
        _copy(param.data, loaded.narrow(1, self.tp_rank * self.local_in, self.local_in), "columns")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = tensor_model_parallel_all_reduce(F.linear(x, self.weight))  # [N, in/tp] → 部分和 [N, out] → 求和 / summed
        return y if self.bias is None else y + self.bias


class VocabParallelEmbedding(nn.Module):
    """词表按行切；本段之外的 id 查出 0，all_reduce 后拼成完整的嵌入。Vocabulary rows split across ranks."""

    def __init__(self, vocab_size: int, hidden_size: int):
        super().__init__()
        self.tp_size, self.tp_rank = get_tp_size(), get_tp_rank()
        self.vocab_size = vocab_size
        self.local_vocab = -(-vocab_size // self.tp_size)  # 向上取整，末段补零行 / ceil; the last shard is padded
        self.vocab_start = self.tp_rank * self.local_vocab
        self.weight = nn.Parameter(torch.empty(self.local_vocab, hidden_size))
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: Optional[int] = None) -> None:
        rows = loaded[self.vocab_start:self.vocab_start + self.local_vocab]
        with torch.no_grad():
            param.data.zero_()  # 补出的行保持 0 / padded rows stay zero
        _copy(param.data[:rows.shape[0]], rows, "vocabulary rows")

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.vocab_start
        mine = (local >= 0) & (local < self.local_vocab)
        h = F.embedding(local.clamp(0, self.local_vocab - 1), self.weight)  # [N, hidden]
        h = h * mine.unsqueeze(-1).to(h.dtype)  # 别的 rank 的 id → 0 / other ranks' ids → 0
        return tensor_model_parallel_all_reduce(h)


class ParallelLMHead(VocabParallelEmbedding):
    """输出层：每个 rank 算自己那段词表的 logits，再 all_gather。Each rank scores its vocabulary shard."""

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = F.linear(hidden, self.weight)  # [n, V/tp]
        logits = tensor_model_parallel_all_gather(logits)  # [n, V/tp · tp]
        return logits[:, :self.vocab_size]  # 去掉补出的列 / drop the padded columns
