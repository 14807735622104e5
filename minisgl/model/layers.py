# ================================================================================
# 🧱 模型的基础层：RMSNorm、RoPE、SwiGLU MLP
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   Llama / Qwen2 / Qwen3 共用的积木：RMSNorm、旋转位置编码（RoPE，含 Llama 3 的频率缩放）
#   和 SwiGLU 前馈层。数值与 Hugging Face 的实现逐位一致（float32 下可逐 token 对齐）。
#   The bricks shared by Llama / Qwen2 / Qwen3: RMSNorm, rotary position embedding (with Llama 3
#   frequency scaling) and the SwiGLU MLP, numerically equal to Hugging Face's.
#
# 【生活比喻】Metaphor
#   乐高积木：三种模型是用同一盒积木搭出的不同房子，差别只在几块特殊零件（bias、q/k norm）。
#   Lego bricks: the three models are different houses from one box; only a few parts differ.
#
# 【核心架构】Architecture
#   RMSNorm(x) = x / sqrt(mean(x²) + eps) * weight           （在 float32 里算 / computed in float32）
#   GPU 上三者都是 fused_ops.py 里的单个 Triton kernel；CPU 上是等价的 torch 代码。
#   RoPE(q, pos) = q * cos(pos·θ) + rotate_half(q) * sin(pos·θ)   （NeoX 风格：前后两半配对）
#   MLP(x) = down( silu(gate(x)) * up(x) )
#
# 【工作流程】Workflow
#   1. RotaryEmbedding 启动时预计算 cos/sin 表 [max_pos, head_dim]。Precompute the tables once.
#   2. 前向时按 positions 查表（每个 token 自己的位置，batch 里长短不一也没关系）。
#      Look up by each token's own position: ragged batches need no padding.
#
# 【关键概念】Key Concepts
#   - inv_freq_i = θ^(-2i/d)，i = 0…d/2-1；Llama 3 对低频（长波长）维度除以 factor，
#     中间频段平滑插值，高频不变。Llama 3 divides low frequencies by `factor`, blends the middle band.
#
# 【使用方式】Usage
#   >>> rope = RotaryEmbedding(head_dim=64, max_position=2048, base=1e4)
#   >>> q, k = rope(positions, q, k)      # q: [N, H, D], k: [N, Hkv, D]
#
# 【对应章节】Chapter: docs/zh/07-model-inference.md
# ================================================================================
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from minisgl.model import fused_ops
from minisgl.model.parallel_layers import ColumnParallelLinear, RowParallelLinear


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None):
        """residual 给出时先做 residual += x 再归一化，返回 (out, residual)。

        With a residual: residual ← residual + x, then normalise; returns (out, residual).
        One fused kernel on the GPU (fused_ops.py), plain torch on the CPU.
        """
        return fused_ops.rmsnorm(x, self.weight, self.eps, residual)


def llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    """Llama 3.x 的 RoPE 频率缩放。Llama 3.x frequency scaling (rope_type "llama3")."""
    factor = scaling["factor"]
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_ctx = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    # 长波长（低频）维度：整体除以 factor；短波长：不变；中间：按波长平滑过渡。
    # Long wavelengths are divided by factor, short ones kept, the band between blended.
    smooth = (old_ctx / wavelen - low) / (high - low)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    out = torch.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
    is_mid = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
    return torch.where(is_mid, blended, out)


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_position: int, base: float, scaling: Optional[dict] = None):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        if scaling is not None:
            inv_freq = llama3_inv_freq(inv_freq, scaling)
        t = torch.arange(max_position, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)  # [max_pos, D/2]
        emb = torch.cat([freqs, freqs], dim=-1)  # [max_pos, D]
        self.register_buffer("cos_cache", emb.cos(), persistent=False)
        self.register_buffer("sin_cache", emb.sin(), persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        # positions: [N]; q: [N, H, D]; k: [N, Hkv, D]。GPU 上原地修改 / in place on the GPU
        return fused_ops.rope_(q, k, positions, self.cos_cache, self.sin_cache)


class MLP(nn.Module):
    """SwiGLU。gate_proj 与 up_proj 合并成一个 gate_up_proj：一次 GEMM 读一次 x。

    gate_proj and up_proj are stacked into one gate_up_proj (rows [0, I) = gate, [I, 2I) = up):
    one GEMM instead of two. The loader fills the halves from the checkpoint's two tensors.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False):
        super().__init__()
        # 张量并行：gate_up 按列切（本地行 = [gate 的 I/N 行 | up 的 I/N 行]），down 按行切 + all_reduce。
        # Tensor parallel: gate_up column-split (local rows = [I/N gate | I/N up]), down row-split + all-reduce.
        self.gate_up_proj = ColumnParallelLinear(hidden_size, [intermediate_size, intermediate_size], bias=bias)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(fused_ops.silu_and_mul(self.gate_up_proj(x)))  # [N, 2I] → [N, I] → [N, hidden]
