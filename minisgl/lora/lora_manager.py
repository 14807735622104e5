# ================================================================================
# 🗂️ LoRAManager：读入适配器、管理设备上的 A/B 槽位、每次前向准备分段信息
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   多 LoRA 服务（S-LoRA 的思路）的管家：启动时读入 --lora-paths 的全部适配器（放在 CPU 内存），
#   在设备上开 max_loras_per_batch 个“槽位”的 A/B 缓冲区，把模型的 qkv_proj / o_proj /
#   gate_up_proj / down_proj 换成 LoRALinear；每次前向前，把本 batch 用到的适配器换进槽位，
#   再把 token 按适配器切成段（LoRABatchInfo），供所有 LoRALinear 共用。
#   The housekeeper of multi-LoRA serving (the S-LoRA idea): loads every adapter of --lora-paths
#   into host memory, allocates device A/B buffers with max_loras_per_batch slots, swaps the
#   model's linears for LoRALinear; before each forward it brings the batch's adapters into slots
#   and cuts the tokens into per-adapter segments (LoRABatchInfo) that every LoRALinear reads.
#
# 【生活比喻】Metaphor
#   工具墙上只有 8 个挂钩（槽位），仓库里有上百套配件（适配器）：今天的订单要用哪几套，就把它们挂上墙，
#   挂钩不够时先取下最久没用、今天也用不到的那套（LRU）。
#   A tool wall with 8 hooks (slots) and a storeroom of a hundred kits (adapters): hang the kits
#   today's orders need; when the hooks are full, take down the one unused for longest (LRU).
#
# 【核心架构】Architecture
#   LoRAManager
#    ├─ adapters: {name: LoRAAdapter}（CPU）
#    ├─ lora_a[kind]: [L, S, P·R, in]    lora_b[kind]: [L, S, out_total, R]    scalings: [S]
#    │    kind ∈ LORA_LAYERS（只为有适配器用到的层开 / only kinds some adapter targets）
#    ├─ slot_adapter[S], adapter_slot{name: slot}, 最近使用时间 / last use (LRU)
#    └─ prepare(fb) ──► batch_info: LoRABatchInfo（也挂在 fb.lora_info 上，方便打印 / also on fb）
#
#   ModelRunner.forward ─► manager.prepare(fb) ─► model(...) ─► 每个 LoRALinear 读 manager.batch_info
#
# 【工作流程】Workflow
#   1. __init__：检查 tp_size == 1；读适配器；开缓冲区；install(model) 换层。
#   2. prepare(fb)：fb.lora_ids（每个请求的适配器名或 None）
#        → 需要的适配器不在槽位就载入（空槽优先，否则 LRU 且不在本 batch）
#        → 连续的同适配器请求合成一段 → LoRABatchInfo。
#      Bring missing adapters into slots (empty first, else LRU outside this batch); merge
#      consecutive requests of one adapter into a segment; build LoRABatchInfo.
#
# 【关键概念】Key Concepts
#   - 调度器保证一个 batch 里不同的适配器不超过 max_loras_per_batch（= 槽位数），
#     所以 prepare 总能找到槽位。The scheduler caps distinct adapters per batch at the slot count.
#   - 不用适配器的请求不占槽位：它的段的槽位是 -1，内核跳过。Base requests take no slot (-1).
#   - 缓冲区大小：Σ_kind L·S·R·(P·in + out)·bytes；Qwen3-0.6B、S=8、R=16、bf16 约 154 MiB（全部 7 个模块）。
#   - 段按请求顺序：[a, a, None, b] → 3 段。调度器不为此重排 batch。Segments follow request order.
#
# 【使用方式】Usage
#   >>> manager = LoRAManager({"sql": "/adapters/sql"}, model_config, model, max_loras_per_batch=8,
#   ...                       device="cpu", dtype=torch.float32)   # ModelRunner 在加载后调用 / by ModelRunner
#   >>> manager.prepare(forward_batch)                             # 每次前向 / every forward
#
# 【对应章节】Chapter: docs/zh/11-advanced.md
# ================================================================================
from __future__ import annotations

import itertools
import logging
from typing import Dict, List, Optional

import torch
from torch import nn

