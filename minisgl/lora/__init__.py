"""多 LoRA 服务（S-LoRA 的思路）：见 docs/zh/11-advanced.md §3。Multi-LoRA serving; see chapter 11 §3.

adapter.py 读 PEFT 适配器，lora_manager.py 管槽位与分段，layers.py 是 LoRALinear，
ops.py / triton_ops.py 是分段矩阵乘（参考实现 / Triton）。
"""
from minisgl.lora.adapter import LoRAAdapter
from minisgl.lora.lora_manager import LORA_LAYERS, LoRAManager
from minisgl.lora.ops import LoRABatchInfo

__all__ = ["LORA_LAYERS", "LoRAAdapter", "LoRABatchInfo", "LoRAManager"]
