# ================================================================================
# 🧑‍🍳 调度器（Scheduler）：连续批处理的事件循环
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   引擎的心脏。每调用一次 step() 就跑一轮：处理中止 → 选出下一批（优先 prefill，否则 decode，
#   内存不够时 retraction）→ 前向 → 采样 → 检查结束 → 把 KV 交给前缀缓存。
#   同一个类既被服务器的调度进程循环调用，也可以在笔记本里一步一步调用。
#   The engine's heart. Each step(): handle aborts → pick the next batch (prefill first, else
#   decode, retracting when memory runs out) → forward → sample → check finished → hand KV to the
#   prefix cache. The server's scheduler process loops over it; a notebook calls it one step at a time.
#
# 【生活比喻】Metaphor
#   餐厅领班：门口有排队的客人（waiting_queue），店里有正在用餐的桌（running_reqs）。
#   每一轮，领班先看能不能再安排新客人入座（prefill），不能就让在座的每桌再上一道菜（decode）；
#   座位不够时请最后来的一桌先回到队里等（retraction），他们点过的菜记着，回来接着上。
#   A restaurant host: a queue at the door, tables being served. Each round the host seats new
#   parties if possible (prefill), otherwise every table gets its next course (decode); when seats
#   run out, the newest party goes back to the queue (retraction), their order kept.
#
# 【核心架构】Architecture
#   Scheduler
#    ├─ waiting_queue: List[Req]        ├─ tree_cache: RadixCache | ChunkCache
#    ├─ running_reqs: List[Req]         ├─ policy: SchedulePolicy (fcfs | lpm)
#    ├─ chunked_req: Optional[Req]      ├─ model_runner: ModelRunner（模型 + KV 池）
#    ├─ sampler: Sampler                └─ tokenizer（stop 字符串检查、语法的词表 / stop strings, grammar vocab）
#    └─ grammar_queue: 等语法编译的请求（结构化输出，第 11 章）/ requests waiting for their grammar (ch. 11)
#
#   step():   （_process_aborts 之后先 move_ready_grammar_requests / then grammar-ready requests join）
#     _process_aborts ─► get_new_batch_prefill ──有/yes──► run EXTEND ─┐
#                              │无/no                                   ├─► process_batch_result
#                              └─► update_running_batch ─► run DECODE ─┘        │
#                                   (内存不够 → retract_decode)                  ▼
#                                                                  StepOutput(BatchTokenIDOut)
#
# 【工作流程】Workflow
#   1. prefill 优先：新请求尽快拿到第一个 token（TTFT 低）。Prefill first: low time-to-first-token.
#   2. prefill 后的请求并入 running_reqs，下一步一起 decode：这就是连续批处理（continuous batching）——
#      batch 每一步都可以变，结束的请求立刻离开，新请求随时加入。
#      The batch changes every step: finished requests leave at once, new ones join any time.
#   3. decode 前检查 KV 内存；不够先驱逐缓存，仍不够就 retraction。
#
# 【关键概念】Key Concepts
#   - 不丢请求：被 retraction 的请求回到队首，已生成的 token 保留，重新 prefill 后继续。
#     Nothing is lost: a retracted request keeps its output and resumes after a re-prefill.
#   - 不泄漏：每个结束的请求都经过 cache_finished_req；空闲时 check_pool_whole() 验证
#     free + 缓存 == 容量，且没有节点被锁。No leaks: checked by check_pool_whole().
#   - 名字沿用 SGLang：get_new_batch_prefill、update_running_batch、retract_decode、
#     process_batch_result、new_token_ratio。
#
# 【使用方式】Usage
#   >>> sched = Scheduler(ServerArgs().resolve())
#   >>> sched.add_request(TokenizedGenerateReqInput("r1", None, ids, SamplingParams(max_new_tokens=8)))
#   >>> while sched.has_work(): print(sched.step())
#
# 【对应章节】Chapter: docs/zh/06-scheduling.md
# ================================================================================
from __future__ import annotations

import concurrent.futures
import logging
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch

from minisgl import distributed
from minisgl.constrained.base_grammar_backend import InvalidGrammarError, create_grammar_backend, grammar_key
from minisgl.io_struct import BatchTokenIDOut, TokenizedGenerateReqInput, unknown_lora_message
from minisgl.mem_cache.chunk_cache import ChunkCache
from minisgl.mem_cache.radix_cache import RadixCache
from minisgl.runner.forward_batch import ForwardBatch, ForwardMode, plan_prefix_groups
from minisgl.sampling.logprobs import check_logprob_args, gather_logprobs, select_logprob_rows
from minisgl.sampling.sampler import Sampler
from minisgl.scheduler.schedule_batch import FINISH_ABORT, Req
from minisgl.scheduler.schedule_policy import (AddReqResult, PrefillAdder, SchedulePolicy, prompt_head,
                                               wait_for_shared_prefix)
from minisgl.server_args import ServerArgs
from minisgl.utils import check_token_ids, host_tensor, to_device

logger = logging.getLogger(__name__)

INIT_NEW_TOKEN_RATIO = 0.7
MIN_NEW_TOKEN_RATIO = 0.1
NEW_TOKEN_RATIO_DECAY = 0.001
GRAMMAR_POLL_S = 0.005  # 只有语法在编译时，每步最多等这么久（不空转）/ the wait per step when only compiles are pending
GRAMMAR_TIMEOUT_S = 300.0  # 编译这么久还没好：abort（同 SGLang 的默认值）/ give up on a compile (SGLang's default)


