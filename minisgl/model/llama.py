# ================================================================================
# 🦙 Llama 结构的解码器（也是 Qwen2 / Qwen3 的基类）
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   用 PyTorch 手写的 Llama 解码器：词嵌入 → N 个解码层（注意力 + MLP）→ 最终 RMSNorm → LM head。
#   参数名沿用 Hugging Face，只有 qkv_proj / gate_up_proj 是合并的（loader 按名字拼装）。
#   Qwen2（q/k/v 带 bias）和 Qwen3（q/k 各加一个 RMSNorm）只是它的两个小变体。
#   A hand-written Llama decoder with Hugging Face's parameter names, except the stacked
#   qkv_proj / gate_up_proj that the loader assembles from the checkpoint's separate tensors. Qwen2 (q/k/v bias) and Qwen3 (q/k RMSNorm) are two small variants.
#
# 【生活比喻】Metaphor
#   流水线工厂：每个 token 沿着一排相同的工位（解码层）前进，每个工位先“开会”（注意力：
#   看看前面的 token 说了什么），再“独立加工”（MLP）。
#   An assembly line: each token passes identical stations; at each it first meets the earlier
#   tokens (attention), then works alone (MLP).
#
# 【核心架构】Architecture
#   LlamaForCausalLM
#    ├─ model: LlamaModel
#    │   ├─ embed_tokens            [V, hidden]
#    │   ├─ layers[i]: LlamaDecoderLayer
#    │   │    ├─ input_layernorm → self_attn (qkv_proj, [q_norm,k_norm], RoPE, attn_backend, o_proj)
#    │   │    └─ post_attention_layernorm → mlp (gate_up_proj, SiLU·mul, down_proj)
#    │   └─ norm
#    └─ lm_head                      [V, hidden]（tie_word_embeddings 时与 embed_tokens 共享）
#
# 【工作流程】Workflow
#   1. forward(input_ids [N], positions [N], forward_batch) —— N 是整个 batch 拼起来的 token 数，
#      没有 padding（ragged batch）。All requests' tokens concatenated: no padding.
#   2. 注意力把新 K/V 写进 KV 池，再读出整段历史（见 runner/attention/）。
#   3. 返回 hidden states [N, hidden]；只有需要的行才过 LM head（ModelRunner 负责挑选）。
#
# 【关键概念】Key Concepts
#   - 残差：h = h + attn(norm(h))；h = h + mlp(norm(h))。
#   - Qwen3 的 q_norm/k_norm 作用在每个头的 head_dim 上，在 RoPE 之前。
#   - 每层参数量 ≈ hidden·(H+2Hkv)·D + H·D·hidden + 3·hidden·inter。
#   - --tp-size N：线性层与词表都是 parallel_layers.py 里的并行版本，N == 1 时与普通层完全相同。
#     With --tp-size N the linears and the vocabulary are the parallel versions (identical at N == 1).
#
# 【使用方式】Usage
#   >>> model = LlamaForCausalLM(model_config)             # 结构；权重由 loader 装入
#   >>> hidden = model(input_ids, positions, forward_batch) # [N, hidden]
#
# 【对应章节】Chapter: docs/zh/07-model-inference.md
# ================================================================================
from __future__ import annotations

import torch
from torch import nn

