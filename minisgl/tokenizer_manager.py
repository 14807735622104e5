# ================================================================================
# 🔤 分词管理（TokenizerManager）：规范化 + 分词 + 校验，服务器里还管请求状态
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   把用户的一次调用（一段文字、一批文字或 token ids，加上采样参数）变成一个个
#   TokenizedGenerateReqInput：展开批量和 n、分词、校验参数。离线 Engine 与 HTTP 服务器共用这段逻辑，
#   所以两边对坏输入的报错完全一致。服务器模式下，TokenizerManager 类（HTTP 进程，asyncio）把请求经
#   ZMQ 发给调度进程，记录每个请求的状态，收到反分词进程的文字后唤醒等待的 HTTP 处理函数。
#   Turns one user call (a text, a batch, or token ids, plus sampling params) into
#   TokenizedGenerateReqInput records: expands batches and n, tokenizes, validates. The offline
#   Engine and the HTTP server share it, so both reject bad input with the same words. In server
#   mode the TokenizerManager class (HTTP process, asyncio) sends requests to the scheduler over ZMQ,
#   keeps each request's state, and wakes the waiting HTTP handler when text comes back.
#
# 【生活比喻】Metaphor
#   前台接待：把客人的口头点单写成厨房看得懂的标准单，写不清楚的当场问回去。
#   The front desk: turns a spoken order into the kitchen's standard slip, and asks back when unclear.
#
# 【核心架构】Architecture
#   GenerateReqInput ──normalize_requests──► List[TokenizedGenerateReqInput] ──► Scheduler
#        text | [text] | input_ids | [[ids]]      （每个 prompt × n 个 / each prompt × n）
#
#   服务器模式 / server mode — TokenizerManager（HTTP 进程里，asyncio）:
#     generate(reqs) ─ 登记 ReqState(rid) ─PUSH─► 调度进程
#          ▲ 产出增量 / yields updates             │
#     ReqState.event ◄─ handle_loop ◄─PULL─ 反分词进程（BatchStrOut）/ 调度进程（控制回复）
#     --dp-size N：DataParallelRouter（dp_router.py）为每个请求选一个副本；控制消息发给所有副本。
#     With --dp-size N the router picks a replica per request; control messages go to every replica.
#
# 【工作流程】Workflow
#   1. 判断单个还是批量；text 与 input_ids 二选一。Single or batch; text xor input_ids.
#   2. SamplingParams.from_dict + verify：未知字段、越界值 → ValueError（写明字段名）。
#   3. 分词（add_special_tokens=True，与 HF tokenizer(text) 一致）。
#   4. 检查长度：空 prompt、超过上下文 → ValueError。
#
# 【关键概念】Key Concepts
#   - 每个请求一个 ReqState（累计文字、token、meta_info）；同一次调用的请求共享一个 asyncio.Event，
#     handle_loop 收到进展就 set()，等待方醒来只取新的部分。One Event per call; the waiter takes what is new.
#   - 调用方中途离开（客户端断开、流被取消）：finally 里给调度器发 AbortReq，KV 和基数树锁随之释放。
#     A caller that leaves (disconnect, cancelled stream) sends AbortReq in `finally`: KV and locks are freed.
#   - n > 1（并行采样）：同一 prompt 生成 n 个请求，rid 为 "<rid>-<i>"；它们共享前缀缓存。
#     n > 1 makes n requests of one prompt; they share the prompt through the prefix cache.
#
# 【使用方式】Usage
#   >>> reqs = normalize_requests(tok, GenerateReqInput(text="你好", sampling_params={"n": 2}),
#   ...                           vocab_size=6000, context_len=1024)
#   服务器里 / in the server:  async for upd in tm.generate(reqs, request): ...
#
# 【对应章节】Chapter: docs/zh/05-tokenization.md, docs/zh/04-request-journey.md
# ================================================================================
from __future__ import annotations

