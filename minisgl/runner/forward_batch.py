# ================================================================================
# 📨 一次前向的输入（ForwardBatch / ForwardMode）
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   调度器把一批请求整理成 ForwardBatch：拼接好的 token、位置、每个 token 的 KV 写入槽位
#   (out_cache_loc)、每个请求的前缀长度与新 token 数……模型和注意力后端只看它。
#   The scheduler packs a batch into a ForwardBatch: concatenated tokens, positions, the slot each
#   new token's KV goes to (out_cache_loc), per-request prefix and new lengths. The model and the
#   attention backend see only this.
#
# 【生活比喻】Metaphor
#   厨房的出菜单：领班（Scheduler）把几桌的菜合成一张单，厨房（ModelRunner）照单一次做完。
#   The kitchen ticket: the host merges several tables' orders into one ticket for the kitchen.
#
# 【核心架构】Architecture
#   ScheduleBatch（CPU 上的 Req 对象）──prepare_for_extend/decode──► ForwardBatch（张量）
#                                                                 └─► ModelRunner.forward
#
# 【工作流程】Workflow
#   EXTEND（prefill）：每个请求贡献 extend_seq_len 个新 token，前面 prefix_len 个已在 KV 池。
#   DECODE：每个请求贡献 1 个 token。
#   EXTEND: each request brings extend_seq_len new tokens after prefix_len cached ones.
#   DECODE: each request brings one token.
#
# 【关键概念】Key Concepts
#   - N = sum(extend_seq_lens)（decode 时 N = bs）；没有 padding。No padding: tokens are concatenated.
#   - seq_lens[i] = prefix_len + extend_seq_len = 本步之后请求 i 的 KV 总长度。
#   - 名字与 SGLang 的 forward_batch_info.py 相同（ForwardMode.EXTEND、out_cache_loc ……）。
#
# 【使用方式】Usage
#   由 Scheduler 构造；学习者可以在笔记本里 print(forward_batch) 观察。
#   Built by the Scheduler; print it in a notebook to look inside.
#
# 【对应章节】Chapter: docs/zh/07-model-inference.md
# ================================================================================
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, List, Optional

import torch


class ForwardMode(IntEnum):
    EXTEND = 1  # prefill：新 token 可能接在一段已缓存的前缀之后 / new tokens after a cached prefix
    DECODE = 2  # 每个请求 1 个新 token / one new token per request

    def is_extend(self) -> bool:
        return self == ForwardMode.EXTEND

    def is_decode(self) -> bool:
        return self == ForwardMode.DECODE


@dataclass
class ForwardBatch:
    forward_mode: ForwardMode
    batch_size: int
    input_ids: torch.Tensor  # [N] int64
    positions: torch.Tensor  # [N] int64
    out_cache_loc: torch.Tensor  # [N] int64：新 token 的 KV 写到哪 / where new K/V go
    req_pool_indices: torch.Tensor  # [bs] int64：req_to_token 的行 / rows of req_to_token
    seq_lens: torch.Tensor  # [bs] int64
    seq_lens_cpu: List[int]
    extend_prefix_lens: List[int]  # [bs]（decode 时 = seq_len-1）
    extend_seq_lens: List[int]  # [bs]（decode 时全为 1）
    req_to_token_pool: Any = None
    token_to_kv_pool: Any = None
    attn_backend: Any = None
    # 后端自己的元数据（如 Triton 的 kv_indptr / kv_indices）。Backend-specific metadata.
    attn_metadata: Optional[Any] = field(default=None, repr=False)
    # 多 LoRA：每个请求的适配器名（None = 基座）；没有请求用适配器时整个为 None。
    # lora_info 是 LoRAManager.prepare 算出的分段（minisgl/lora/ops.py 的 LoRABatchInfo）。
    # Multi-LoRA: one adapter name per request (None = the base model), or None when no request
    # uses one; lora_info holds the segments LoRAManager.prepare builds from it.
    lora_ids: Optional[List[Optional[str]]] = None
    lora_info: Optional[Any] = field(default=None, repr=False)
    # decode：共用一段已缓存前缀的请求组（plan_prefix_groups），Triton 后端据此只读一次前缀
    # （cascade_attention.py）；None = 没有这样的组。Decode only: groups of requests sharing a cached
    # prefix, read once by the Triton backend (cascade_attention.py); None when there is none.
    prefix_groups: Optional["PrefixGroups"] = None

    def __repr__(self) -> str:
        return (f"ForwardBatch(mode={self.forward_mode.name}, bs={self.batch_size}, "
                f"tokens={len(self.input_ids)}, prefix_lens={self.extend_prefix_lens}, "
                f"extend_lens={self.extend_seq_lens}, seq_lens={self.seq_lens_cpu}"
                + (f", lora_ids={self.lora_ids}" if self.lora_ids else "") + ")")


# ======== 共享前缀分组（cascade decode 注意力）/ Shared-prefix groups (cascade decode attention) ========
# 前缀短于这个长度时不值得多一次 kernel：省下的字节比一次 launch 还少。
# Below this length the saved bytes do not pay for the extra kernel launch.
CASCADE_MIN_PREFIX_LEN = 256


@dataclass
class PrefixGroups:
    """decode batch 里共用同一段已缓存前缀的请求组。Requests of a decode batch that share a cached prefix.

    members[g]: 组 g 的成员在 batch 里的行号（≥ 2 个）/ batch rows of group g (at least two)
    prefix_lens[g]: 它们共用的前缀长度（token 数；req_to_token 里 [0, L) 的槽位完全相同）
                    the shared prefix length: their req_to_token slots [0, L) are identical
    """

    members: List[List[int]]
    prefix_lens: List[int]

    def __repr__(self) -> str:
        sizes = [len(m) for m in self.members]
        return f"PrefixGroups(groups={len(sizes)}, members={sizes}, prefix_lens={self.prefix_lens})"


def plan_prefix_groups(shared_prefixes: List[Optional[tuple]],
                       min_len: Optional[int] = None) -> Optional[PrefixGroups]:
    """按 (前缀最后一个槽位, 前缀长度) 把请求分组；够长、至少两人的才成组。

    Group the requests of a decode batch by (last slot of the cached prefix, its length), the key
    the scheduler records in Req.shared_prefix when the request gets its req_to_token row. Equal keys
    mean equal slot sequences: a slot sits at one place of the radix tree, and the path to it is
    unique. Groups need at least two members and a prefix of at least min_len tokens.
    """
    min_len = CASCADE_MIN_PREFIX_LEN if min_len is None else min_len
    by_key: dict = {}
    for i, key in enumerate(shared_prefixes):
        if key is not None and key[1] >= min_len:
            by_key.setdefault(key, []).append(i)
    groups = [(rows, key[1]) for key, rows in by_key.items() if len(rows) >= 2]
    if not groups:
        return None
    return PrefixGroups([rows for rows, _ in groups], [n for _, n in groups])
