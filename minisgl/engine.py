# ================================================================================
# 🚂 离线引擎（Engine）：在 Python 里直接调用 minisgl
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   minisgl 的离线 Python API。默认在同一个进程里把分词、调度器（含模型）、增量反分词
#   串起来：generate() 提交请求，然后一步步调用 Scheduler.step() 直到这些请求结束。
#   The offline Python API. By default tokenizer, scheduler (with the model) and incremental
#   detokenizer run in this process: generate() submits requests and steps the scheduler until
#   they finish.
#
# 【生活比喻】Metaphor
#   自助厨房：不用叫服务员（HTTP 服务器），自己把单子递进厨房，站在窗口等菜。
#   A self-service kitchen: no waiter (HTTP server); hand the order in and wait at the window.
#
# 【核心架构】Architecture
#   Engine(mode="inprocess")（默认 / default）
#    ├─ tokenizer                  normalize_requests()：文字 → token ids，参数校验
#    ├─ scheduler: Scheduler       step()：prefill / decode / retract
#    └─ IncrementalDetokenizer ×N  token ids → 文字（含 stop 字符串裁剪）
#   Engine(mode="server")
#    └─ _ServerHandle ── 子进程 `minisgl serve --port <空闲端口>`（三进程）── HTTP /generate
#
# 【工作流程】Workflow
#   1. generate(prompt | [prompts] | input_ids=…, sampling_params=…, stream=False)
#   2. 每个请求 add_request() 进入等待队列。
#   3. while 还有未结束的请求：scheduler.step() → 每个新 token 交给它的反分词器。
#   4. 非流式：返回 {"text", "output_ids", "meta_info"}（批量时返回 list）；
#      流式：返回迭代器，每次产出增量 {"text": 新增文字, "output_ids": 新增 ids, "meta_info", "index"}。
#
# 【关键概念】Key Concepts
#   - mode="server"：同样的 generate()/flush_cache()/shutdown()，但请求走 HTTP 到真正的三进程服务器，
#     和线上部署的路径一模一样。The same API over HTTP to a real three-process server.
#   - meta_info：id、finish_reason、prompt_tokens、completion_tokens、cached_tokens（DESIGN.md §3）。
#   - 中途放弃流式迭代器（break）会 abort 剩余请求并释放 KV，不会泄漏。
#     Abandoning a stream aborts its requests and frees their KV.
#
# 【使用方式】Usage
#   >>> import minisgl
#   >>> with minisgl.Engine() as engine:                       # 自带小模型 / the bundled tiny model
#   ...     out = engine.generate("床前明月光", {"max_new_tokens": 16, "temperature": 0})
#   ...     print(out["text"], out["meta_info"])
#
# 【对应章节】Chapter: docs/zh/02-architecture.md
# ================================================================================
from __future__ import annotations

import atexit
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import weakref
from typing import Any, Dict, Iterator, List, Optional, Union

from minisgl.detokenizer import IncrementalDetokenizer
from minisgl.io_struct import BatchTokenIDOut, GenerateReqInput
from minisgl.server_args import ServerArgs
from minisgl.tokenizer_manager import normalize_requests
from minisgl.utils import collect_deferred_gc, freeze_gc, unfreeze_gc


# 有引擎关闭或被丢弃后，下一次 generate() 重新冻结（那时死掉的引擎已经彻底不可达，gc.collect 能收走它）。
# After an engine is shut down or dropped, the next generate() freezes again (by then the dead engine
# is wholly unreachable and gc.collect can take it).
_GC_STATE = {"refreeze": False}


def _engine_gone() -> None:
    """解冻全部对象，让关掉的引擎的循环引用能被回收。Unfreeze, so a closed engine's cycles can be collected.

    Automatic full collections come back too (utils.defer_full_gc): without an engine nothing waits.
    """
    unfreeze_gc()
    _GC_STATE["refreeze"] = True