import asyncio
import copy
import logging
import time
from typing import Any, AsyncIterator, Collection, Dict, List, Optional, Tuple

from minisgl.dp_router import DataParallelRouter
from minisgl.io_struct import (
    AbortReq, BatchStrOut, FlushCacheReq, FlushCacheReqOutput, GenerateReqInput, GetInfoReq, GetInfoReqOutput,
    TokenizedGenerateReqInput, new_rid, unknown_lora_message,
)
from minisgl.sampling.logprobs import check_logprob_args
from minisgl.sampling.sampling_params import SamplingParams
from minisgl.utils import check_token_ids

logger = logging.getLogger(__name__)
HEALTH_CHECK_PREFIX = "HEALTH_CHECK_"  # 健康检查请求：不计指标、不受排队上限 / no metrics, no queue limit
DISCONNECT_CHECK_S = 1.0  # 等待时多久看一次客户端是否还在 / how often a waiter checks the client
CONTROL_TIMEOUT_S = 30.0


def _as_batch(req: GenerateReqInput) -> Tuple[bool, list]:
    if (req.text is None) == (req.input_ids is None):
        raise ValueError("exactly one of `text` (prompt) and `input_ids` must be given")
    if req.text is not None:
        if isinstance(req.text, str):
            return False, [req.text]
        if isinstance(req.text, list) and req.text and all(isinstance(t, str) for t in req.text):
            return True, list(req.text)
        raise ValueError("text must be a string or a non-empty list of strings")
    ids = req.input_ids
    if isinstance(ids, list) and ids and all(isinstance(x, list) for x in ids):
        return True, [list(x) for x in ids]
    if isinstance(ids, list):
        return False, [list(ids)]
    raise ValueError("input_ids must be a list of integers or a list of such lists")


