# ================================================================================
# 🕸️ 张量并行的通信层：torch.distributed 上的几个集合通信
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   --tp-size N 时，每个 rank（一个调度进程）只持有模型的 1/N。这里把 torch.distributed 包成
#   四个小函数：all_reduce（行并行层之后求和）、all_gather（拼回完整词表的 logits）、
#   broadcast（rank 0 把采样出的 token 发给大家）和 broadcast_pyobj（rank 0 把收到的请求发给大家）。
#   GPU 上张量走 NCCL，Python 对象走一个额外的 gloo 组；CPU 上全部走 gloo——代码路径相同。
#   With --tp-size N each rank (one scheduler process) holds 1/N of the model. This file wraps
#   torch.distributed in four small functions: all_reduce (sum after a row-parallel layer),
#   all_gather (the full vocabulary's logits), broadcast (rank 0's sampled tokens) and
#   broadcast_pyobj (the requests rank 0 received). Tensors go over NCCL on GPUs and Python
#   objects over an extra gloo group; on CPU everything is gloo — the same code path.
#
# 【生活比喻】Metaphor
#   一支乐队分谱演奏：每人只拿自己声部的谱子（权重分片），指挥（rank 0）挥一下棒（broadcast），
#   大家同时翻页；每个小节结束时和一次声（all_reduce），听众听到的是完整的曲子。
#   A band playing from split parts: each player holds only their part (a weight shard); the
#   conductor (rank 0) signals (broadcast) and everyone turns the page together; at the end of each
#   bar the parts are summed (all_reduce) and the audience hears the whole piece.
#
# 【核心架构】Architecture
#   rank 0 ──ZMQ──► 请求 ──broadcast_pyobj──► rank 1..N-1     （每步一次 / once per step）
#   每层：ColumnParallel（无通信）→ RowParallel → all_reduce   （model/parallel_layers.py）
#   LM head：每个 rank 算自己那段词表 → all_gather → [n, V]
#   采样：rank 0 的 next_ids ──broadcast──► 所有 rank（各 rank 的调度状态因此保持一致）
#
# 【工作流程】Workflow
#   1. init_distributed(rank, size, init_method, device)：建进程组（file:// 在私有 ipc 目录里，无需端口）。
#   2. 模型里的并行层调用 tensor_model_parallel_all_reduce / all_gather。
#   3. tp_size == 1 时每个函数都直接返回输入：单卡路径上没有任何通信。
#      With tp_size == 1 every function returns its input: no communication on one device.
#
# 【关键概念】Key Concepts
#   - 所有 rank 跑同一个 Scheduler，输入相同（广播的请求）、采样结果相同（广播的 token）、
#     KV 池大小相同（取各 rank 的最小值）→ 每一步的调度决策逐位一致，无需再同步。
#     Every rank runs the same Scheduler on the same inputs, sampled tokens and pool size, so the
#     scheduling decisions agree step by step without further synchronisation.
#   - 空闲时 rank 1..N-1 阻塞在 broadcast_pyobj 上等 rank 0：超时设得很长（服务器可以闲一整天）。
#     Idle ranks block in broadcast_pyobj waiting for rank 0, so the timeout is very long.
#
# 【使用方式】Usage
#   >>> init_distributed(tp_rank=0, tp_size=2, init_method="file:///tmp/x/dist", device="cpu")
#   >>> y = tensor_model_parallel_all_reduce(x)     # 各 rank 的 x 相加 / sum of every rank's x
#
# 【对应章节】Chapter: docs/zh/11-advanced.md
# ================================================================================
from __future__ import annotations

import datetime
from typing import Any, Optional

import torch
import torch.distributed as dist

# 空闲的服务器可以很久没有请求；rank 1..N-1 一直等在广播上。An idle server may wait a long time.
IDLE_TIMEOUT = datetime.timedelta(days=7)

_TP_RANK, _TP_SIZE = 0, 1
_CPU_GROUP: Optional[Any] = None  # Python 对象走的 gloo 组 / the gloo group that carries Python objects


def init_distributed(tp_rank: int, tp_size: int, init_method: str, device: str) -> None:
    """建 TP 进程组。Create the tensor-parallel process group (a no-op for tp_size == 1)."""
    global _TP_RANK, _TP_SIZE, _CPU_GROUP
    _TP_RANK, _TP_SIZE = tp_rank, tp_size
    if tp_size == 1:
        return
    backend = "nccl" if device == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=init_method, rank=tp_rank, world_size=tp_size, timeout=IDLE_TIMEOUT)
    # NCCL 只搬 GPU 张量；请求（Python 对象）要一个 CPU 上的 gloo 组。NCCL carries GPU tensors only.
    _CPU_GROUP = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT) if backend == "nccl" else dist.group.WORLD


def destroy_distributed() -> None:
    global _TP_RANK, _TP_SIZE, _CPU_GROUP
    if dist.is_initialized():
        dist.destroy_process_group()
    _TP_RANK, _TP_SIZE, _CPU_GROUP = 0, 1, None


def get_tp_rank() -> int:
    return _TP_RANK


def get_tp_size() -> int:
    return _TP_SIZE


def tensor_model_parallel_all_reduce(x: torch.Tensor) -> torch.Tensor:
    """各 rank 的部分和相加（原地）。Sum the partial results of every rank (in place)."""
    if _TP_SIZE == 1:
        return x
    dist.all_reduce(x)
    return x


def tensor_model_parallel_all_gather(x: torch.Tensor) -> torch.Tensor:
    """沿最后一维拼接各 rank 的分片：[n, V/N] → [n, V]。Concatenate the shards along the last dim."""
    if _TP_SIZE == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(_TP_SIZE)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=-1)


def broadcast_tensor(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """rank src 的张量覆盖所有 rank 的同形张量。rank src's tensor overwrites everyone's (same shape)."""
    if _TP_SIZE == 1:
        return x
    x = x.contiguous()
    dist.broadcast(x, src)
    return x


def broadcast_pyobj(obj: Any, src: int = 0) -> Any:
    """rank src 的 Python 对象发给所有 rank（别的 rank 传 None）。Send rank src's object to every rank."""
    if _TP_SIZE == 1:
        return obj
    box = [obj if _TP_RANK == src else None]
    dist.broadcast_object_list(box, src=src, group=_CPU_GROUP)
    return box[0]


def all_reduce_min(value: int) -> int:
    """各 rank 上一个整数的最小值（KV 池容量必须处处相同）。The minimum of one int over the ranks."""
    if _TP_SIZE == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=_CPU_GROUP)
    return int(t.item())