from minisgl.model.config import ModelConfig
from minisgl.model.layers import MLP, RMSNorm, RotaryEmbedding
from minisgl.model.parallel_layers import (
    ParallelLMHead, QKVParallelLinear, RowParallelLinear, VocabParallelEmbedding,
)


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int, rotary: RotaryEmbedding, qk_norm: bool):
        super().__init__()
        H, Hkv, D, hidden = config.num_heads, config.num_kv_heads, config.head_dim, config.hidden_size
        # q/k/v 三个投影合并成一个 GEMM（行：q | k | v），加载时由 loader 拼好。张量并行时每个 rank
        # 只有自己的头（H/tp 个 q 头；KV 头 Hkv/tp 个，不够分时复制），o_proj 按行切并 all_reduce。
        # q/k/v stacked into one GEMM (rows: q | k | v); the loader fills the three parts. Under tensor
        # parallelism each rank holds only its heads, and o_proj is row-parallel (then all-reduced).
        self.qkv_proj = QKVParallelLinear(hidden, D, H, Hkv, bias=config.attention_bias)
        self.o_proj = RowParallelLinear(H * D, hidden, bias=False)
        self.layer_id, self.head_dim = layer_id, D
        self.num_heads, self.num_kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads  # 本 rank / this rank
        self.scaling = D**-0.5
        self.q_size, self.kv_size = self.num_heads * D, self.num_kv_heads * D
        self.qk_norm = qk_norm
        if qk_norm:  # Qwen3
            self.q_norm = RMSNorm(D, config.rms_norm_eps)
            self.k_norm = RMSNorm(D, config.rms_norm_eps)
        self.rotary = rotary  # 所有层共用一张 cos/sin 表 / one table shared by every layer

    def forward(self, positions: torch.Tensor, x: torch.Tensor, forward_batch) -> torch.Tensor:
        N = x.shape[0]
        qkv = self.qkv_proj(x)  # [N, (H + 2·Hkv)·D]
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(N, self.num_heads, self.head_dim)  # [N, H, D]
        k = k.view(N, self.num_kv_heads, self.head_dim)  # [N, Hkv, D]
        v = v.view(N, self.num_kv_heads, self.head_dim)  # [N, Hkv, D]
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary(positions, q, k)
        # 后端负责：把 k/v 写进 KV 池，再让 q 看到整段历史。The backend stores k/v, then attends.
        o = forward_batch.attn_backend.forward(q, k, v, self.layer_id, self.scaling, forward_batch)  # [N, H, D]
        return self.o_proj(o.reshape(N, self.num_heads * self.head_dim))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int, rotary: RotaryEmbedding, qk_norm: bool):
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_id, rotary, qk_norm)
        mlp_bias = bool(getattr(config.hf_config, "mlp_bias", False))
        self.mlp = MLP(config.hidden_size, config.intermediate_size, bias=mlp_bias)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, positions: torch.Tensor, h: torch.Tensor, residual, forward_batch):
        """残差流与 HF 相同，只是把“加残差”推迟到下一个 RMSNorm 里融合完成。

        Same residual stream as HF (h = h + attn(norm(h)); h = h + mlp(norm(h))), with each add
        deferred into the next RMSNorm, which fuses it: returns (mlp output, residual).
        """
        if residual is None:  # 第一层：残差就是输入 / first layer: the residual is the input
            residual, h = h, self.input_layernorm(h)
        else:
            h, residual = self.input_layernorm(h, residual)
        h = self.self_attn(positions, h, forward_batch)
        h, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(h), residual


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, qk_norm: bool):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        rotary = RotaryEmbedding(config.head_dim, config.context_len, config.rope_theta, config.rope_scaling)
        self.layers = nn.ModuleList(
            [LlamaDecoderLayer(config, i, rotary, qk_norm) for i in range(config.num_layers)]
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch) -> torch.Tensor:
        h, residual = self.embed_tokens(input_ids), None  # [N, hidden]
        for layer in self.layers:
            h, residual = layer(positions, h, residual, forward_batch)
        return self.norm(h, residual)[0]


class LlamaForCausalLM(nn.Module):
    """Llama 3.x（及其变体的基类）。Llama 3.x, and the base of the Qwen variants."""

    qk_norm = False

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config, qk_norm=self.qk_norm)
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch) -> torch.Tensor:
        """返回最后一层的 hidden states [N, hidden]。Returns the final hidden states [N, hidden]."""
        return self.model(input_ids, positions, forward_batch)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [n, hidden] → logits [n, V] (float32)."""
        return self.lm_head.compute_logits(hidden).float()
