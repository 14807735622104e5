# ================================================================================
# 📥 权重加载（safetensors → 我们自己的 nn.Module）
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   根据 config.json 的架构名选出模型类，建好结构，再把 *.safetensors 里的张量按名字
#   拷进去；缺文件、缺权重、形状不符都给出清楚的错误。
#   Picks the model class from the architecture name, builds it, then copies each tensor of
#   the *.safetensors files in by name; a missing file, a missing weight or a wrong shape is a clear error.
#
# 【生活比喻】Metaphor
#   按清单搬家：每个箱子上写着房间名（参数名），搬进新家时对号入座；少一箱、多一箱都要报告。
#   Moving house by a labelled list: each box goes to the room on its label; a missing box is reported.
#
# 【核心架构】Architecture
#   MODEL_REGISTRY[arch] ──► model class ──► nn.Module（随机初始化 / placeholder values）
#   *.safetensors ──safe_open──► (name, tensor) ──► param.copy_(tensor)
#
# 【工作流程】Workflow
#   1. 找到所有 *.safetensors；没有就报错。Find the shards or fail.
#   2. 在目标设备上建模型。Build the model on the target device.
#   3. 逐个张量拷贝（跳过 rotary 的缓存和共享的 lm_head）；q/k/v、gate/up 拷进合并参数的对应行段。
#      张量并行时每个参数的 weight_loader 只取本 rank 的那一片（model/parallel_layers.py）。
#      Copy tensor by tensor; q/k/v and gate/up go into their row range of the stacked parameter.
#      Under tensor parallelism each parameter's weight_loader keeps only this rank's slice.
#   4. 检查没有漏装的参数，再转成目标 dtype、eval()。Check completeness, cast, eval().
#
# 【关键概念】Key Concepts
#   - tie_word_embeddings：lm_head 与 embed_tokens 是同一个张量，文件里可能只存一份。
#   - safe_open 按需读取（mmap），大文件不必整个读进内存。safe_open reads lazily (mmap).
#
# 【使用方式】Usage
#   >>> model = load_model(ModelConfig.from_pretrained(path), dtype=torch.float32, device="cpu")
#
# 【对应章节】Chapter: docs/zh/07-model-inference.md
# ================================================================================
from __future__ import annotations

import glob
import os

import torch
from torch import nn

from minisgl.distributed import get_tp_size
from minisgl.model.config import ModelConfig
from minisgl.model.parallel_layers import check_tp_shapes
from minisgl.model.llama import LlamaForCausalLM
from minisgl.model.qwen2 import Qwen2ForCausalLM
from minisgl.model.qwen3 import Qwen3ForCausalLM

# 检查点里分开的张量 → 模型里合并的参数与分片序号（同 SGLang 的 stacked_params_mapping）。
# Separate checkpoint tensors → the stacked parameter and the shard index (SGLang's stacked_params_mapping).
STACKED_PARAMS = {"q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
                  "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}

MODEL_REGISTRY = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
}


def load_model(config: ModelConfig, dtype: torch.dtype, device: str) -> nn.Module:
    """建模型并装入权重。Build the model and load its weights (see the file header)."""
    from safetensors import safe_open

    files = sorted(glob.glob(os.path.join(config.model_path, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {config.model_path!r}")
    check_tp_shapes(config.num_heads, config.num_kv_heads, config.intermediate_size, get_tp_size())
    with torch.device(device):
        model = MODEL_REGISTRY[config.architecture](config)
    params = dict(model.named_parameters())
    loaded = set()
    for path in files:
        with safe_open(path, framework="pt", device="cpu") as f:
            for name in f.keys():
                if "rotary_emb" in name or (name == "lm_head.weight" and config.tie_word_embeddings):
                    continue
                param, shard_id = _destination(name, params)
                tensor = f.get_tensor(name)
                # 张量并行的参数自己知道切哪一片（parallel_layers.py）；其余整块拷贝。
                # Tensor-parallel parameters know which slice is theirs (parallel_layers.py); others copy whole.
                weight_loader = getattr(param, "weight_loader", None)
                if weight_loader is not None:
                    try:
                        weight_loader(param, tensor, shard_id)
                    except (ValueError, RuntimeError) as e:
                        raise ValueError(f"weight {name!r} has shape {tuple(tensor.shape)}: {e}") from None
                elif tensor.shape != param.shape:
                    raise ValueError(f"weight {name!r} has shape {tuple(tensor.shape)}, expected {tuple(param.shape)}")
                else:
                    with torch.no_grad():
                        param.copy_(tensor)
                loaded.add(name)
    expected = set()
    for pname in params:  # 合并参数对应的检查点名字 / checkpoint names behind each stacked parameter
        parts = [k for k, (stacked, _) in STACKED_PARAMS.items() if f".{stacked}." in pname]
        expected |= {pname.replace(STACKED_PARAMS[k][0], k) for k in parts} if parts else {pname}
    missing = sorted(expected - loaded - ({"lm_head.weight"} if config.tie_word_embeddings else set()))
    if missing:
        raise ValueError(f"checkpoint {config.model_path!r} is missing weights: {missing[:5]}{' …' if len(missing) > 5 else ''}")
    return model.to(dtype).eval()


def _destination(name: str, params: dict):
    """检查点张量名 → (模型参数, 合并参数里的分片序号或 None)。

    A checkpoint tensor's name → (the model parameter, its part index in a stacked parameter or None).
    """
    for part, (stacked, shard) in STACKED_PARAMS.items():
        if f".{part}." in name:
            pname = name.replace(part, stacked)
            if pname not in params:
                break
            return params[pname], shard  # q/k/v → qkv_proj 的第 0/1/2 段 / part 0/1/2 of qkv_proj
    if name not in params:
        raise ValueError(f"unexpected weight {name!r} for this architecture")
    return params[name], None