@dataclass
class StepOutput:
    """一步做了什么（给笔记本和测试看）。What one step did, for notebooks and tests."""

    forward_mode: Optional[ForwardMode]
    rids: List[str] = field(default_factory=list)
    num_tokens: int = 0
    out: BatchTokenIDOut = field(default_factory=BatchTokenIDOut)
    retracted: List[str] = field(default_factory=list)
    duration_s: float = 0.0

    def __repr__(self) -> str:
        mode = self.forward_mode.name if self.forward_mode else "IDLE"
        extra = f", retracted={len(self.retracted)}" if self.retracted else ""
        done = sum(1 for f in self.out.finished_reasons if f)
        return f"StepOutput({mode}, bs={len(self.rids)}, tokens={self.num_tokens}, finished={done}{extra})"


def needs_last_token(req: Req) -> bool:
    """这个请求的下一次采样要读它自己的输出（语法、惩罚、min_new_tokens）：重叠调度得先等上一步。

    The request's next sampling reads its own output (grammar, penalties, min_new_tokens), so the
    overlap scheduler must have the previous step's token on the host first.
    """
    p = req.sampling_params
    return (req.grammar is not None or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0
            or p.repetition_penalty != 1.0 or len(req.output_ids) < p.min_new_tokens)


def _lora_ids(reqs: List[Req]) -> Optional[List[Optional[str]]]:
    # 每个请求的适配器（LoRAManager.prepare 据此分段）；没人用适配器时为 None。
    # Each request's adapter (LoRAManager.prepare cuts segments from it); None when nobody uses one.
    return [r.lora_id for r in reqs] if any(r.lora_id is not None for r in reqs) else None


@dataclass
class LaunchedBatch:
    """已发射、结果可能还在路上的一批（重叠调度的“期货”）。A launched batch whose result may still be on its way.

    The forward pass and the sampling are queued on the device; `host_ids` receives the sampled
    ids (row 0) and the bad-row flags (row 1) through an asynchronous copy that `done` marks.
    """

    reqs: List[Req]
    mode: ForwardMode
    num_tokens: int
    host_ids: torch.Tensor  # [2, bs] int64，CPU（锁页内存 / pinned on GPU machines）
    done: Optional["torch.cuda.Event"]  # None：CPU 上拷贝已完成 / None: on CPU the copy is complete
    logprobs: Optional[list] = None
    # 发射时每行是不是分块 prefill 的中间一块（处理结果时请求可能已进入下一块，所以在这里记下）。
    # Whether each row was a middle chunk at launch (by the time the result is processed the request
    # may be in its next chunk already, so the flag is taken here). None for decode.
    chunked: Optional[List[bool]] = None

    def results(self) -> Tuple[List[int], List[bool]]:
        """等这批在设备上算完，拿回 token。Wait for the device, then read the tokens."""
        if self.done is not None:
            self.done.synchronize()
        ids, bad = self.host_ids.tolist()
        return ids, [bool(b) for b in bad]


