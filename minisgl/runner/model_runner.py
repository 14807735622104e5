# ================================================================================
# 🏃 ModelRunner：加载模型、分配 KV 池、执行一次前向
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   调度器与模型之间的唯一接口：启动时加载权重、按可用内存算出 KV 池能放多少 token 并建池、
#   选注意力后端；运行时把 ForwardBatch 送进模型，只取每个请求最后一个位置过 LM head，返回 logits。
#   The one interface between scheduler and model: at start-up it loads weights, sizes and
#   builds the KV pool, picks the attention backend; at run time it runs a ForwardBatch and returns
#   logits of each request's last position only.
#
# 【生活比喻】Metaphor
#   厨房：领班送来出菜单（ForwardBatch），厨房做完只把每桌的“最后一道菜”（最后位置的 logits）端出去。
#   The kitchen: it cooks the whole ticket but sends out only each table's last dish.
#
# 【核心架构】Architecture
#   ModelRunner
#    ├─ model_config: ModelConfig          ├─ req_to_token_pool: ReqToTokenPool
#    ├─ model: Llama/Qwen2/Qwen3           ├─ token_to_kv_pool: TokenToKVPool
#    ├─ attn_backend: torch | triton       └─ token_to_kv_pool_allocator
#    └─ forward(ForwardBatch) → logits [bs, V]
#
# 【工作流程】Workflow
#   1. 加载模型（model/loader.py）。Load the model.
#   2. 估算 KV 池容量：GPU 用空闲显存 × mem_fraction_static，CPU 用固定预算。Size the pool.
#   3. forward：attn_backend.init_forward_metadata → model → 取最后位置 → lm_head。
#   --tp-size N：每个 rank 各有一个 ModelRunner，只存 1/N 的权重与 KV 头；KV 池的 token 数取各 rank
#   的最小值，保证所有 rank 的调度决策一致（minisgl/distributed.py）。
#   With --tp-size N each rank has its own ModelRunner with 1/N of the weights and KV heads; the
#   pool's token count is the minimum over the ranks so every rank schedules identically.
#
# 【关键概念】Key Concepts
#   - extend 时只有每个请求最后一个 token 需要 logits：对 1,000 token 的 prompt，LM head 少算 999 行
#     （词表 151,936 时这是一次 [1000, 1024]×[1024, 151936] 的矩阵乘，占 prefill 很大一块）。
#     Only the last position needs logits: for a 1,000-token prompt the LM head skips 999 rows.
#   - KV 池容量 = 可用字节 / bytes_per_token，向下取整到整页。
#
# 【使用方式】Usage
#   >>> runner = ModelRunner(ServerArgs().resolve())
#   >>> logits = runner.forward(forward_batch)        # [bs, vocab] float32
#
# 【对应章节】Chapter: docs/zh/07-model-inference.md
# ================================================================================
from __future__ import annotations

import logging

import torch

from minisgl import distributed
from minisgl.mem_cache.memory_pool import ReqToTokenPool, TokenToKVPool, TokenToKVPoolAllocator
from minisgl.model import ModelConfig, load_model
from minisgl.runner.forward_batch import ForwardBatch
from minisgl.server_args import ServerArgs
from minisgl.utils import to_device

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CPU_KV_BUDGET_BYTES = 1 << 30  # CPU 上 KV 池默认 1 GiB / 1 GiB of KV on CPU by default
CPU_MAX_TOTAL_TOKENS = 1 << 16


