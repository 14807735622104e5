# ================================================================================
# 🧾 模型配置（ModelConfig）：从 Hugging Face 的 config.json 读出引擎需要的数字
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   用 transformers 的 AutoConfig 读取本地模型目录的 config.json，整理成引擎需要的字段：
#   层数、头数、head_dim、RoPE 参数、上下文长度、是否共享词嵌入、EOS token……
#   Reads a local model folder's config.json with transformers' AutoConfig and keeps the
#   numbers the engine needs: layers, heads, head_dim, RoPE, context length, tied embeddings, EOS ids.
#
# 【生活比喻】Metaphor
#   建筑图纸的标题栏：盖房子（构建模型）之前，先读清楚几层、几个房间、每间多大。
#   The title block of a blueprint: read the floors and room sizes before building.
#
# 【核心架构】Architecture
#   model_path/config.json ──AutoConfig──► hf_config ──► ModelConfig（纯数据 / plain data）
#   model_path/generation_config.json ──────────────────► eos_token_ids
#
# 【工作流程】Workflow
#   1. 检查目录和 config.json 存在。Check the folder and config.json exist.
#   2. 检查架构受支持（Qwen3 / Qwen2 / Llama）。Check the architecture is supported.
#   3. 兼容 transformers 4.x（rope_theta + rope_scaling）与 5.x（rope_parameters）。
#
# 【关键概念】Key Concepts
#   - GQA：num_key_value_heads < num_attention_heads，每 group = H / Hkv 个 query 头共享一个 KV 头。
#   - head_dim 缺省 = hidden_size / num_attention_heads（Qwen3 显式给出 128）。
#
# 【使用方式】Usage
#   >>> cfg = ModelConfig.from_pretrained("path/to/model")
#   >>> cfg.num_kv_heads, cfg.head_dim, cfg.context_len
#
# 【对应章节】Chapter: docs/zh/07-model-inference.md
# ================================================================================
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

SUPPORTED_ARCHITECTURES = ("Qwen3ForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM")


@dataclass
class ModelConfig:
    model_path: str
    architecture: str
    hf_config: Any
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: Optional[Dict[str, Any]]
    context_len: int
    tie_word_embeddings: bool
    attention_bias: bool
    eos_token_ids: List[int] = field(default_factory=list)

    @classmethod
    def from_pretrained(cls, model_path: str, context_length: Optional[int] = None) -> "ModelConfig":
        from transformers import AutoConfig

        # ======== 第1步：文件检查 / Step 1: files ========
        if not os.path.isdir(model_path):
            raise FileNotFoundError(f"model path {model_path!r} is not a directory (expected a Hugging Face model folder)")
        if not os.path.isfile(os.path.join(model_path, "config.json")):
            raise FileNotFoundError(f"{model_path!r} has no config.json: is this a Hugging Face model folder?")
        hf = AutoConfig.from_pretrained(model_path)

        # ======== 第2步：架构检查 / Step 2: architecture ========
        archs = getattr(hf, "architectures", None) or []
        arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None:
            raise ValueError(
                f"unsupported architecture {archs or getattr(hf, 'model_type', '?')!r} in {model_path}; "
                f"minisgl supports {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        if getattr(hf, "use_sliding_window", False):
            raise ValueError("sliding-window attention (use_sliding_window=true) is not supported by minisgl")

        # ======== 第3步：RoPE（兼容 transformers 4.x / 5.x）/ Step 3: RoPE across versions ========
        rope = dict(getattr(hf, "rope_parameters", None) or {})
        theta = rope.get("rope_theta", getattr(hf, "rope_theta", 10000.0))
        scaling = getattr(hf, "rope_scaling", None) or rope
        rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
        if rope_type not in ("default", "llama3", None):
            raise ValueError(f"rope type {rope_type!r} is not supported (supported: default, llama3)")

        num_heads = hf.num_attention_heads
        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // num_heads
        max_pos = getattr(hf, "max_position_embeddings", 2048)
        return cls(
            model_path=model_path,
            architecture=arch,
            hf_config=hf,
            vocab_size=hf.vocab_size,
            hidden_size=hf.hidden_size,
            intermediate_size=hf.intermediate_size,
            num_layers=hf.num_hidden_layers,
            num_heads=num_heads,
            num_kv_heads=getattr(hf, "num_key_value_heads", None) or num_heads,
            head_dim=head_dim,
            rms_norm_eps=hf.rms_norm_eps,
            rope_theta=float(theta),
            rope_scaling=scaling if rope_type == "llama3" else None,
            context_len=min(context_length or max_pos, max_pos) if context_length else max_pos,
            tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
            # Qwen2 的 q/k/v 总有 bias；Llama/Qwen3 看配置。Qwen2 always has q/k/v bias.
            attention_bias=arch == "Qwen2ForCausalLM" or bool(getattr(hf, "attention_bias", False)),
            eos_token_ids=_eos_ids(model_path, hf),
        )


def _eos_ids(model_path: str, hf) -> List[int]:
    """EOS 来自 generation_config.json（优先）和 config.json。EOS ids from generation_config first."""
    ids: List[int] = []
    path = os.path.join(model_path, "generation_config.json")
    for src in ([json.load(open(path)).get("eos_token_id")] if os.path.isfile(path) else []) + [
        getattr(hf, "eos_token_id", None)
    ]:
        for t in src if isinstance(src, list) else [src]:
            if isinstance(t, int) and t not in ids:
                ids.append(t)
    return ids
