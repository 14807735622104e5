# ================================================================================
# 🐉 Qwen3：Llama 结构 + 每个头的 q/k RMSNorm
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   Qwen3 在 Llama 的基础上，对每个注意力头的 q 和 k 先做 RMSNorm（作用在 head_dim 上）再加 RoPE，
#   q/k/v 默认没有 bias。这里把 qk_norm 打开即可。
#   Qwen3 normalises each head's q and k (RMSNorm over head_dim) before RoPE; no q/k/v bias by
#   default. The subclass turns qk_norm on.
#
# 【生活比喻】Metaphor
#   每位发言者先把音量调到一致（q/k 归一化），会场就不会被某个大嗓门主导（注意力分数更稳定）。
#   Each speaker's volume is levelled first, so no loud voice dominates the meeting.
#
# 【核心架构】Architecture
#   Qwen3ForCausalLM ──继承 inherits──► LlamaForCausalLM（qk_norm=True）
#
# 【工作流程】Workflow
#   q = q_norm(q_proj(x))；k = k_norm(k_proj(x))；q, k = RoPE(q, k)；之后与 Llama 相同。
#
# 【关键概念】Key Concepts
#   - Qwen3-0.6B：28 层，hidden 1024，16 个 q 头、8 个 KV 头，head_dim 128，词表 151,936，共享词嵌入。
#
# 【使用方式】Usage
#   >>> model = Qwen3ForCausalLM(ModelConfig.from_pretrained(path))
#
# 【对应章节】Chapter: docs/zh/07-model-inference.md
# ================================================================================
from minisgl.model.llama import LlamaForCausalLM


class Qwen3ForCausalLM(LlamaForCausalLM):
    qk_norm = True
