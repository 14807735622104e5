# ================================================================================
# 🧩 读取一个 PEFT 格式的 LoRA 适配器（adapter_config.json + adapter_model.safetensors）
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   把 Hugging Face PEFT `save_pretrained` 存下的一个 LoRA 适配器读进内存：每层每个目标模块的
#   A [r, in]、B [out, r] 两个矩阵，以及缩放系数 scaling = lora_alpha / r（rsLoRA：/ √r）。
#   读的时候逐项检查：不支持的 PEFT 选项、不认识的模块、形状不对，都给出点名的错误。
#   Reads one LoRA adapter saved by PEFT's `save_pretrained`: the A [r, in] and B [out, r] matrices
#   of every targeted module of every layer, and scaling = lora_alpha / r (rsLoRA: / sqrt(r)).
#   Unsupported PEFT options, unknown modules and wrong shapes are errors that name the culprit.
#
# 【生活比喻】Metaphor
#   一本“改装说明书”：不换发动机（基座权重不动），只告诉你在哪几个零件旁边加装一个小配件（A、B），
#   以及配件的力度（scaling）。读说明书时先核对车型：零件名对不上就不装。
#   A tuning kit's manual: the engine stays (base weights untouched); it lists which parts get a
#   small add-on (A, B) and how strongly (scaling). Check the car model first: wrong part names, no install.
#
# 【核心架构】Architecture
#   adapter_config.json ──► r, lora_alpha, use_rslora, target_modules（以及要拒绝的选项）
#   adapter_model.safetensors
#     "base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight"  [r, in]
#     "base_model.model.model.layers.{i}.self_attn.q_proj.lora_B.weight"  [out, r]
#          └──────────────── 正则 KEY_RE ────────────────┘
#   ──► LoRAAdapter(name, rank, scaling, weights[(layer, module)] = (A, B))
#
# 【工作流程】Workflow
#   1. 读配置，拒绝 DoRA、bias、modules_to_save、rank_pattern 等本引擎不实现的选项。
#      Read the config; reject options this engine does not implement (DoRA, bias, rank_pattern, ...).
#   2. 逐个张量解析名字 → (层号, 模块, A|B)；检查形状与模型一致。Parse each name; check shapes.
#   3. 每个 (层, 模块) 必须 A、B 成对出现。Every (layer, module) needs both A and B.
#
# 【关键概念】Key Concepts
#   - LoRA：y = x W^T + (x A^T) B^T · scaling，A: [r, in]，B: [out, r]（PEFT 的存储方向，即 nn.Linear 的 weight）。
#   - scaling = lora_alpha / r；use_rslora=True 时 lora_alpha / √r（rank-stabilized LoRA）。
#   - 目标模块：q_proj k_proj v_proj o_proj gate_proj up_proj down_proj 的任意子集；
#     没有出现的模块的增量为 0。Any subset of the seven; a module that is absent adds nothing.
#   - 权重放在 CPU 内存里；用到时才拷进 GPU 上的槽位（见 lora_manager.py）。
#     Weights stay in host memory; they are copied into a device slot when a batch needs them.
#
# 【使用方式】Usage
#   >>> a = LoRAAdapter.load("sql", "/path/to/adapter", model_config, torch.float32)
#   >>> a.rank, a.scaling, sorted(a.target_modules)
#
# 【对应章节】Chapter: docs/zh/11-advanced.md
# ================================================================================
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Dict, Set, Tuple

import torch

# PEFT 的目标模块名 → 所在子模块（self_attn | mlp）。PEFT module name → its parent in a decoder layer.
TARGET_MODULES = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
                  "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}

# "...layers.3.self_attn.q_proj.lora_A.weight"（旧版 PEFT 可能带 ".default"）/ older PEFT may add ".default"
KEY_RE = re.compile(r"layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_(A|B)(?:\.\w+)?\.weight$")

# 这些 PEFT 选项会改变计算，本引擎没有实现：遇到就报错，绝不悄悄忽略。
# PEFT options that change the computation and are not implemented here: an error, never ignored.
UNSUPPORTED = {
    "use_dora": "DoRA (use_dora)", "lora_bias": "LoRA bias (lora_bias)", "modules_to_save": "modules_to_save",
    "rank_pattern": "per-module ranks (rank_pattern)", "alpha_pattern": "per-module alphas (alpha_pattern)",
    "layer_replication": "layer_replication", "trainable_token_indices": "trainable_token_indices",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)", "fan_in_fan_out": "fan_in_fan_out",
}