def check_unicode(text: str, what: str) -> None:
    """拒绝孤立代理项（JSON 里的 "\\ud800" 能解析成 str，却不是合法 Unicode，分词器会崩）。

    Reject lone surrogates: JSON's "\\ud800" parses into a Python str that is not valid Unicode
    and cannot be encoded as UTF-8 (the tokenizer would fail deep inside with a 500).
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} contains a lone UTF-16 surrogate {text[e.start]!r} at character {e.start}: "
                         "it is not valid Unicode text") from None


def _per_prompt(value, count: int, name: str) -> list:
    """一个值给所有 prompt，或每个 prompt 一个值。One value for every prompt, or one per prompt."""
    if not isinstance(value, list):
        return [value] * count
    if len(value) != count:
        raise ValueError(f"got {len(value)} values of {name} for {count} prompts")
    return list(value)


def normalize_requests(
    tokenizer, req: GenerateReqInput, vocab_size: int, context_len: int, lora_names: Collection[str] = (),
) -> Tuple[bool, List[TokenizedGenerateReqInput], List[int]]:
    """规范化、分词并校验一次调用。Normalize, tokenize and validate one call.

    Returns (is_batch, requests, prompt_index of each request). Raises ValueError naming the problem.
    lora_names: the loaded LoRA adapters; a `lora_path` outside them is an error that names it.
    """
    is_batch, items = _as_batch(req)
    params_list = req.sampling_params if isinstance(req.sampling_params, list) else [req.sampling_params] * len(items)
    if len(params_list) != len(items):
        raise ValueError(f"got {len(params_list)} sampling_params for {len(items)} prompts")
    rids = req.rid if isinstance(req.rid, list) else [req.rid] * len(items)
    if len(rids) != len(items):
        raise ValueError(f"got {len(rids)} rids for {len(items)} prompts")
    want_lp = _per_prompt(req.return_logprob, len(items), "return_logprob")
    top_nums = _per_prompt(req.top_logprobs_num, len(items), "top_logprobs_num")
    loras = _per_prompt(req.lora_path, len(items), "lora_path")
    out: List[TokenizedGenerateReqInput] = []
    index: List[int] = []
    for i, (item, p, rid) in enumerate(zip(items, params_list, rids)):
        where = f"prompt {i}: " if is_batch else ""
        try:
            params = SamplingParams.from_dict(p).verify(vocab_size)
            check_logprob_args(want_lp[i], top_nums[i])
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}{e}") from None
        if loras[i] is not None and loras[i] not in lora_names:
            raise ValueError(where + unknown_lora_message(loras[i], lora_names))
        if isinstance(item, str):
            check_unicode(item, f"{where}the prompt")
            text, ids = item, tokenizer.encode(item)
        else:
            text, ids = None, item
            error = check_token_ids(ids, vocab_size)
            if error:
                raise ValueError(f"{where}{error}")
        if len(ids) == 0:
            raise ValueError(f"{where}the prompt is empty")
        if len(ids) >= context_len:
            raise ValueError(f"{where}the prompt has {len(ids)} tokens, but the context length is {context_len}")
        base = rid or new_rid()
        for j in range(params.n):
            one = SamplingParams.from_dict(params)
            one.n = 1
            if params.seed is not None and params.n > 1:
                one.seed = params.seed + j  # n 个样本各不相同但可复现 / distinct yet reproducible
            out.append(TokenizedGenerateReqInput(base if params.n == 1 else f"{base}-{j}", text, ids, one, req.stream,
                                                 want_lp[i], top_nums[i], lora_path=loras[i],
                                                 ids_checked=text is None))
            index.append(i)
    return is_batch or (len(out) > 1), out, index


# ================================================================================
# 服务器模式：TokenizerManager / Server mode: the TokenizerManager
# ================================================================================
LOGPROB_KEYS = ("output_token_logprobs", "output_top_logprobs")


def _snapshot(meta: Dict[str, Any]) -> Dict[str, Any]:
    """meta_info 的副本（logprob 列表也复制：之后的更新还会往原列表里追加）。

    A copy of meta_info; the logprob lists are copied too, as later updates extend the originals.
    """
    out = dict(meta)
    for key in LOGPROB_KEYS:
        if key in out:
            out[key] = list(out[key])
    return out


def merge_replica_stats(replicas: List[Dict[str, Any]]) -> Dict[str, Any]:
    """把各数据并行副本的调度统计合成一份：计数相加，比例重算，另附每个副本的原样统计。

    Merge the replicas' scheduler stats: counts add up, ratios are recomputed, and each replica's
    own stats are kept under "dp_replicas" (a single replica is returned as it is).
    """
    if len(replicas) == 1:
        return dict(replicas[0])
    merged: Dict[str, Any] = {}
    for key, value in replicas[0].items():
        values = [r.get(key) for r in replicas]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            merged[key] = sum(values)
        else:
            merged[key] = value
    if merged.get("max_total_num_tokens"):
        merged["token_usage"] = merged["used_kv_tokens"] / merged["max_total_num_tokens"]
    if "new_token_ratio" in merged:
        merged["new_token_ratio"] = merged["new_token_ratio"] / len(replicas)
    merged["dp_replicas"] = [dict(r) for r in replicas]
    return merged


class RequestError(Exception):
    """要以 HTTP 错误返回给客户端的问题。A problem to return to the client as an HTTP error."""

    def __init__(self, message: str, status_code: int = 400):
        super().__init__(message)
        self.message, self.status_code = message, status_code


class ClientDisconnected(Exception):
    pass


class ReqState:
    """一个在途请求在 HTTP 进程里的状态（累计值）。One in-flight request's state in the HTTP process (cumulative)."""

    def __init__(self, rid: str, event: asyncio.Event):
        self.rid = rid
        self.event = event  # 同一次调用共享 / shared by one call
        self.text = ""
        self.output_ids: List[int] = []
        self.meta: Dict[str, Any] = {"id": rid, "finish_reason": None}
        self.finished = False
        self.version = 0  # 每次更新 +1，等待方据此判断有没有新内容 / bumped on every update
        self.created = time.perf_counter()
        self.last_time: Optional[float] = None  # 上一次收到 token 的时间 / last time tokens arrived