class ModelRunner:
    """见文件头。See the file header."""

    def __init__(self, server_args: ServerArgs, model_config: ModelConfig | None = None):
        self.server_args = args = server_args
        self.device = args.device
        self.dtype = DTYPES[args.dtype]
        torch.manual_seed(args.random_seed)
        # ======== 第1步：模型 / Step 1: the model ========
        self.model_config = model_config or ModelConfig.from_pretrained(args.model_path, args.context_length)
        self.model = load_model(self.model_config, self.dtype, self.device)
        self.vocab_size = self.model_config.vocab_size
        attn = self.model.model.layers[0].self_attn
        self.num_heads, self.num_kv_heads = attn.num_heads, attn.num_kv_heads  # 本 rank / this rank's heads
        # LoRA（minisgl/lora/）：在 KV 池之前装好，槽位缓冲区的显存先算进去。Before the pool: its memory counts.
        self.lora_manager = None
        if args.lora_paths:
            from minisgl.lora import LoRAManager

            self.lora_manager = LoRAManager(args.lora_adapters(), self.model_config, self.model,
                                            args.max_loras_per_batch, self.device, self.dtype, args.tp_size)
        # ======== 第2步：KV 池 / Step 2: the KV pool ========
        self.page_size = args.page_size
        self.max_total_num_tokens = self._profile_max_num_tokens()
        cfg = self.model_config
        # +1 行留给哑行 0 / one extra row: the dummy row 0
        self.req_to_token_pool = ReqToTokenPool(args.max_running_requests + 1, cfg.context_len + 4, self.device)
        self.token_to_kv_pool_allocator = TokenToKVPoolAllocator(self.max_total_num_tokens, self.page_size, self.device)
        self.token_to_kv_pool = TokenToKVPool(
            self.max_total_num_tokens, self.page_size, cfg.num_layers, self.num_kv_heads, cfg.head_dim,
            self.dtype, self.device,
        )
        # 哑行 0：CUDA graph 的填充行指向它。Dummy row 0: padded CUDA-graph rows point here.
        self.dummy_req_idx = ReqToTokenPool.DUMMY_ROW
        # ======== 第3步：注意力后端 / Step 3: attention backend ========
        self.attn_backend = self._make_attn_backend(args.attention_backend)
        # ======== 第4步：CUDA graph（仅 GPU）/ Step 4: CUDA graphs (GPU only) ========
        self.cuda_graph_runner = None
        if self.device == "cuda" and not args.disable_cuda_graph and self.lora_manager is not None:
            # 分段信息（段数、段长、槽位）每步都变，录不进图：LoRA 打开时不用 CUDA graph。
            # The LoRA segments change every step and are not captured: no CUDA graphs with LoRA.
            logger.info("CUDA graphs are off because LoRA adapters are loaded (--lora-paths)")
        elif self.device == "cuda" and not args.disable_cuda_graph:
            from minisgl.runner.cuda_graph_runner import CudaGraphRunner

            self.cuda_graph_runner = CudaGraphRunner(self, min(args.cuda_graph_max_bs, args.max_running_requests))
            self.cuda_graph_runner.capture()

    def _profile_max_num_tokens(self) -> int:
        """KV 池能放多少 token。How many tokens the KV pool holds (whole pages)."""
        cfg, args = self.model_config, self.server_args
        per_token = TokenToKVPool.bytes_per_token(cfg.num_layers, self.num_kv_heads, cfg.head_dim, self.dtype)
        if args.max_total_tokens is not None:
            n = args.max_total_tokens
        elif self.device == "cuda":
            free, total = torch.cuda.mem_get_info()
            # 权重已加载：剩余可用 = 空闲 − 总量 × (1 − fraction)。Weights are loaded already.
            n = int((free - total * (1 - args.mem_fraction_static)) // per_token)
            if n <= 0:
                raise RuntimeError("no GPU memory left for the KV cache: raise --mem-fraction-static or use a smaller model")
        else:
            n = min(CPU_KV_BUDGET_BYTES // per_token, CPU_MAX_TOTAL_TOKENS)
        # 超过“所有请求都跑满上下文”的容量没有用处。More than every request at full context is never used.
        n = min(n, args.max_running_requests * cfg.context_len)
        # 各 rank 空闲显存可能不同，但调度必须一致：取最小值。Ranks may differ in free memory; schedule on the minimum.
        n = distributed.all_reduce_min(n)
        n = n // self.page_size * self.page_size
        logger.info("KV pool: %d tokens (%.1f MiB, %d bytes/token)", n, n * per_token / 2**20, per_token)
        return n

    def _make_attn_backend(self, name: str):
        if name == "torch":
            from minisgl.runner.attention.torch_backend import TorchAttnBackend

            return TorchAttnBackend()
        if name == "triton":
            from minisgl.runner.attention.triton_backend import TritonAttnBackend

            return TritonAttnBackend(self)
        raise ValueError(f"unknown attention backend {name!r}")

    @torch.inference_mode()
    def forward(self, fb: ForwardBatch) -> torch.Tensor:
        """执行一次前向，返回每个请求最后位置的 logits [bs, V]（float32）。

        Run one forward pass; return the last position's logits of each request, [bs, V] float32.
        """
        fb.req_to_token_pool = self.req_to_token_pool
        fb.token_to_kv_pool = self.token_to_kv_pool
        fb.attn_backend = self.attn_backend
        if self.lora_manager is not None:  # 本 batch 的适配器 → 槽位与分段 / adapters → slots and segments
            self.lora_manager.prepare(fb)
        if self.cuda_graph_runner is not None and self.cuda_graph_runner.can_run(fb):
            return self.cuda_graph_runner.replay(fb)
        self.attn_backend.init_forward_metadata(fb)
        hidden = self.model(fb.input_ids, fb.positions, fb)  # [N, hidden]
        if fb.forward_mode.is_extend():
            last = to_device(fb.extend_seq_lens, torch.int64, hidden.device).cumsum(0) - 1  # [bs]
            hidden = hidden[last]
        return self.model.compute_logits(hidden)
