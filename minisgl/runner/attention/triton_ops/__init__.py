# ================================================================================
# 📦 手写 Triton 注意力内核（decode split-KV / extend 前缀+因果）
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   导出 GPU 注意力后端要调用的内核和它们的纯 PyTorch 参考实现。
#   没装 triton 时（例如纯 CPU 的安装）只导出参考实现，HAS_TRITON = False。
#   Exports the kernels the GPU attention backend calls and their pure-PyTorch references.
#   Without triton installed (a CPU-only install) only the references are exported.
#
# 【生活比喻】Metaphor
#   工具箱的目录：decode 是“多个柜员分头点钞再汇总”，extend 是“先翻旧章节再读新页”。
#   The toolbox's index: decode = tellers counting in parallel then merging;
#   extend = skim the old chapters, then read the new pages in order.
#
# 【核心架构】Architecture
#   triton_ops/
#   ├── decode_attention.py   decode_attention_fwd, get_num_kv_splits   (stage 1 + stage 2)
#   ├── extend_attention.py   extend_attention_fwd                      (prefix + causal)
#   └── reference.py          decode_attention_ref, extend_attention_ref (float32, per request)
#
# 【工作流程】Workflow
#   后端每步：decode 批 → decode_attention_fwd；extend 批 → extend_attention_fwd。
#   Per step the backend calls decode_attention_fwd for decode batches and
#   extend_attention_fwd for extend batches.
#
# 【关键概念】Key Concepts
#   - 在 CPU 上测试内核：导入 triton 之前设 TRITON_INTERPRET=1（Triton 在 @triton.jit
#     装饰时决定是否解释执行）。To test on a CPU, set TRITON_INTERPRET=1 before these
#     modules are imported (Triton decides at decoration time).
#   - 工作区 / workspaces (decode)：attn_logits [bs, H, max_kv_splits, D] float32，
#     attn_lse [bs, H, max_kv_splits] float32。
#
# 【使用方式】Usage
#   from minisgl.runner.attention.triton_ops import decode_attention_fwd, extend_attention_fwd
#
# 【对应章节】Chapter: docs/zh/07-model-inference.md
# ================================================================================

from .reference import decode_attention_ref, extend_attention_ref

try:
    from .decode_attention import decode_attention_fwd, get_num_kv_splits
    from .extend_attention import extend_attention_fwd

    HAS_TRITON = True
except ImportError:  # triton 未安装 / triton not installed
    HAS_TRITON = False

__all__ = ["HAS_TRITON", "decode_attention_ref", "extend_attention_ref"]
if HAS_TRITON:
    __all__ += ["decode_attention_fwd", "extend_attention_fwd", "get_num_kv_splits"]