class _ReqState:
    """一个请求在引擎侧的状态。The engine-side state of one request."""

    def __init__(self, rid: str, detok: IncrementalDetokenizer, stream: bool, logprobs: bool = True):
        self.rid = rid
        self.detok = detok
        self.logprobs = logprobs  # 要 logprob 吗（不要就不看那两列）/ asked for logprobs (else skip the columns)
        # 非流式请求结束时一次解码（与增量结果相同，测试验证），省掉每个 token 两次 decode。
        # A non-streaming request decodes once at the end (same text; tested), not twice per token.
        self.stream = stream
        self.output_ids: List[int] = []
        self.meta: Dict[str, Any] = {"id": rid, "finish_reason": None}
        self.finished = False
        self.created = time.perf_counter()
        self.token_logprobs: Optional[list] = None  # 要 logprob 时才有 / only when asked
        self.top_logprobs: Optional[list] = None

    def update(self, out: BatchTokenIDOut, i: int) -> Optional[Dict[str, Any]]:
        """吸收调度器的一条输出，返回增量（非流式且未结束时返回 None）。

        Absorb one scheduler output; return the delta, or None for a running non-streaming
        request (nobody reads it, and this runs for every request at every step).
        """
        new_ids = out.output_ids[i]
        self.output_ids += new_ids
        new_lps, new_tops = out.logprobs(i) if self.logprobs else (None, None)
        if new_lps is not None:
            self.token_logprobs = self.token_logprobs if self.token_logprobs is not None else []
            self.token_logprobs.extend(new_lps)
        if new_tops is not None:
            self.top_logprobs = self.top_logprobs if self.top_logprobs is not None else []
            self.top_logprobs.extend(new_tops)
        reason = out.finished_reasons[i]
        if not self.stream and reason is None:
            return None
        if self.stream:
            self.detok.append(new_ids)
        elif reason is not None:
            self.detok.append(self.output_ids)
        if reason is not None:
            self.finished = True
            self.detok.flush()
        matched = reason.get("matched") if reason and isinstance(reason.get("matched"), str) else None
        delta = self.detok.take(self.finished, matched)
        self.meta.update(
            finish_reason=reason,
            prompt_tokens=out.prompt_tokens[i],
            completion_tokens=out.completion_tokens[i],
            cached_tokens=out.cached_tokens[i],
            e2e_latency=time.perf_counter() - self.created,
        )
        # 流式增量里的 logprobs 与这次的 output_ids 对齐。A stream delta's logprobs match its output_ids.
        return {"text": delta, "output_ids": list(new_ids),
                "meta_info": self._with_logprobs(new_lps, new_tops)}

    def _with_logprobs(self, token_logprobs, top_logprobs) -> Dict[str, Any]:
        meta = dict(self.meta)
        if token_logprobs is not None:
            meta["output_token_logprobs"] = list(token_logprobs)
        if top_logprobs is not None:
            meta["output_top_logprobs"] = list(top_logprobs)
        return meta

    def result(self) -> Dict[str, Any]:
        return {"text": self.detok.text[: self.detok.sent], "output_ids": list(self.output_ids),
                "meta_info": self._with_logprobs(self.token_logprobs, self.top_logprobs)}


