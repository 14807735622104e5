# ================================================================================
# 🐉 Qwen2 / Qwen2.5：Llama 结构 + q/k/v 偏置
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   Qwen2 与 Llama 的唯一结构差别是 q_proj/k_proj/v_proj 带 bias（ModelConfig.attention_bias
#   对 Qwen2 总为 True），所以这里只是一个改了名字的子类。
#   Qwen2 differs from Llama only by the q/k/v biases (ModelConfig sets attention_bias for it),
#   so this is a renamed subclass.
#
# 【生活比喻】Metaphor
#   同一款车的另一个配置：发动机一样，只多了一个零件（bias）。
#   The same car in another trim: same engine, one extra part.
#
# 【核心架构】Architecture
#   Qwen2ForCausalLM ──继承 inherits──► LlamaForCausalLM（attention_bias=True）
#
# 【工作流程】Workflow
#   与 Llama 相同，见 llama.py。As in llama.py.
#
# 【关键概念】Key Concepts
#   - o_proj 没有 bias；只有 q/k/v 有。Only q/k/v carry a bias; o_proj has none.
#
# 【使用方式】Usage
#   >>> model = Qwen2ForCausalLM(ModelConfig.from_pretrained(path))
#
# 【对应章节】Chapter: docs/zh/07-model-inference.md
# ================================================================================
from minisgl.model.llama import LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    qk_norm = False
