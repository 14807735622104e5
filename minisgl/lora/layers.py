# ================================================================================
# 🪢 LoRALinear：给加载好的线性层套一层“基座 + LoRA 增量”
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   LoRALinear(base) 包住模型里已有的一个线性层（qkv_proj、o_proj、gate_up_proj、down_proj），
#   forward(x) = base(x) + 分段 LoRA 增量。模型代码一行不改：LoRAManager 在加载之后按属性名把层换掉。
#   LoRALinear(base) wraps one existing linear layer of the loaded model; forward(x) = base(x) +
#   the segmented LoRA delta. The model code is untouched: LoRAManager swaps the attribute after loading.
#
# 【生活比喻】Metaphor
#   给水龙头加装一个过滤器：水管（基座层）不动，出水口多一道工序；不需要过滤的那一杯（不用适配器的
#   请求）照样从同一个龙头接水。
#   A filter screwed onto a tap: the pipe stays, the outlet gains a step; a glass that needs no
#   filter (a request without an adapter) still fills at the same tap.
#
# 【核心架构】Architecture
#   layer.self_attn.qkv_proj ──替换 replaced by──► LoRALinear
#                                                   ├─ base: 原来的层 / the original layer
#                                                   ├─ lora_a: A 缓冲区的一层视图 [S, P·R, in]
#                                                   ├─ lora_b: B 缓冲区的一层视图 [S, out, R]
#                                                   └─ manager.batch_info（本次前向的分段 / this pass's segments）
#
# 【工作流程】Workflow
#   1. out = base(x)                          一次 GEMM 算整个 batch / one GEMM for the whole batch
#   2. 本 batch 没人用适配器 → 直接返回 out。No adapter in the batch → return out.
#   3. xa = sgemm_lora_a(x)；sgemm_lora_b(xa, …, out) 把 Δ 原地加进 out。Add the delta in place.
#
# 【关键概念】Key Concepts
#   - 只在 tp_size == 1 时可用：基座层的 forward 返回完整输出，Δ 的列与它一一对应。
#     tp_size == 1 only: the base layer returns the full output, column for column with the delta.
#   - 缓冲区属于 LoRAManager；这里只存视图（不是 nn.Parameter，不进 state_dict）。
#     The buffers belong to the manager; these are views (no parameters, not in the state_dict).
#
# 【使用方式】Usage
#   >>> attn.qkv_proj = LoRALinear(attn.qkv_proj, manager, layer_id=0, kind="qkv_proj")
#   由 LoRAManager.install(model) 统一完成。LoRAManager.install(model) does this for every layer.
#
# 【对应章节】Chapter: docs/zh/11-advanced.md
# ================================================================================
from __future__ import annotations

import torch
from torch import nn

from minisgl.lora import ops


class LoRALinear(nn.Module):
    """base(x) + 分段 LoRA 增量（见文件头）。base(x) plus the segmented LoRA delta; see the header."""

    def __init__(self, base: nn.Module, manager, layer_id: int, kind: str):
        super().__init__()
        self.base = base
        self.manager = manager  # 普通属性，不是子模块 / a plain attribute, not a submodule
        self.layer_id, self.kind = layer_id, kind
        self.lora_a = manager.lora_a[kind][layer_id]  # [S, P·R, in]
        self.lora_b = manager.lora_b[kind][layer_id]  # [S, out_total, R]
        self.part_offsets = manager.part_offsets[kind]  # [P + 1]：out 里每部分的列边界 / column bounds
        self.part_offsets_t = manager.part_offsets_t[kind]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)  # [N, out_total]
        info = self.manager.batch_info
        if info is None:  # 本 batch 没有请求用适配器 / nobody in this batch uses an adapter
            return out
        xa = ops.sgemm_lora_a(x, self.lora_a, info)  # [N, P·R]
        return ops.sgemm_lora_b(xa, self.lora_b, info, self.manager.scalings, self.part_offsets,
                                self.part_offsets_t, out)

    def extra_repr(self) -> str:
        return f"layer={self.layer_id}, kind={self.kind}, slots={self.lora_a.shape[0]}, rank={self.lora_b.shape[2]}"