class Engine:
    """minisgl 的离线入口（见文件头）。The offline entry point; see the file header."""

    def __init__(self, model_path: Optional[str] = None, mode: str = "inprocess", **server_args):
        from minisgl.model.config import ModelConfig
        from minisgl.runner.model_runner import ModelRunner
        from minisgl.scheduler.scheduler import Scheduler
        from minisgl.utils import load_tokenizer

        if mode not in ("inprocess", "server"):
            raise ValueError(f"mode must be 'inprocess' or 'server', got {mode!r}")
        given = ServerArgs.from_kwargs(model_path=model_path, **server_args)
        self.server_args = args = given.resolve()
        # 先读配置：模型目录有问题时，错误信息先说模型。Config first, so a bad folder is reported as such.
        self.model_config = ModelConfig.from_pretrained(args.model_path, args.context_length)
        self.tokenizer = load_tokenizer(args.tokenizer_path)
        self.mode = mode
        self._server: Optional[_ServerHandle] = None
        self._unfreeze_gc: Optional[weakref.finalize] = None  # 只有进程内引擎冻结 / only in-process engines freeze
        if mode == "server":  # 三进程服务器，走 HTTP / the three-process server, over HTTP
            self.scheduler = None
            self._server = _ServerHandle(given)
            return
        if args.tp_size > 1 or args.dp_size > 1:
            # 每个 TP rank / DP 副本是一个进程：只有服务器模式才有这些进程。One process per rank or replica.
            raise ValueError(f"tp_size={args.tp_size}, dp_size={args.dp_size} run one scheduler process per rank "
                             "and replica: use Engine(mode='server', ...) or `minisgl serve`")
        runner = ModelRunner(args, self.model_config)
        self.scheduler = Scheduler(args, model_runner=runner, tokenizer=self.tokenizer)
        # 启动完成：冻结已有对象，decode 步里的垃圾回收不再扫它们（utils.freeze_gc）；引擎关闭或被丢弃时解冻，
        # 以免它的循环引用永远留在内存里。Start-up is done: keep the GC off these objects (utils.freeze_gc),
        # and unfreeze when the engine is shut down or dropped, so its reference cycles can still be collected.
        # 全量回收也挪到请求做完之后（utils.defer_full_gc）。Full collections wait until the requests are done.
        freeze_gc()
        self._unfreeze_gc = weakref.finalize(self, _engine_gone)  # 调用一次后就失效 / runs at most once

    # ======== 生成 / Generation ========
    def generate(
        self,
        prompt: Optional[Union[str, List[str]]] = None,
        sampling_params: Optional[Union[dict, List[dict], Any]] = None,
        input_ids: Optional[Union[List[int], List[List[int]]]] = None,
        stream: bool = False,
        rid: Optional[Union[str, List[str]]] = None,
        return_logprob: Union[bool, List[bool]] = False,
        top_logprobs_num: Union[int, List[int]] = 0,
        lora_path: Optional[Union[str, List[Optional[str]]]] = None,
    ):
        """生成文字（见文件头的工作流程）。Generate text; see the workflow in the file header.

        lora_path (SGLang's name): the name of a LoRA adapter loaded with lora_paths=..., one for
        all prompts or one per prompt (None = the base model); an unknown name is a ValueError.

        return_logprob / top_logprobs_num (SGLang's names): meta_info gets `output_token_logprobs`
        [(logprob, token_id), ...] and, when top_logprobs_num > 0, `output_top_logprobs` — log-softmax
        of the raw logits, before temperature and penalties (see sampling/logprobs.py).
        """
        if self._server is not None:
            return self._server.generate(prompt, sampling_params, input_ids, stream, rid, return_logprob,
                                         top_logprobs_num, lora_path)
        if _GC_STATE["refreeze"] and self.scheduler is not None:  # 见 _engine_gone / see _engine_gone
            _GC_STATE["refreeze"] = False
            freeze_gc()
        obj = GenerateReqInput(text=prompt, input_ids=input_ids, sampling_params=sampling_params, stream=stream, rid=rid,
                               return_logprob=return_logprob, top_logprobs_num=top_logprobs_num, lora_path=lora_path)
        is_batch, reqs, _ = normalize_requests(self.tokenizer, obj, self.model_config.vocab_size,
                                               self.model_config.context_len, self.server_args.lora_adapters())
        states: Dict[str, _ReqState] = {}
        for r in reqs:
            if r.rid in states:
                raise ValueError(f"duplicate request id {r.rid!r}")
            states[r.rid] = _ReqState(r.rid, IncrementalDetokenizer(
                self.tokenizer, r.input_ids, r.sampling_params.skip_special_tokens, r.sampling_params.stop_strs),
                stream, logprobs=bool(r.return_logprob or r.top_logprobs_num))
        for r in reqs:
            self.scheduler.add_request(r)
        order = [r.rid for r in reqs]
        if stream:
            return self._stream(states, order)
        for _ in self._run(states, order):
            pass
        results = [states[rid].result() for rid in order]
        return results if is_batch else results[0]

    def _run(self, states: Dict[str, _ReqState], order: List[str]) -> Iterator[Dict[str, Any]]:
        index = {rid: i for i, rid in enumerate(order)}
        remaining = len(states)
        try:
            while remaining:
                collect_deferred_gc(busy=True)  # 忙着时只在推迟太久后才做 / only when deferred too long
                step = self.scheduler.step()
                out = step.out
                for i, rid in enumerate(out.rids):
                    state = states.get(rid)
                    if state is None or state.finished:
                        continue
                    delta = state.update(out, i)
                    remaining -= state.finished
                    if delta is not None:
                        delta["index"] = index[rid]
                        yield delta
                if step.forward_mode is None and not len(out) and not self.scheduler.has_work():
                    raise RuntimeError("the scheduler went idle with unfinished requests (a bug)")
            # 重叠调度：最后发射的那一批只剩已结束的请求（多算的一步），处理掉它，引擎回到空闲。
            # Overlap: the last launched batch holds only finished requests (the extra step); process it.
            self.scheduler.sync_inflight()
            # 这一批做完了：推迟的全量回收到期就在这里做，不在某个 decode 步中间。
            # The batch is done: a due full collection runs here, not in the middle of a decode step.
            collect_deferred_gc(busy=False)
        finally:
            # 调用者中途放弃：中止剩下的请求并清理。The caller gave up: abort the rest and clean up.
            unfinished = [rid for rid, s in states.items() if not s.finished]
            for rid in unfinished:
                self.scheduler.abort_request(rid)
            while unfinished and self.scheduler.has_work():
                self.scheduler.step()

    def _stream(self, states, order) -> Iterator[Dict[str, Any]]:
        for delta in self._run(states, order):
            if delta["text"] or delta["output_ids"] or delta["meta_info"]["finish_reason"]:
                yield delta

    # ======== 管理 / Maintenance ========
    def flush_cache(self) -> bool:
        if self._server is not None:
            return self._server.client.post("/flush_cache").status_code == 200
        return self.scheduler.flush_cache()

    def get_server_info(self) -> Dict[str, Any]:
        if self._server is not None:
            return _checked(self._server.client.get("/get_server_info")).json()
        return {**self.scheduler.get_stats(), "model_path": self.server_args.model_path}

    def shutdown(self) -> None:
        """释放模型与 KV 池（服务器模式：停掉三个进程）。Release the model and KV pool (server: stop the processes)."""
        self.scheduler = None
        if self._unfreeze_gc is not None:
            self._unfreeze_gc()
        if self._server is not None:
            self._server.shutdown()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