from minisgl.lora.adapter import LoRAAdapter, module_shapes
from minisgl.lora.layers import LoRALinear
from minisgl.lora.ops import LoRABatchInfo

logger = logging.getLogger(__name__)

# 模型里的层 → (所在子模块, 拼进它的 PEFT 模块，按行序)。与 model/loader.py 的 STACKED_PARAMS 行序一致。
# Model layer → (its parent, the PEFT modules stacked in it, in row order), as model/loader.py stacks them.
LORA_LAYERS = {
    "qkv_proj": ("self_attn", ("q_proj", "k_proj", "v_proj")),
    "o_proj": ("self_attn", ("o_proj",)),
    "gate_up_proj": ("mlp", ("gate_proj", "up_proj")),
    "down_proj": ("mlp", ("down_proj",)),
}


class LoRAManager:
    """适配器与槽位的管家（见文件头）。Adapters and their device slots; see the file header."""

    def __init__(self, adapter_paths: Dict[str, str], model_config, model: nn.Module, max_loras_per_batch: int,
                 device: str, dtype: torch.dtype, tp_size: int = 1):
        if tp_size != 1:
            raise ValueError(f"LoRA adapters (--lora-paths) need --tp-size 1, got --tp-size {tp_size}: "
                             "LoRALinear adds the delta to the full (unsharded) output of each layer")
        if max_loras_per_batch < 1:
            raise ValueError(f"--max-loras-per-batch must be >= 1, got {max_loras_per_batch}")
        # ======== 第1步：读适配器 / Step 1: load the adapters ========
        self.adapters: Dict[str, LoRAAdapter] = {
            name: LoRAAdapter.load(name, path, model_config, dtype) for name, path in adapter_paths.items()}
        if not self.adapters:
            raise ValueError("LoRAManager needs at least one adapter")
        self.device, self.dtype = device, dtype
        self.num_layers = model_config.num_layers
        self.num_slots = max_loras_per_batch
        self.max_rank = max(a.rank for a in self.adapters.values())
        used = set().union(*(a.target_modules for a in self.adapters.values()))
        self.kinds = [k for k, (_, parts) in LORA_LAYERS.items() if used & set(parts)]

        # ======== 第2步：设备上的槽位缓冲区 / Step 2: device slot buffers ========
        shapes = module_shapes(model_config)
        L, S, R = self.num_layers, self.num_slots, self.max_rank
        self.lora_a: Dict[str, torch.Tensor] = {}
        self.lora_b: Dict[str, torch.Tensor] = {}
        self.part_offsets: Dict[str, List[int]] = {}
        self.part_offsets_t: Dict[str, torch.Tensor] = {}
        for kind in self.kinds:
            parts = LORA_LAYERS[kind][1]
            offsets = [0] + list(itertools.accumulate(shapes[p][1] for p in parts))
            self.lora_a[kind] = torch.zeros(L, S, len(parts) * R, shapes[parts[0]][0], dtype=dtype, device=device)
            self.lora_b[kind] = torch.zeros(L, S, offsets[-1], R, dtype=dtype, device=device)
            self.part_offsets[kind] = offsets
            self.part_offsets_t[kind] = torch.tensor(offsets, dtype=torch.int32, device=device)
        self.scalings = torch.zeros(S, dtype=torch.float32, device=device)
        self.slot_adapter: List[Optional[str]] = [None] * S
        self.adapter_slot: Dict[str, int] = {}
        self.slot_last_used = [0] * S
        self._clock = itertools.count(1)
        self.num_loads = 0  # 适配器被拷进槽位的次数（换入换出）/ how many times an adapter was copied into a slot
        self.batch_info: Optional[LoRABatchInfo] = None

        # ======== 第3步：换层 / Step 3: wrap the layers ========
        self.install(model)
        mib = sum(t.numel() * t.element_size() for t in [*self.lora_a.values(), *self.lora_b.values()]) / 2**20
        logger.info("LoRA: %d adapter(s) %s, %d slot(s), max rank %d, layers %s, %.1f MiB of slot buffers",
                    len(self.adapters), list(self.adapters), S, R, self.kinds, mib)

    @property
    def names(self) -> List[str]:
        return list(self.adapters)

    def install(self, model: nn.Module) -> None:
        """把每个解码层的目标线性层换成 LoRALinear（按属性名）。Swap each target linear for a LoRALinear."""
        for layer_id, layer in enumerate(model.model.layers):
            for kind in self.kinds:
                parent = getattr(layer, LORA_LAYERS[kind][0])
                base = getattr(parent, kind)
                if isinstance(base, LoRALinear):
                    raise RuntimeError(f"layer {layer_id} {kind} already has LoRA installed")
                setattr(parent, kind, LoRALinear(base, self, layer_id, kind))

    # ======== 槽位 / Slots ========
    def _load_into_slot(self, adapter: LoRAAdapter, slot: int) -> None:
        """把一个适配器的 A/B 拷进槽位（先清零：秩更小、模块更少的部分必须是 0）。

        Copy an adapter's A/B into a slot, zeroing it first: padding rows/columns and absent
        modules must contribute exactly 0.
        """
        R = self.max_rank
        for kind in self.kinds:
            A, B = self.lora_a[kind], self.lora_b[kind]
            A[:, slot].zero_()
            B[:, slot].zero_()
            offsets = self.part_offsets[kind]
            for p, module in enumerate(LORA_LAYERS[kind][1]):
                for layer in range(self.num_layers):
                    ab = adapter.weights.get((layer, module))
                    if ab is None:
                        continue
                    a, b = ab  # [r, in], [out_p, r]
                    r = a.shape[0]
                    A[layer, slot, p * R : p * R + r].copy_(a)
                    B[layer, slot, offsets[p] : offsets[p + 1], :r].copy_(b)
        self.scalings[slot] = adapter.scaling
        self.num_loads += 1

    def _ensure_loaded(self, name: str, needed: set) -> int:
        """适配器 name 的槽位；不在槽位里就换入。The slot of adapter name, swapping it in if needed."""
        tick = next(self._clock)
        slot = self.adapter_slot.get(name)
        if slot is None:
            empty = [s for s in range(self.num_slots) if self.slot_adapter[s] is None]
            victims = empty or sorted((s for s in range(self.num_slots) if self.slot_adapter[s] not in needed),
                                      key=lambda s: self.slot_last_used[s])
            if not victims:
                raise RuntimeError(f"a batch uses more than --max-loras-per-batch={self.num_slots} adapters "
                                   "(the scheduler should have prevented this)")
            slot = victims[0]
            old = self.slot_adapter[slot]
            if old is not None:
                del self.adapter_slot[old]
            self._load_into_slot(self.adapters[name], slot)
            self.slot_adapter[slot], self.adapter_slot[name] = name, slot
        self.slot_last_used[slot] = tick
        return slot

    # ======== 每次前向 / Every forward ========
    def prepare(self, fb) -> Optional[LoRABatchInfo]:
        """为一次前向准备分段信息（见文件头）。Prepare the segment info of one forward pass.

        fb.lora_ids: one adapter name (or None) per request; fb.extend_seq_lens: tokens per request
        (all 1 in decode). Sets self.batch_info and fb.lora_info; None when no request uses an adapter.
        """
        lora_ids = getattr(fb, "lora_ids", None)
        if not lora_ids or all(name is None for name in lora_ids):
            self.batch_info = None
            fb.lora_info = None
            return None
        needed = {name for name in lora_ids if name is not None}
        unknown = sorted(needed - set(self.adapters))
        if unknown:
            raise ValueError(f"unknown LoRA adapter(s) {unknown}; loaded: {self.names}")
        slots = {name: self._ensure_loaded(name, needed) for name in sorted(needed)}
        # 连续的同适配器请求合成一段。Consecutive requests of one adapter form one segment.
        seg_lens: List[int] = []
        weight_indices: List[int] = []
        for n, name in zip(fb.extend_seq_lens, lora_ids):
            w = -1 if name is None else slots[name]
            if weight_indices and weight_indices[-1] == w:
                seg_lens[-1] += n
            else:
                seg_lens.append(n)
                weight_indices.append(w)
        self.batch_info = LoRABatchInfo.build(seg_lens, weight_indices, self.device)
        fb.lora_info = self.batch_info
        return self.batch_info