class TokenizerManager:
    """HTTP 进程里的请求中枢（见文件头）。The request hub of the HTTP process; see the file header.

    【工作流程】Workflow
      1. normalize()：分词与校验（坏输入 → ValueError → HTTP 400）。
      2. generate(reqs)：登记状态 → 发给调度进程 → 每有进展产出一个更新 → 结束或离开时清理（必要时 abort）。
      3. handle_loop()：后台任务，接收 BatchStrOut 与控制回复，更新状态并唤醒等待方。
    """

    def __init__(self, server_args, ipc, tokenizer, context_len: int, vocab_size: int, metrics=None):
        import zmq
        import zmq.asyncio

        self.server_args = server_args
        self.tokenizer = tokenizer
        self.context_len, self.vocab_size = context_len, vocab_size
        # 已加载的 LoRA 适配器（--lora-paths）/ the loaded LoRA adapters
        self.lora_names = list(server_args.lora_adapters()) if server_args is not None else []
        self.metrics = metrics
        # 发送用普通 socket（PUSH 几乎不会阻塞，且能在 finally 里同步发出 abort）；接收用 asyncio socket。
        # Send with a plain socket (PUSH hardly blocks, and an abort can go out synchronously in `finally`);
        # receive with an asyncio socket.
        self._ctx, self._actx = zmq.Context(), zmq.asyncio.Context()
        # --dp-size N：每个副本一个 PUSH socket，DataParallelRouter 决定每个请求去哪个。
        # With --dp-size N: one PUSH socket per replica; the DataParallelRouter picks one per request.
        dp_size = getattr(server_args, "dp_size", 1)
        self.router = DataParallelRouter(dp_size, getattr(server_args, "load_balance_method", "round_robin"))
        self.send_to_schedulers = []
        for dp in range(dp_size):
            sock = self._ctx.socket(zmq.PUSH)
            sock.connect(ipc.scheduler_for(dp) if dp else ipc.scheduler)
            self.send_to_schedulers.append(sock)
        self.recv_from_workers = self._actx.socket(zmq.PULL)
        self.recv_from_workers.bind(ipc.tokenizer)
        self.rid_to_state: Dict[str, ReqState] = {}
        self.control_waiters: Dict[str, asyncio.Future] = {}
        self.last_receive_time = 0.0
        self.dead: Optional[str] = None  # 子进程死亡时的说明 / why the backend is gone
        self._loop_task: Optional[asyncio.Task] = None

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self.handle_loop())

    def close(self) -> None:
        if self._loop_task:
            self._loop_task.cancel()
        for sock in self.send_to_schedulers:
            sock.close(linger=0)
        self.recv_from_workers.close(linger=0)

    # ======== 接收 / Receiving ========
    async def handle_loop(self) -> None:
        while True:
            msg = await self.recv_from_workers.recv_pyobj()
            try:
                self._dispatch(msg)
            except Exception:  # 一条坏消息不能让接收循环停掉 / one bad message must not stop the loop
                logger.exception("tokenizer manager: failed to handle %s", type(msg).__name__)

    def _dispatch(self, msg) -> None:
        self.last_receive_time = time.perf_counter()
        if isinstance(msg, BatchStrOut):
            for i, rid in enumerate(msg.rids):
                state = self.rid_to_state.get(rid)
                if state is not None:  # 已离开的请求的迟到消息：忽略 / late news of a departed request
                    self._update(state, msg.texts[i], msg.output_ids[i], msg.meta_info[i], msg.finished[i],
                                 *msg.logprobs(i))
        elif isinstance(msg, (FlushCacheReqOutput, GetInfoReqOutput)):
            fut = self.control_waiters.pop(msg.id, None)
            if fut is not None and not fut.done():
                fut.set_result(msg)

    def _update(self, state: ReqState, text: str, new_ids: List[int], meta: dict, finished: bool,
                token_logprobs: Optional[list] = None, top_logprobs: Optional[list] = None) -> None:
        now = time.perf_counter()
        state.text += text
        state.output_ids.extend(new_ids)
        state.meta.update(meta)
        # logprobs 与 output_ids 一样在 meta_info 里累计（同 SGLang）。Cumulative in meta_info, like output_ids.
        if token_logprobs is not None:
            state.meta.setdefault("output_token_logprobs", []).extend(token_logprobs)
        if top_logprobs is not None:
            state.meta.setdefault("output_top_logprobs", []).extend(top_logprobs)
        state.meta["e2e_latency"] = now - state.created
        state.finished = finished
        state.version += 1
        state.event.set()
        if self.metrics is None or state.rid.startswith(HEALTH_CHECK_PREFIX):
            return
        if new_ids:
            if state.last_time is None:
                self.metrics.observe_time_to_first_token(now - state.created)
            else:
                self.metrics.observe_inter_token_latency((now - state.last_time) / len(new_ids))
            state.last_time = now
        if finished:
            self.metrics.observe_finished(meta["prompt_tokens"], meta["completion_tokens"], meta["cached_tokens"],
                                          now - state.created)

    def fail_all(self, message: str) -> None:
        """后端没了：让所有等待方立刻得到错误。The backend is gone: fail every waiter at once."""
        self.dead = message
        for state in self.rid_to_state.values():
            if not state.finished:
                state.finished = True
                state.meta["finish_reason"] = {"type": "abort", "message": message, "status_code": 503}
                state.version += 1
                state.event.set()
        for fut in self.control_waiters.values():
            if not fut.done():
                fut.set_exception(RequestError(message, 503))

    # ======== 生成 / Generation ========
    def normalize(self, obj: GenerateReqInput) -> Tuple[bool, List[TokenizedGenerateReqInput], List[int]]:
        return normalize_requests(self.tokenizer, obj, self.vocab_size, self.context_len, self.lora_names)

    async def generate(self, reqs: List[TokenizedGenerateReqInput], request=None,
                       stream: bool = False) -> AsyncIterator[Dict[str, Any]]:
        """提交请求并产出更新（累计值）。Submit and yield cumulative updates.

        Each update: {"index", "rid", "text", "output_ids", "meta_info", "finished"}. With a Starlette
        `request`, a vanished client raises ClientDisconnected (checked every DISCONNECT_CHECK_S; when
        `stream`, only until the first update: after that StreamingResponse watches the client itself).
        Leaving early in any way aborts the unfinished requests.
        """
        if self.dead:
            raise RequestError(self.dead, 503)
        event = asyncio.Event()
        states = []
        for r in reqs:
            if r.rid in self.rid_to_state or any(s.rid == r.rid for s in states):
                raise RequestError(f"duplicate request id {r.rid!r}")
            states.append(ReqState(r.rid, event))
        for s in states:  # 先登记再发送，输出不会先于状态到达 / register before sending
            self.rid_to_state[s.rid] = s
        try:
            for r in reqs:
                self.send_to_schedulers[self.router.route(r.rid, r.input_ids)].send_pyobj(r)
            seen = [0] * len(states)
            while True:
                if all(s.version == v for s, v in zip(states, seen)):
                    # 只有“全部结束且最后的更新都已交出”才返回：yield 期间可能又到了新的更新。
                    # Return only when all finished *and* every update was handed out (more may arrive
                    # while we are suspended at a yield).
                    if all(s.finished for s in states):
                        return
                    watch = request if (request is not None and (not stream or not any(seen))) else None
                    await self._wait(event, watch)
                event.clear()
                for i, s in enumerate(states):
                    if s.version != seen[i]:
                        seen[i] = s.version
                        yield {"index": i, "rid": s.rid, "text": s.text, "output_ids": list(s.output_ids),
                               "meta_info": _snapshot(s.meta), "finished": s.finished}
        finally:
            # 正常结束、出错、被取消或客户端断开：都走这里。Normal end, error, cancel or disconnect.
            for s in states:
                self.rid_to_state.pop(s.rid, None)
                if not s.finished:
                    self.abort_request(s.rid)
                self.router.finish(s.rid)

    async def _wait(self, event: asyncio.Event, request) -> None:
        if request is None:
            await event.wait()
            return
        while True:
            try:
                await asyncio.wait_for(event.wait(), DISCONNECT_CHECK_S)
                return
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    raise ClientDisconnected() from None

    def abort_request(self, rid: str) -> None:
        import zmq

        try:
            self.send_to_schedulers[self.router.replica_of(rid)].send_pyobj(AbortReq(rid), zmq.NOBLOCK)
        except zmq.ZMQError as e:
            logger.warning("could not send abort for %s: %s", rid, e)

    def abort_by_prefix(self, rid: str) -> List[str]:
        """按用户给的 rid 中止（n>1 时含 "<rid>-<i>"）。Abort by a user rid (with n>1 also "<rid>-<i>")."""
        rids = [r for r in self.rid_to_state if r == rid or r.startswith(rid + "-")]
        for r in rids:
            self.abort_request(r)
        return rids

    async def health_generate(self, timeout: float) -> bool:
        """真正的存活检查：生成 1 个 token（期间有任何输出到达也算活着）。

        Real liveness: generate one token (any output arriving meanwhile also proves life).
        """
        if self.dead:
            return False
        tic = time.perf_counter()
        req = TokenizedGenerateReqInput(HEALTH_CHECK_PREFIX + new_rid(), None, [0],
                                        SamplingParams(max_new_tokens=1, temperature=0.0))
        last: Dict[str, Any] = {}

        async def run():
            async for upd in self.generate([req]):
                last.update(upd)

        task = asyncio.get_running_loop().create_task(run())
        try:
            while time.perf_counter() - tic < timeout and not self.dead:
                if task.done():  # 结束了：看是不是正常结束 / finished: was it a normal finish?
                    return task.exception() is None and last["meta_info"]["finish_reason"]["type"] != "abort"
                if self.last_receive_time > tic:  # 忙的时候不必排队等 / when busy, no need to queue
                    return True
                await asyncio.sleep(0.01)
            return False
        finally:
            task.cancel()  # 还没结束就中止它 / abort it if still running

    # ======== 控制 / Control ========
    async def _control(self, msg, timeout: float = CONTROL_TIMEOUT_S) -> list:
        """发给每个副本并等齐所有回复（副本号顺序）。Send to every replica and await all replies, in replica order."""
        if self.dead:
            raise RequestError(self.dead, 503)
        futs, base = [], new_rid()
        for dp, sock in enumerate(self.send_to_schedulers):
            m = copy.copy(msg)
            m.id = f"{base}-{dp}"
            fut = asyncio.get_running_loop().create_future()
            self.control_waiters[m.id] = fut
            futs.append((m.id, fut))
            sock.send_pyobj(m)
        try:
            return list(await asyncio.wait_for(asyncio.gather(*(f for _, f in futs)), timeout))
        except asyncio.TimeoutError:
            raise RequestError("the scheduler did not answer in time", 503) from None
        finally:
            for mid, _ in futs:
                self.control_waiters.pop(mid, None)

    async def flush_cache(self) -> bool:
        return all(r.success for r in await self._control(FlushCacheReq()))

    async def get_scheduler_stats(self) -> Dict[str, Any]:
        stats = merge_replica_stats([r.stats for r in await self._control(GetInfoReq())])
        if len(self.send_to_schedulers) > 1:
            stats["dp_router"] = self.router.stats()
        if self.metrics is not None:
            self.metrics.set_scheduler_stats(stats)
        return stats
