# ================================================================================
# 🎬 CUDA Graph：把一次 decode 前向录下来，之后只回放
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   decode 一步要发射几百个小 GPU kernel（每层十几个 × 28 层），CPU 发射它们的时间比 GPU 算它们
#   还长。CUDA graph 把整次前向（含注意力和 LM head）录一次，之后一条命令回放。对若干个 batch 大小
#   各录一份；实际 batch 向上填充到最近的录制大小。采样在图外面做。
#   A decode step launches hundreds of small kernels and the CPU takes longer to launch them than
#   the GPU takes to run them. A CUDA graph records the whole forward once per batch size and
#   replays it with one call; a real batch is padded up to the nearest recorded size. Sampling
#   stays outside the graph.
#
# 【生活比喻】Metaphor
#   录好的舞步：一次录制，反复回放；每次只换舞者手里的道具（静态缓冲区里的新输入）。
#   A recorded dance, replayed: the steps never change, only the props in the dancers' hands
#   (the new inputs copied into the static buffers).
#
# 【核心架构】Architecture
#   静态缓冲区 static buffers: input_ids / positions / out_cache_loc / req_pool_indices / seq_lens [max_bs]
#          │ replay(fb): copy_ 真实输入 + 填充 padding
#          ▼
#   graphs[bs_padded].replay() ──► logits_buffer[:bs_padded] ──► 取前 bs 行 / take the first bs rows
#
# 【工作流程】Workflow
#   1. capture()：从大到小，对每个 bs 先热身两次再录制（共享一个显存池）；注意力元数据的计算也录进图。
#      Largest first, two warm-ups, then capture; the attention-metadata kernels are captured too.
#   2. can_run(bs)：bs ≤ 最大录制大小。
#   3. replay(fb)：拷贝输入 → padding 行指向哑槽位/哑行 → 回放（图里先算元数据，再前向）。
#      Copy the inputs, point padded rows at the dummy slot/row, replay (metadata, then the forward).
#
# 【关键概念】Key Concepts
#   - 填充行：out_cache_loc = 0（哑槽位）、req_pool_indices = 哑行（其 req_to_token 全 0）、seq_len = 1，
#     它们算出的结果被丢弃，写入只落在哑槽位上，不会弄脏真实请求的 KV。
#     Padded rows write only to the dummy slot and their outputs are dropped.
#   - 录制时的地址必须在回放时仍然有效：所有输入、输出、工作区都是预先分配的固定张量。
#   - 共享前缀（cascade 注意力，第 08 章）的第二套图：batch ≥ 16 时每个大小再录一张；回放前主机把这一步的
#     组写进后端的固定缓冲区（write_cascade_plan），图里的内核按最大组数启动。没有组时回放普通图。
#     A second set of graphs with cascade attention (chapter 08), for bs ≥ 16: before a replay the host
#     writes the step's groups into the backend's fixed buffers; without groups the plain graph runs.
#
# 【使用方式】Usage
#   默认在 GPU 上开启；--disable-cuda-graph 关闭，--cuda-graph-max-bs 限制最大录制大小。
#
# 【对应章节】Chapter: docs/zh/07-model-inference.md
# ================================================================================
from __future__ import annotations

import bisect
import gc
import logging
import time
from typing import Dict, List

import torch

from minisgl.runner.forward_batch import ForwardBatch, ForwardMode

logger = logging.getLogger(__name__)


# 更小的 batch 不录 cascade 图：组少、省得少，而每张图都占显存与启动时间。
# Smaller batches get no cascade graph: few groups, little to save, and every graph costs memory and startup.
CASCADE_MIN_GRAPH_BS = 16


def capture_batch_sizes(max_bs: int) -> List[int]:
    sizes = [1, 2, 4, 8] + list(range(16, 257, 16)) + list(range(288, 1025, 32))
    return [s for s in sizes if s <= max_bs] or [1]