# ======== mode="server"：三进程服务器的句柄 / a handle on the three-process server ========
STARTUP_TIMEOUT_S = 600
API_KEY_ENV = "MINISGL_API_KEY"  # 同 server/launch.py / same as server/launch.py


def _checked(resp):
    """HTTP 错误 → 与进程内模式相同的异常。HTTP errors → the same exceptions as in-process mode."""
    if resp.status_code == 200:
        return resp
    try:
        message = resp.json()["error"]["message"]
    except Exception:
        message = resp.text
    if resp.status_code == 400:
        raise ValueError(message)
    raise RuntimeError(f"HTTP {resp.status_code}: {message}")


def _cli_flags(args: ServerArgs) -> List[str]:
    """把非默认的参数写回命令行。Non-default arguments back into CLI flags."""
    flags = []
    for f in dataclasses.fields(args):
        value = getattr(args, f.name)
        if value == f.default or f.name == "port":
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            flags += [flag]
        elif f.name == "lora_paths":  # 列表参数：--lora-paths a=/x b=/y / a list flag
            flags += [flag, *(f"{name}={path}" for name, path in args.lora_adapters().items())]
        else:
            flags += [flag, str(value)]
    return flags


class _ServerHandle:
    """启动 `minisgl serve` 子进程，经 HTTP 调用它。Starts `minisgl serve` and talks to it over HTTP."""

    def __init__(self, args: ServerArgs):
        import httpx

        from minisgl.utils import get_free_port

        port = args.port if args.port != ServerArgs.port else get_free_port()
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
        # API key 经环境变量传给子进程，不出现在 `ps` 能看到的命令行里。The key goes by environment, not argv.
        env = {**os.environ, API_KEY_ENV: args.api_key} if args.api_key else None
        cli = _cli_flags(dataclasses.replace(args, api_key=None))
        self.proc = subprocess.Popen([sys.executable, "-m", "minisgl", "serve", *cli, "--port", str(port)], env=env)
        self.url = f"http://{host}:{port}"
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        self.client = httpx.Client(base_url=self.url, timeout=None, headers=headers)
        atexit.register(self.shutdown)  # 忘了 shutdown() 也不留下服务器 / no server left behind
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the minisgl server exited during start-up (exit code {self.proc.returncode})")
            try:
                if self.client.get("/health", timeout=30).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.shutdown()
                raise TimeoutError(f"the minisgl server did not become healthy in {STARTUP_TIMEOUT_S} s")
            time.sleep(0.1)

    def generate(self, prompt, sampling_params, input_ids, stream: bool, rid, return_logprob=False,
                 top_logprobs_num=0, lora_path=None):
        def as_dict(p):
            return p.to_dict() if hasattr(p, "to_dict") else p

        many = isinstance(sampling_params, list)
        params = [as_dict(p) for p in sampling_params] if many else as_dict(sampling_params)
        payload = {"text": prompt, "input_ids": input_ids, "sampling_params": params, "stream": stream, "rid": rid,
                   "return_logprob": return_logprob, "top_logprobs_num": top_logprobs_num}
        if lora_path is not None:  # 不用 LoRA 时请求体与以前相同 / unchanged body without LoRA
            payload["lora_path"] = lora_path
        if not stream:
            return _checked(self.client.post("/generate", json=payload)).json()
        # 先发请求并检查状态码：坏输入在调用时就报错，与进程内模式一致。
        # Send now and check the status: bad input raises at call time, as in-process.
        resp = self.client.send(self.client.build_request("POST", "/generate", json=payload), stream=True)
        if resp.status_code != 200:
            resp.read()
            resp.close()
            _checked(resp)
        return self._deltas(resp)

    @staticmethod
    def _deltas(resp) -> Iterator[Dict[str, Any]]:
        """SSE 的累计值 → 增量（与进程内的流式输出同形）。Cumulative SSE → deltas, shaped as in-process."""
        sent: Dict[int, tuple] = {}
        try:
            for line in resp.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    return
                obj = json.loads(line[len("data: "):])
                if "error" in obj:
                    raise RuntimeError(obj["error"]["message"])
                i = obj.get("index", 0)
                t0, n0 = sent.get(i, (0, 0))
                sent[i] = (len(obj["text"]), len(obj["output_ids"]))
                meta = obj["meta_info"]
                for key in ("output_token_logprobs", "output_top_logprobs"):  # 累计 → 增量 / cumulative → delta
                    if key in meta:
                        meta[key] = meta[key][n0:]
                delta = {"text": obj["text"][t0:], "output_ids": obj["output_ids"][n0:], "meta_info": meta, "index": i}
                if delta["text"] or delta["output_ids"] or obj["meta_info"]["finish_reason"]:
                    yield delta
        finally:
            resp.close()  # 提前放弃 → 服务器看到断开并 abort / giving up early → the server aborts

    def shutdown(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.client.close()