def module_shapes(cfg) -> Dict[str, Tuple[int, int]]:
    """每个目标模块的 (in, out)，由模型配置算出（tp_size == 1）。(in, out) of each target module."""
    H, Hkv, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    hidden, inter = cfg.hidden_size, cfg.intermediate_size
    return {"q_proj": (hidden, H * D), "k_proj": (hidden, Hkv * D), "v_proj": (hidden, Hkv * D),
            "o_proj": (H * D, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
            "down_proj": (inter, hidden)}


@dataclass
class LoRAAdapter:
    """一个已读入的适配器（见文件头）。One loaded adapter; see the file header."""

    name: str
    path: str
    rank: int
    scaling: float
    # (层号, 模块名) → (A [r, in], B [out, r])，在 CPU 上。(layer, module) → (A, B), on the CPU.
    weights: Dict[Tuple[int, str], Tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    @property
    def target_modules(self) -> Set[str]:
        return {module for _, module in self.weights}

    @classmethod
    def load(cls, name: str, path: str, model_config, dtype: torch.dtype = torch.float32) -> "LoRAAdapter":
        """读一个 PEFT 适配器目录并检查（见文件头的工作流程）。Read and check one PEFT adapter folder."""
        from safetensors.torch import load_file

        # ======== 第1步：配置 / Step 1: the config ========
        where = f"LoRA adapter {name!r} ({path})"
        cfg_path = os.path.join(path, "adapter_config.json")
        if not os.path.isfile(cfg_path):
            raise FileNotFoundError(f"{where}: no adapter_config.json (expected a PEFT save_pretrained folder)")
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
        if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
            raise ValueError(f"{where}: peft_type {cfg.get('peft_type')!r} is not LoRA")
        for key, what in UNSUPPORTED.items():
            if cfg.get(key):
                raise ValueError(f"{where}: {what} is not supported by minisgl")
        if cfg.get("bias", "none") != "none":
            raise ValueError(f"{where}: bias={cfg['bias']!r} is not supported by minisgl (only 'none')")
        rank, alpha = int(cfg["r"]), float(cfg.get("lora_alpha", cfg["r"]))
        scaling = alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank

        # ======== 第2步：张量 / Step 2: the tensors ========
        files = [os.path.join(path, f) for f in ("adapter_model.safetensors",) if os.path.isfile(os.path.join(path, f))]
        if not files:
            raise FileNotFoundError(f"{where}: no adapter_model.safetensors")
        shapes = module_shapes(model_config)
        parts: Dict[Tuple[int, str], Dict[str, torch.Tensor]] = {}
        for key, tensor in load_file(files[0]).items():
            m = KEY_RE.search(key)
            if m is None:
                raise ValueError(f"{where}: unsupported weight {key!r} (minisgl applies LoRA to "
                                 f"{', '.join(TARGET_MODULES)} only)")
            layer, parent, module, which = int(m[1]), m[2], m[3], m[4]
            if TARGET_MODULES.get(module) != parent:
                raise ValueError(f"{where}: unsupported target module {parent}.{module} in {key!r}")
            if layer >= model_config.num_layers:
                raise ValueError(f"{where}: {key!r} names layer {layer}, the model has {model_config.num_layers}")
            in_f, out_f = shapes[module]
            want = (rank, in_f) if which == "A" else (out_f, rank)
            if tuple(tensor.shape) != want:
                raise ValueError(f"{where}: {key!r} has shape {tuple(tensor.shape)}, expected {want} "
                                 "(was the adapter trained for another model?)")
            parts.setdefault((layer, module), {})[which] = tensor.to(dtype)

        # ======== 第3步：A、B 成对 / Step 3: A and B in pairs ========
        weights = {}
        for (layer, module), ab in sorted(parts.items()):
            if set(ab) != {"A", "B"}:
                raise ValueError(f"{where}: layer {layer} {module} has lora_{'A' if 'A' in ab else 'B'} "
                                 f"but no lora_{'B' if 'A' in ab else 'A'}")
            weights[(layer, module)] = (ab["A"].contiguous(), ab["B"].contiguous())
        if not weights:
            raise ValueError(f"{where}: the adapter has no LoRA weights")
        return cls(name, path, rank, scaling, weights)