class CudaGraphRunner:
    """decode 的 CUDA graph（见文件头）。CUDA graphs for decode; see the file header."""

    def __init__(self, model_runner, max_bs: int):
        self.mr = model_runner
        self.device = model_runner.device
        self.batch_sizes = capture_batch_sizes(max_bs)
        self.max_bs = self.batch_sizes[-1]
        dev, n = self.device, self.max_bs
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=dev)
        self.positions = torch.zeros(n, dtype=torch.int64, device=dev)
        self.out_cache_loc = torch.zeros(n, dtype=torch.int64, device=dev)  # 0 = 哑槽位 / dummy slot
        self.req_pool_indices = torch.full((n,), model_runner.dummy_req_idx, dtype=torch.int64, device=dev)
        self.seq_lens = torch.ones(n, dtype=torch.int64, device=dev)
        self.graphs: Dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: Dict[int, torch.Tensor] = {}
        # 共享前缀（cascade）的第二套图：只有 Triton 后端、开着 radix 缓存、batch ≥ CASCADE_MIN_GRAPH_BS 时录。
        # A second set of graphs with cascade attention (Triton backend, radix cache on, bs ≥ 16).
        args = model_runner.server_args
        self.cascade = (hasattr(model_runner.attn_backend, "init_cascade_device") and not args.disable_radix_cache
                        and not args.disable_cascade_attention)
        self.cascade_graphs: Dict[int, torch.cuda.CUDAGraph] = {}
        self.cascade_outputs: Dict[int, torch.Tensor] = {}
        self.pool = None

    def _static_batch(self, bs: int) -> ForwardBatch:
        mr = self.mr
        return ForwardBatch(
            forward_mode=ForwardMode.DECODE, batch_size=bs, input_ids=self.input_ids[:bs],
            positions=self.positions[:bs], out_cache_loc=self.out_cache_loc[:bs],
            req_pool_indices=self.req_pool_indices[:bs], seq_lens=self.seq_lens[:bs],
            seq_lens_cpu=[1] * bs, extend_prefix_lens=[0] * bs, extend_seq_lens=[1] * bs,
            req_to_token_pool=mr.req_to_token_pool, token_to_kv_pool=mr.token_to_kv_pool,
            attn_backend=mr.attn_backend,
        )

    @torch.inference_mode()
    def capture(self) -> None:
        # 录制期间别让垃圾回收插进来：回收掉的旧对象（例如上一个引擎的 CUDA graph）在析构时调用的
        # CUDA API 会让正在录制的图作废。先收一遍，录制时关掉（同 SGLang 的 freeze_gc）。
        # Keep the garbage collector out of the capture: an old object collected mid-capture (say, a
        # previous engine's CUDA graph) calls CUDA APIs in its destructor and invalidates the capture.
        # Collect first, then pause it while capturing (as SGLang's freeze_gc does).
        gc.collect()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._capture_all()
        finally:
            if was_enabled:
                gc.enable()
        # 启动时间的一大块 / a large part of start-up time
        logger.info("CUDA graph capture took %.1f s", time.perf_counter() - t0)

    def _capture_all(self) -> None:
        model = self.mr.model
        stream = torch.cuda.Stream()
        for bs in reversed(self.batch_sizes):  # 大的先录，小的复用它的显存池 / largest first, reuse its pool
            fb = self._static_batch(bs)
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # 热身：触发 Triton 编译与 cuBLAS 初始化 / warm-up
                    self.mr.attn_backend.init_forward_metadata(fb)
                    model.compute_logits(model(fb.input_ids, fb.positions, fb))
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool, stream=stream):
                # 元数据（kv_indptr、kv_indices、段数）只依赖固定缓冲区，一起录进图：回放时省下十来次 kernel 启动。
                # The metadata (kv_indptr, kv_indices, splits) reads only the fixed buffers, so it is
                # captured too: a replay saves a dozen kernel launches of host time.
                self.mr.attn_backend.init_forward_metadata(fb)
                out = model.compute_logits(model(fb.input_ids, fb.positions, fb))
            self.pool = self.pool or graph.pool()
            self.graphs[bs], self.outputs[bs] = graph, out
            if self.cascade and bs >= CASCADE_MIN_GRAPH_BS:
                self.cascade_graphs[bs], self.cascade_outputs[bs] = self._capture_cascade(fb, stream)
        torch.cuda.synchronize()
        logger.info("captured %d CUDA graphs for decode batch sizes %s", len(self.graphs) + len(self.cascade_graphs),
                    self.batch_sizes)

    def _capture_cascade(self, fb: ForwardBatch, stream):
        """录一张带 cascade 的图：只录设备那一半（init_cascade_device），组的数据回放前由主机写入。

        Capture the cascade variant: only the device half (init_cascade_device) is recorded; the
        groups are written by the host (write_cascade_plan) before each replay.
        """
        model, backend = self.mr.model, self.mr.attn_backend
        with torch.cuda.stream(stream):
            for _ in range(2):  # 热身：编译前缀级内核 / warm-up: compile the prefix-level kernels
                backend.init_cascade_device(fb)
                model.compute_logits(model(fb.input_ids, fb.positions, fb))
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, stream=stream):
            backend.init_cascade_device(fb)
            out = model.compute_logits(model(fb.input_ids, fb.positions, fb))
        return graph, out

    def can_run(self, fb: ForwardBatch) -> bool:
        return fb.forward_mode.is_decode() and fb.batch_size <= self.max_bs

    def replay(self, fb: ForwardBatch) -> torch.Tensor:
        bs = fb.batch_size
        padded = self.batch_sizes[bisect.bisect_left(self.batch_sizes, bs)]
        # 有共享前缀组且录过这个大小的 cascade 图：写组数据、回放它；否则普通图（读全部前缀，结果相同）。
        # With prefix groups and a cascade graph of this size: write the groups and replay it; else the
        # plain graph (it reads every prefix in full: the same result, more bytes).
        graph, output = self.graphs[padded], self.outputs[padded]
        if (fb.prefix_groups is not None and padded in self.cascade_graphs
                and self.mr.attn_backend.write_cascade_plan(fb)):
            graph, output = self.cascade_graphs[padded], self.cascade_outputs[padded]
        # ======== 第1步：拷贝输入，并重置填充行 / Step 1: copy inputs, reset the padded rows ========
        self.input_ids[:bs].copy_(fb.input_ids)
        self.positions[:bs].copy_(fb.positions)
        self.out_cache_loc[:bs].copy_(fb.out_cache_loc)
        self.req_pool_indices[:bs].copy_(fb.req_pool_indices)
        self.seq_lens[:bs].copy_(fb.seq_lens)
        if padded > bs:
            self.out_cache_loc[bs:padded].zero_()
            self.req_pool_indices[bs:padded].fill_(self.mr.dummy_req_idx)
            self.seq_lens[bs:padded].fill_(1)
        # ======== 第2步：回放（元数据在图里算）/ Step 2: replay (the graph computes the metadata) ========
        graph.replay()
        return output[:bs]