class Scheduler:
    """连续批处理调度器（见文件头）。The continuous-batching scheduler; see the file header."""

    def __init__(self, server_args: ServerArgs, model_runner=None, tokenizer=None):
        from minisgl.runner.model_runner import ModelRunner
        from minisgl.utils import load_tokenizer

        self.server_args = args = server_args
        self.model_runner = model_runner or ModelRunner(args)
        self.model_config = self.model_runner.model_config
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(args.tokenizer_path)
        self.req_to_token_pool = self.model_runner.req_to_token_pool
        self.token_to_kv_pool_allocator = self.model_runner.token_to_kv_pool_allocator
        self.page_size = args.page_size
        cache_cls = ChunkCache if args.disable_radix_cache else RadixCache
        self.tree_cache = cache_cls(self.req_to_token_pool, self.token_to_kv_pool_allocator, self.page_size)
        self.policy = SchedulePolicy(args.schedule_policy, self.tree_cache, args.disable_radix_cache)
        self.sampler = Sampler()
        self.eos_token_ids = set(self.model_config.eos_token_ids)
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            self.eos_token_ids.add(self.tokenizer.eos_token_id)

        self.waiting_queue: List[Req] = []
        self.running_reqs: List[Req] = []
        self.chunked_req: Optional[Req] = None
        # 结构化输出：语法在后台编译，编好之前请求在 grammar_queue 里等（同 SGLang）。
        # Structured output: grammars compile in the background; until then the request waits here.
        self.grammar_queue: List[Tuple[Req, concurrent.futures.Future]] = []
        self.grammar_backend = None  # 第一个带约束的请求到来时才创建 / made on the first constrained request
        # 预留比例随 --schedule-conservativeness 缩放（同 SGLang）。Scaled by conservativeness, as in SGLang.
        self.init_new_token_ratio = min(INIT_NEW_TOKEN_RATIO * args.schedule_conservativeness, 1.0)
        self.min_new_token_ratio = min(MIN_NEW_TOKEN_RATIO * args.schedule_conservativeness, 1.0)
        self.new_token_ratio = self.init_new_token_ratio
        self.max_running_requests = min(args.max_running_requests, self.req_to_token_pool.capacity)
        self.context_len = self.model_config.context_len
        self._pending_out = BatchTokenIDOut()  # 不经过前向就结束的请求 / requests ended without a forward
        self.forward_ct = 0
        self.num_retractions = 0
        # 多 LoRA：已加载的适配器名；一个 batch 里不同适配器的上限（= 设备上的槽位数，minisgl/lora/）。
        # Multi-LoRA: the loaded adapter names; the cap on distinct adapters per batch (= device slots).
        lora_manager = getattr(self.model_runner, "lora_manager", None)
        self.lora_names = set(lora_manager.names) if lora_manager is not None else set()
        self.max_loras_per_batch = args.max_loras_per_batch
        # 重叠调度（第 06 章）：最近发射、结果还没处理的一批。Overlap (chapter 06): the launched, unprocessed batch.
        self.enable_overlap = args.enable_overlap_schedule
        # 共享前缀只读一次的 decode 注意力只有 Triton 后端实现（torch 后端照常读全部）。
        # Cascade decode attention exists in the Triton backend only.
        self.enable_cascade = args.attention_backend == "triton" and not args.disable_cascade_attention
        self.inflight: Optional[LaunchedBatch] = None
        # 每个 req_to_token 行最近采出的 token，留在设备上：decode 的输入从这里取，CPU 不必先拿到上一步的结果。
        # The latest sampled token of each req_to_token row, kept on the device: decode reads its
        # inputs from here, so the CPU need not have the previous step's result (SGLang's future map).
        self.last_token_ids = torch.zeros(self.req_to_token_pool.size, dtype=torch.int64,
                                          device=self.model_runner.device)

    # ======== 请求进出 / Requests in and out ========
    def add_request(self, recv: TokenizedGenerateReqInput) -> Req:
        """接收一个分词后的请求。输入不合法时请求立即以 abort 结束（不会抛异常拖垮循环）。

        Take one tokenized request. Invalid input finishes it at once with an abort reason,
        never an exception that would stop the loop.
        """
        params = recv.sampling_params
        req = Req(recv.rid, recv.input_ids, params, self.eos_token_ids, recv.input_text, recv.stream,
                  lora_id=getattr(recv, "lora_path", None))
        req.return_logprob, req.top_logprobs_num = recv.return_logprob, recv.top_logprobs_num
        error = self._validate(req, ids_checked=recv.ids_checked)
        if error:
            req.finished_reason = FINISH_ABORT(error)
            self._pending_out.add(req, [])
            return req
        # 生成长度不能超出上下文：截短 max_new_tokens。Clip max_new_tokens to the context window.
        params.max_new_tokens = min(params.max_new_tokens, self.context_len - len(req.origin_input_ids))
        if params.max_new_tokens == 0:
            req.finished_reason = self._length_reason(req)
            self._pending_out.add(req, [])
            return req
        if grammar_key(params) is not None:
            self._queue_for_grammar(req)
            return req
        self.waiting_queue.append(req)
        return req

    def _queue_for_grammar(self, req: Req) -> None:
        """提交语法编译（命中缓存时 Future 已完成），请求进 grammar_queue。Submit the compile; queue the request.

        Never blocks: the compile runs in the grammar backend's thread pool.
        """
        if self.grammar_backend is None:
            try:
                self.grammar_backend = create_grammar_backend(
                    "xgrammar", self.tokenizer, self.model_config.vocab_size, self.eos_token_ids)
            except (ImportError, ValueError) as e:  # 服务器缺依赖：不是输入的错 / missing on the server side
                req.finished_reason = FINISH_ABORT(str(e), status_code=501)
                self._pending_out.add(req, [])
                return
        future = self.grammar_backend.get_cached_or_future_value(grammar_key(req.sampling_params))
        self.grammar_queue.append((req, future))

    def move_ready_grammar_requests(self, out: BatchTokenIDOut) -> None:
        """编好语法的请求（按到达顺序）移进 waiting_queue；编译失败的以 400 abort 结束。

        Move requests whose grammar is ready (in arrival order) to the waiting queue; a failed
        compile ends its request with a 400 abort. Under tensor parallelism every rank moves the
        same number (the minimum over ranks), so the schedulers stay in step.
        """
        if not self.grammar_queue:
            return
        if not (self.waiting_queue or self.running_reqs or self.chunked_req):
            # 别的都没事可做：等一会儿编译结果，而不是空转。Nothing else to do: wait briefly, don't spin.
            concurrent.futures.wait([f for _, f in self.grammar_queue], timeout=GRAMMAR_POLL_S,
                                    return_when=concurrent.futures.FIRST_COMPLETED)
        now = time.perf_counter()
        n_ready = 0
        for req, fut in self.grammar_queue:
            if not (fut.done() or now - req.created_time > GRAMMAR_TIMEOUT_S):
                break
            n_ready += 1
        n_ready = distributed.all_reduce_min(n_ready)
        ready, self.grammar_queue = self.grammar_queue[:n_ready], self.grammar_queue[n_ready:]
        for req, fut in ready:
            error, status = None, 400
            if not fut.done():
                error, status = f"the grammar did not compile within {GRAMMAR_TIMEOUT_S:.0f} s", 503
            elif fut.cancelled():  # 后端已关闭 / the backend shut down
                error, status = "the grammar compilation was cancelled", 503
            elif fut.exception() is not None:
                e = fut.exception()
                if not isinstance(e, InvalidGrammarError):  # 库自己的故障 / the library's own failure
                    error, status = f"grammar compilation failed: {type(e).__name__}: {e}", 500
                else:
                    error = str(e)
            if error is not None:
                req.finished_reason = FINISH_ABORT(error, status_code=status)
                out.add(req, [])
                continue
            req.grammar = fut.result().copy()  # 缓存的是模板，每个请求一个新匹配器 / a fresh matcher each
            self.waiting_queue.append(req)

    def _validate(self, req: Req, ids_checked: bool = False) -> Optional[str]:
        ids, vocab = req.origin_input_ids, self.model_config.vocab_size
        if len(ids) == 0:
            return "the prompt is empty (0 tokens)"
        if len(ids) >= self.context_len:
            return f"the prompt has {len(ids)} tokens; the context length is {self.context_len}"
        error = None if ids_checked else check_token_ids(ids, vocab)
        if error:
            return error
        capacity = self.token_to_kv_pool_allocator.size
        if len(ids) + 1 > capacity:
            return f"the prompt ({len(ids)} tokens) does not fit the KV pool ({capacity} tokens)"
        if req.lora_id is not None and req.lora_id not in self.lora_names:
            return unknown_lora_message(req.lora_id, self.lora_names)
        try:
            req.sampling_params.verify(vocab)
            check_logprob_args(req.return_logprob, req.top_logprobs_num)
        except ValueError as e:
            return str(e)
        return None

    @staticmethod
    def _length_reason(req: Req):
        from minisgl.scheduler.schedule_batch import FINISH_LENGTH

        return FINISH_LENGTH(req.sampling_params.max_new_tokens)

    def abort_request(self, rid: str, message: str = "aborted by the client") -> None:
        """中止：排队中的立刻移除；运行中的在下一步开始时释放。Queued: removed now; running: at the next step."""
        for req in list(self.waiting_queue):
            if req.rid == rid:
                self.waiting_queue.remove(req)
                if req.req_pool_idx is not None:  # 不应发生，保险起见 / defensive
                    self._release(req)
                req.finished_reason = FINISH_ABORT(message)
                self._pending_out.add(req, [])
        for req, fut in list(self.grammar_queue):  # 还在等语法：直接移除（编译结果仍会进缓存）/ still compiling
            if req.rid == rid:
                self.grammar_queue.remove((req, fut))
                req.finished_reason = FINISH_ABORT(message)
                self._pending_out.add(req, [])
        for req in self.running_reqs + ([self.chunked_req] if self.chunked_req else []):
            if req.rid == rid:
                req.to_abort = message

    def _process_aborts(self, out: BatchTokenIDOut) -> None:
        for req in [r for r in self.running_reqs if r.to_abort]:
            self.running_reqs.remove(req)
            req.check_finished()
            self.tree_cache.cache_finished_req(req)
            out.add(req, [])
        if self.chunked_req is not None and self.chunked_req.to_abort:
            req, self.chunked_req = self.chunked_req, None
            req.check_finished()
            self.tree_cache.cache_finished_req(req)
            out.add(req, [])

    def has_work(self) -> bool:
        return bool(self.waiting_queue or self.running_reqs or self.chunked_req or len(self._pending_out)
                    or self.grammar_queue or self.inflight is not None)

    # ======== 一步 / One step ========
    def step(self) -> StepOutput:
        """跑一轮调度（见文件头的流程图）。Run one scheduling iteration (see the header).

        With overlap scheduling on (the default on GPU) the iteration launches the next batch
        first and then processes the previous one, so StepOutput.out holds the previous batch's tokens.
        """
        return self._step_overlap() if self.enable_overlap else self._step_normal()

    def _step_normal(self) -> StepOutput:
        t0 = time.perf_counter()
        out, self._pending_out = self._pending_out, BatchTokenIDOut()
        self._process_aborts(out)
        self.move_ready_grammar_requests(out)
        batch, mode, retracted = self._schedule(out)
        launched = self.run_batch(batch, mode) if batch else None
        if launched is not None:
            self._process_launched(launched, out)
        return self._step_output(launched, out, retracted, t0)

    def _step_overlap(self) -> StepOutput:
        """重叠调度：先发射下一批，再处理上一批；CPU 的活藏在 GPU 的计算后面。

        Overlap scheduling (SGLang's event_loop_overlap): launch batch N+1, then process batch N
        while the device computes N+1, so the host work of a step hides behind the device's.
        Decode inputs come from last_token_ids on the device, so N+1 needs no token of N on the host,
        and an extend's bookkeeping (join the running batch, insert the prompt into the prefix tree)
        is done at launch (_admit_extend), so N+1 needs nothing else of N either, even after a prefill.
        A request that finishes at N is already in N+1: that extra token is dropped (it costs one
        row of one step). Wait for N first only when N holds a request whose sampling reads its own
        output (grammar, penalties, min_new_tokens).
        """
        t0 = time.perf_counter()
        out, self._pending_out = self._pending_out, BatchTokenIDOut()
        if self.inflight is not None and any(needs_last_token(r) for r in self.inflight.reqs):
            self.sync_inflight(out)
        self._process_aborts(out)
        self.move_ready_grammar_requests(out)
        batch, mode, retracted = self._schedule(out)
        if self.inflight is not None and mode is ForwardMode.DECODE:
            # 在路上的那一批里已采到最后一个 token 的请求一定会按长度结束：不再给它们算一步。
            # A request whose in-flight token is its last (max_new_tokens) surely ends: no step for it.
            flying = {id(r) for r in self.inflight.reqs}
            batch = [r for r in batch
                     if id(r) not in flying or len(r.output_ids) + 1 < r.sampling_params.max_new_tokens]
        launched = self.run_batch(batch, mode) if batch else None
        self.sync_inflight(out)  # 设备已在算 launched；现在处理上一批 / the device runs `launched`; process N now
        self.inflight = launched
        return self._step_output(launched, out, retracted, t0)

    @staticmethod
    def _step_output(launched: Optional["LaunchedBatch"], out: BatchTokenIDOut, retracted: List[str],
                     t0: float) -> StepOutput:
        if launched is None:
            return StepOutput(None, out=out, retracted=retracted, duration_s=time.perf_counter() - t0)
        return StepOutput(launched.mode, [r.rid for r in launched.reqs], launched.num_tokens, out, retracted,
                          time.perf_counter() - t0)

    def _schedule(self, out: BatchTokenIDOut) -> Tuple[Optional[List[Req]], ForwardMode, List[str]]:
        """选下一批：prefill 优先，否则 decode（必要时 retraction）。Pick the next batch: prefill first, else decode."""
        retracted: List[str] = []
        batch, mode = self.get_new_batch_prefill(), ForwardMode.EXTEND
        if batch is None and self.running_reqs:
            batch, retracted = self.update_running_batch(out)
            mode = ForwardMode.DECODE
        return batch, mode, retracted

    def run_batch(self, batch: List[Req], mode: ForwardMode) -> LaunchedBatch:
        """准备输入、前向、采样，把结果排进一次异步拷贝；不等设备算完。

        Prepare the inputs, run the forward pass and the sampler, and queue one asynchronous copy
        of the result; the host does not wait for the device (except for logprobs, which are rare).
        """
        fb = self._prepare_extend(batch) if mode.is_extend() else self._prepare_decode(batch)
        logits = self.model_runner.forward(fb)
        # logprobs 用采样之前的原始 logits；没人要时什么也不算。Raw logits, before sampling; nothing if nobody asks.
        logprob_rows = select_logprob_rows(logits, batch)
        next_ids, bad = self.sampler.sample(logits, batch)
        # 张量并行：所有 rank 用 rank 0 采出的 token，调度状态因此逐步一致（tp=1 时什么也不做）。
        # Tensor parallel: every rank takes rank 0's tokens, so all schedulers stay in step (no-op at tp=1).
        next_ids = distributed.broadcast_tensor(next_ids)
        self.last_token_ids[fb.req_pool_indices] = next_ids  # 下一步 decode 的输入 / the next decode's input
        self.forward_ct += 1
        logprobs = gather_logprobs(logprob_rows, next_ids, batch) if logprob_rows else None
        both = torch.stack([next_ids, bad.long()])  # [2, bs]
        done = None
        if both.is_cuda:
            host = torch.empty(both.shape, dtype=both.dtype, pin_memory=True)
            host.copy_(both, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            both = host
        chunked = None
        if mode.is_extend():
            chunked = [r.is_chunked for r in batch]
            self._admit_extend(batch)
        return LaunchedBatch(batch, mode, len(fb.input_ids), both, done, logprobs, chunked)

    def _admit_extend(self, batch: List[Req]) -> None:
        """prefill 刚排进设备：现在就把算好的 prompt 插进前缀树，做完 prefill 的请求加入 running_reqs。

        Bookkeeping of a just-launched extend that needs none of its sampled tokens: insert the
        prompt KV into the prefix tree (cache_unfinished_req) and let fully prefilled requests join
        running_reqs. The overlap scheduler can then schedule the next batch while this one runs.
        Safe before the device has computed the KV: every later batch that reads these slots (a
        request matching this prefix, the next chunk, the next decode) is queued after this one on
        the same stream. Done after the forward is queued, because cache_unfinished_req may repoint
        the row at the tree's copy of a duplicated prefix.
        """
        for req in batch:
            self.tree_cache.cache_unfinished_req(req)
            if not req.is_chunked:
                self.running_reqs.append(req)

    def _process_launched(self, launched: LaunchedBatch, out: BatchTokenIDOut) -> None:
        next_ids, bad_rows = launched.results()
        self.process_batch_result(launched.reqs, launched.mode, next_ids, bad_rows, out, launched.logprobs,
                                  launched.chunked)

    def sync_inflight(self, out: Optional[BatchTokenIDOut] = None) -> BatchTokenIDOut:
        """处理还在路上的那一批（重叠调度），不发射新的。Process the in-flight batch without launching another.

        Its tokens go into `out` (a new BatchTokenIDOut when None), which is returned.
        """
        out = BatchTokenIDOut() if out is None else out
        if self.inflight is not None:
            launched, self.inflight = self.inflight, None
            self._process_launched(launched, out)
        return out

    def run_until_idle(self, max_steps: int = 1_000_000) -> List[StepOutput]:
        outs = []
        while self.has_work() and len(outs) < max_steps:
            outs.append(self.step())
        return outs

    # ======== prefill ========
    def get_new_batch_prefill(self) -> Optional[List[Req]]:
        """按策略与预算选出本轮 prefill 的请求。Choose this round's prefill requests."""
        if not self.waiting_queue and self.chunked_req is None:
            return None
        if self.chunked_req is None and len(self.running_reqs) >= self.max_running_requests:
            # 满员时谁也接不进来：连排序（lpm 要对整个队列查树）都省掉。Full: skip even the sort.
            return None
        args = self.server_args
        adder = PrefillAdder(
            self.tree_cache, self.token_to_kv_pool_allocator, self.running_reqs, self.new_token_ratio,
            args.max_prefill_tokens, args.chunked_prefill_size, self.page_size,
        )
        chunked = self.chunked_req
        if chunked is not None:
            adder.add_chunked_req(chunked)
        lpm = self.policy.calc_priority(self.waiting_queue) == "lpm"
        # 本轮已接纳请求的开头（lpm 的批内去重用）/ heads of this round's admissions (lpm's in-batch dedup)
        heads = {prompt_head(chunked)} if lpm and chunked is not None else set()
        loras = {r.lora_id for r in self.running_reqs + adder.can_run_list} - {None}
        for req in self.waiting_queue:
            if len(self.running_reqs) + len(adder.can_run_list) >= self.max_running_requests:
                break
            if req.lora_id is not None and req.lora_id not in loras and len(loras) >= self.max_loras_per_batch:
                continue  # 适配器槽位已满：先等着，让后面的请求先进（同 SGLang）/ no free adapter slot: wait
            req.init_next_round_input(self.tree_cache)
            if lpm:
                if wait_for_shared_prefix(req, chunked, heads):
                    continue  # 下一轮它能命中更长的前缀 / next round it will match a longer prefix
                heads.add(prompt_head(req))
            if adder.add_one_req(req) != AddReqResult.CONTINUE:
                break
            loras |= {req.lora_id} - {None}
        if not adder.can_run_list and not self.running_reqs and self.waiting_queue:
            # 什么都没在跑，但队首也放不进预算：只要输入放得下就强行接纳（输出靠 retraction/abort 兜底）。
            # Nothing runs and the head does not fit the budget: admit it if its input alone fits.
            head = self.waiting_queue[0]
            head.init_next_round_input(self.tree_cache)
            if head.extend_input_len + self.page_size <= (self.token_to_kv_pool_allocator.available_size()
                                                          + self.tree_cache.evictable_size()):
                adder.force_add(head)
        if not adder.can_run_list:
            return None
        admitted = set(id(r) for r in adder.can_run_list)
        self.waiting_queue = [r for r in self.waiting_queue if id(r) not in admitted]
        self.chunked_req = adder.new_chunked_req or (
            self.chunked_req if self.chunked_req is not None and self.chunked_req.is_chunked else None)
        return adder.can_run_list

    def _alloc_slots(self, prefix_len: int, seq_len: int, last_loc: int) -> Optional[torch.Tensor]:
        """分配槽位，不够时先驱逐缓存。Allocate slots, evicting cache first when short.

        page_size 1: every slot is a page, so the slots are simply the next free ones (alloc), without
        alloc_extend's per-page layout loop (a Python step per token: ~3 ms for a 7k-token prefill).
        """
        alloc = self.token_to_kv_pool_allocator

        def take():
            if self.page_size == 1:
                return alloc.alloc(seq_len - prefix_len)
            return alloc.alloc_extend([prefix_len], [seq_len], [last_loc])

        loc = take()
        if loc is None:
            self.tree_cache.evict(seq_len - prefix_len + self.page_size)
            loc = take()
        return loc

    def _prepare_extend(self, reqs: List[Req]) -> ForwardBatch:
        """为每个请求分配 req_to_token 行与新 token 的槽位，拼出 ForwardBatch。

        Give each request a req_to_token row and slots for its new tokens; build the ForwardBatch.
        """
        input_ids, positions, locs, prefix_lens, extend_lens = [], [], [], [], []
        rows, starts, row_values = [], [], []  # 最后一次写进 req_to_token / written in one go at the end
        for req in reqs:
            pre, seq = len(req.prefix_indices), len(req.fill_ids)
            new_row = req.req_pool_idx is None
            if new_row:
                req.req_pool_idx = self.req_to_token_pool.alloc(1)[0]
                # 记下匹配到的前缀（主机上的槽位，不同步设备），decode 时按它分组。The matched prefix, for cascade.
                req.shared_prefix = (int(req.prefix_indices[-1]), pre) if pre else None
            if req.cached_tokens is None:
                req.cached_tokens = pre
            # 前缀总是整页（匹配与分块都按页对齐），所以新 token 从新页开始，不需要 last_loc。
            # Prefixes are whole pages (matching and chunking are page-aligned): new tokens start a new page.
            assert pre % self.page_size == 0
            loc = self._alloc_slots(pre, seq, -1)
            if loc is None:
                raise RuntimeError("KV pool exhausted during prefill although the budget admitted the batch")
            # 新行：前缀槽位 + 新槽位一起写；接着算的分块请求只写新槽位。A new row gets prefix + new slots.
            rows.append(req.req_pool_idx)
            starts.append(0 if new_row else pre)
            row_values.append(torch.cat([req.prefix_indices, loc]) if new_row and pre else loc)
            req.last_loc = int(loc[-1])  # decode 接着这个槽位写 / decode continues after this slot
            req.kv_len = seq  # 发射时就记下：这些 KV 已排进这一步 / counted at launch: queued in this step
            input_ids.extend(req.fill_ids[pre:])
            positions.extend(range(pre, seq))
            locs.append(loc)
            prefix_lens.append(pre)
            extend_lens.append(seq - pre)
        self.req_to_token_pool.write_rows(rows, starts, row_values)
        return self._make_forward_batch(ForwardMode.EXTEND, reqs, input_ids, positions, torch.cat(locs),
                                        prefix_lens, extend_lens)

    def _make_forward_batch(self, mode, reqs, input_ids, positions, out_cache_loc, prefix_lens, extend_lens):
        dev = self.model_runner.device
        seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
        return ForwardBatch(
            forward_mode=mode,
            batch_size=len(reqs),
            input_ids=to_device(input_ids, torch.int64, dev),
            positions=to_device(positions, torch.int64, dev),
            out_cache_loc=to_device(out_cache_loc, torch.int64, dev),
            req_pool_indices=to_device([r.req_pool_idx for r in reqs], torch.int64, dev),
            seq_lens=to_device(seq_lens, torch.int64, dev),
            seq_lens_cpu=seq_lens,
            extend_prefix_lens=prefix_lens,
            extend_seq_lens=extend_lens,
            lora_ids=_lora_ids(reqs),
        )

    # ======== decode ========
    def _decode_slots_needed(self, reqs: List[Req]) -> int:
        # 页未满的请求不需要新页。A request whose last page has room needs no new page.
        return sum(self.page_size for r in reqs if r.kv_len % self.page_size == 0)

    def update_running_batch(self, out: BatchTokenIDOut) -> Tuple[List[Req], List[str]]:
        """decode 前检查内存，必要时 retraction。Check memory before decode; retract if needed.

        Returns (the decode batch, rids of retracted requests).
        """
        retracted: List[str] = []
        if self._decode_avail() < self._decode_slots_needed(self.running_reqs):
            retracted = self.retract_decode(out)
        else:
            self.new_token_ratio = max(self.new_token_ratio - NEW_TOKEN_RATIO_DECAY, self.min_new_token_ratio)
        return list(self.running_reqs), retracted

    def _decode_avail(self) -> int:
        return self.token_to_kv_pool_allocator.available_size() + self.tree_cache.evictable_size()

    def retract_decode(self, out: BatchTokenIDOut) -> List[str]:
        """把请求退回队列直到剩下的能继续 decode。Send requests back until the rest can decode.

        Victims: fewest output tokens first, longer prompts first among ties (as SGLang), so
        the least progress is thrown away.
        """
        retracted: List[str] = []
        order = sorted(self.running_reqs, key=lambda r: (len(r.output_ids), -len(r.origin_input_ids)), reverse=True)
        while self._decode_avail() < self._decode_slots_needed(order):
            if len(order) == 1:
                # 只剩一个请求也放不下：无法继续，以 abort 结束（不挂起）。A lone request cannot go on.
                req = order.pop()
                self.running_reqs.remove(req)
                req.finished_reason = FINISH_ABORT("out of KV cache memory: the sequence outgrew the KV pool")
                self.tree_cache.cache_finished_req(req)
                out.add(req, [])
                break
            req = order.pop()
            self.running_reqs.remove(req)
            self._release(req)
            req.is_retracted = True
            retracted.append(req.rid)
            self.waiting_queue.insert(0, req)
        self.num_retractions += len(retracted)
        self.new_token_ratio = self.init_new_token_ratio
        return retracted

    def _release(self, req: Req) -> None:
        """丢弃请求的 KV（不进缓存），以便它稍后从头 prefill。Drop a request's KV so it can re-prefill later."""
        self.tree_cache.release_req(req)
        req.kv_len = 0
        req.prefix_indices = torch.empty(0, dtype=torch.int64)

    def _prepare_decode(self, reqs: List[Req]) -> ForwardBatch:
        """每个请求一个新槽位，一次性分配、一次拷贝送上设备；输入 token 在设备上取，主机不同步。

        One new slot per request, allocated for the whole batch and moved to the device in one
        copy. The input tokens are gathered on the device from last_token_ids, and the last slot of
        each request is remembered on the host (Req.last_loc), so this never waits for the device:
        the overlap scheduler depends on that.
        """
        dev, bs = self.model_runner.device, len(reqs)
        kv_lens = [r.kv_len for r in reqs]
        seq_lens = [k + 1 for k in kv_lens]
        # 页内还有空位的请求接着它的上一个槽位写（page_size 1 时每个 token 自成一页）。
        # A request whose last page has room continues after its last slot (with page_size 1, never).
        last_locs = [-1] * bs if self.page_size == 1 else [r.last_loc for r in reqs]
        alloc = self.token_to_kv_pool_allocator
        locs = alloc.alloc_decode(seq_lens, last_locs)
        if locs is None:
            self.tree_cache.evict(self._decode_slots_needed(reqs))
            locs = alloc.alloc_decode(seq_lens, last_locs)
        assert locs is not None, "update_running_batch guarantees decode memory"
        loc_list = locs.tolist()
        for req, loc in zip(reqs, loc_list):
            req.kv_len += 1  # 发射时就记下 / counted at launch
            req.last_loc = loc
        host_cols = host_tensor([[r.req_pool_idx for r in reqs], kv_lens, loc_list])  # [3, bs]
        cols = to_device(host_cols, torch.int64, dev)  # 一次拷贝 / one copy
        rows, positions, out_cache_loc = cols[0], cols[1], cols[2]
        self.req_to_token_pool.write_decode(host_cols, cols)
        return ForwardBatch(
            forward_mode=ForwardMode.DECODE, batch_size=bs,
            input_ids=self.last_token_ids[rows],  # [bs]：上一步采出的 token / the previous step's tokens
            positions=positions, out_cache_loc=out_cache_loc, req_pool_indices=rows,
            seq_lens=positions + 1, seq_lens_cpu=seq_lens, extend_prefix_lens=kv_lens, extend_seq_lens=[1] * bs,
            lora_ids=_lora_ids(reqs),
            prefix_groups=plan_prefix_groups([r.shared_prefix for r in reqs]) if self.enable_cascade else None,
        )

    # ======== 结果 / Results ========
    def process_batch_result(self, batch: List[Req], mode: ForwardMode, next_ids: List[int],
                             bad_rows: List[bool], out: BatchTokenIDOut, logprobs: Optional[list] = None,
                             chunked: Optional[List[bool]] = None) -> None:
        """追加 token（和它的 logprob）、检查结束、把结束的请求的 KV 交给缓存。

        Append tokens (and their logprobs: one (token, top-k) entry per row, or None; see
        sampling/logprobs.py), check finish, hand a finished request's KV to the cache. An extend's
        other bookkeeping was done at launch (_admit_extend); `chunked` holds each row's is_chunked
        at launch (default: the current flags).
        """
        now = time.perf_counter()
        if chunked is None:
            chunked = [r.is_chunked for r in batch] if mode.is_extend() else [False] * len(batch)
        rows: List[Req] = []  # 有输出的行，最后一次交给 out / rows with output, handed to `out` at once
        row_ids: List[List[int]] = []
        for req, tok, bad, lp, was_chunked in zip(batch, next_ids, bad_rows, logprobs or [None] * len(batch),
                                                  chunked):
            # kv_len 在发射时已经加过（_prepare_extend / _prepare_decode）。kv_len was counted at launch.
            if req.finished() or req.req_pool_idx is None:
                # 重叠调度：它在这一批发射之后才结束、被中止或被 retraction；这个 token 丢掉，
                # 它的槽位已随 cache_finished_req / release_req 处理。Overlap only: it ended, was
                # aborted or retracted after this batch was launched; the token is dropped, and its
                # slot went with cache_finished_req / release_req.
                continue
            if was_chunked:  # 还有下一块：这一步的 logits 不用 / more chunks follow: the logits are unused
                continue
            if bad:
                req.finished_reason = FINISH_ABORT("the model produced NaN/Inf logits")
                new_ids = []
            elif req.grammar is not None and not req.grammar.accept_token(tok):
                # 掩码只放行合法 token，所以这不该发生；真发生了也只结束这一个请求。
                # The mask lets only legal tokens through, so this should not happen; if it does, end just this one.
                req.finished_reason = FINISH_ABORT(f"token {tok} does not fit the request's grammar")
                new_ids = []
            else:
                req.output_ids.append(tok)
                if lp is not None:  # 与 output_ids 一一对应 / one entry per output id
                    req.output_token_logprobs.append(lp[0])
                    req.output_top_logprobs.append(lp[1])
                req.first_token_time = req.first_token_time or now
                req.check_finished(self.tokenizer)
                new_ids = [tok]
            if req.finished():
                if req in self.running_reqs:
                    self.running_reqs.remove(req)
                self.tree_cache.cache_finished_req(req)
            rows.append(req)
            row_ids.append(new_ids)
        out.add_many(rows, row_ids)

    # ======== 管理 / Maintenance ========
    def flush_cache(self) -> bool:
        """清空前缀缓存（只在空闲时）。Drop the prefix cache (only when idle)."""
        if self.waiting_queue or self.running_reqs or self.chunked_req or self.grammar_queue or self.inflight:
            return False
        if self.grammar_backend is not None:
            self.grammar_backend.reset()  # 编译好的语法也一并丢掉（同 SGLang）/ compiled grammars too, as SGLang
        self.tree_cache.reset()
        self.token_to_kv_pool_allocator.clear()
        self.req_to_token_pool.clear()
        return True

    def get_stats(self) -> dict:
        alloc = self.token_to_kv_pool_allocator
        used = alloc.size - alloc.available_size()
        return {
            "num_running_reqs": len(self.running_reqs) + (1 if self.chunked_req else 0),
            "num_queued_reqs": len(self.waiting_queue) + len(self.grammar_queue),
            "max_total_num_tokens": alloc.size,
            "available_kv_tokens": alloc.available_size(),
            "used_kv_tokens": used,
            "evictable_kv_tokens": self.tree_cache.evictable_size(),
            "protected_kv_tokens": self.tree_cache.protected_size(),
            "token_usage": used / alloc.size,
            "new_token_ratio": self.new_token_ratio,
            "num_retractions": self.num_retractions,
            "forward_ct": self.forward_ct,
        }

    def check_pool_whole(self) -> None:
        """空闲时的不变量：没有锁、没有泄漏。Idle invariants: nothing locked, nothing leaked."""
        alloc = self.token_to_kv_pool_allocator
        assert not self.has_work(), "check_pool_whole() needs an idle scheduler"
        assert self.tree_cache.protected_size() == 0, f"{self.tree_cache.protected_size()} tokens still locked"
        cached = self.tree_cache.total_size()
        assert alloc.available_size() + cached == alloc.size, (
            f"KV leak: free {alloc.available_size()} + cached {cached} != capacity {alloc.size}")
        assert len(set(alloc.free_pages.tolist())) == len(alloc.free_pages), "a page was freed twice"
        assert self.req_to_token_pool.available_size() == self.req_to_token_pool.capacity, "a req_to_token row leaked"
