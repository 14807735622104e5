# ================================================================================
# 🔁 调度进程（scheduler process）：把 Scheduler 包进 ZMQ 事件循环
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   服务器模式下，Scheduler（连同模型与 KV 池）独占一个进程。这里是它的外壳：从 ZMQ 收请求和
#   控制消息，交给 Scheduler；每跑一步 step()，把产出的 token（BatchTokenIDOut）发给反分词进程。
#   Scheduler 本身不认识 ZMQ——笔记本里一步步调用的也是同一个类。
#   In server mode the Scheduler (with the model and KV pool) owns a process. This is its shell:
#   receive requests and control messages over ZMQ, feed the Scheduler, run step(), and push each
#   step's token ids (BatchTokenIDOut) to the detokenizer. The Scheduler itself knows nothing of ZMQ.
#
# 【生活比喻】Metaphor
#   餐厅领班（Scheduler）站在厨房门口；这个进程是他旁边的传菜窗口：新单从窗口递进来，
#   做好的菜从另一个窗口送出去。没有单子时，领班就靠在窗口等，不会来回踱步（不空转）。
#   The restaurant host (Scheduler) at the kitchen door; this process is the hatch beside him:
#   orders come in through one window, dishes leave through another. With no orders he leans on
#   the hatch and waits (no busy loop).
#
# 【核心架构】Architecture
#   TokenizerManager ──PUSH──► [PULL ipc://…/scheduler] ─┐
#                                                         ▼
#                           SchedulerLoop ── Scheduler.add_request / abort_request /
#                                │                flush_cache / get_stats / step()
#                                ├──PUSH──► DetokenizerManager   BatchTokenIDOut（每步一条 / one per step）
#                                └──PUSH──► TokenizerManager     FlushCacheReqOutput / GetInfoReqOutput
#
# 【工作流程】Workflow
#   1. 建 ModelRunner + Scheduler，绑定/连接三个 socket，通过管道报告“就绪”。
#   2. 循环：没有活时阻塞在 socket 上 → 非阻塞地收完所有消息 → 有活就 step() → 发送产出。
#      Loop: block on the socket when idle → drain all messages without blocking → step() → send.
#   3. 收到 SIGTERM（父进程关机）直接退出；父进程死了 PDEATHSIG 也会让它退出（不留孤儿）。
#
# 【关键概念】Key Concepts
#   - 一步之前先把积压的消息全部收完：同一时刻到达的 64 个请求进同一个 prefill batch。
#     Drain everything before a step: 64 requests that arrive together share one prefill batch.
#   - --max-queued-requests：等待队列已满时，新请求不进调度器，直接以 abort(status_code=503)
#     结束；HTTP 层据此回 503。健康检查请求（rid 以 HEALTH_CHECK_ 开头）不受限制。
#   - 控制回复直接发给 TokenizerManager（同 SGLang），不绕反分词进程。
#
# 【使用方式】Usage
#   由 minisgl/server/launch.py 以 spawn 方式启动；手动构造循环做测试：
#   >>> loop = SchedulerLoop(scheduler, recv_sock, to_detok_sock, to_tok_sock, max_queued=None)
#   >>> loop.run_forever()
#
# 【对应章节】Chapter: docs/zh/03-server-startup.md
# ================================================================================
from __future__ import annotations

import logging
import os
from typing import Optional

from minisgl.io_struct import (
    AbortReq, BatchTokenIDOut, FlushCacheReq, FlushCacheReqOutput, GetInfoReq, GetInfoReqOutput,
    TokenizedGenerateReqInput,
)

from minisgl.tokenizer_manager import HEALTH_CHECK_PREFIX

logger = logging.getLogger(__name__)
IDLE_SPIN_WAIT_MS = 5  # 有请求却一步也走不了时的小憩 / a short nap when work exists but nothing can run


class SchedulerLoop:
    """ZMQ ⇄ Scheduler 的事件循环（见文件头）。The ZMQ ⇄ Scheduler loop; see the file header."""

    def __init__(self, scheduler, recv_from_tokenizer, send_to_detokenizer, send_to_tokenizer,
                 max_queued: Optional[int] = None):
        import zmq

        self.scheduler = scheduler
        self.recv_from_tokenizer = recv_from_tokenizer
        self.send_to_detokenizer = send_to_detokenizer
        self.send_to_tokenizer = send_to_tokenizer
        self.max_queued = max_queued
        self.poller = zmq.Poller()
        self.poller.register(recv_from_tokenizer, zmq.POLLIN)
        self.rejected = BatchTokenIDOut()  # 队列已满被拒的请求 / refused because the queue was full

    def recv_requests(self) -> None:
        """非阻塞地收完所有积压消息并处理。Drain and handle every pending message without blocking."""
        import zmq

        while True:
            try:
                msg = self.recv_from_tokenizer.recv_pyobj(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.handle(msg)

    def handle(self, msg) -> None:
        sched = self.scheduler
        if isinstance(msg, TokenizedGenerateReqInput):
            queue_full = self.max_queued is not None and len(sched.waiting_queue) >= self.max_queued
            if queue_full and not msg.rid.startswith(HEALTH_CHECK_PREFIX):
                self.rejected.add_rejected(msg.rid, f"the server is overloaded: {len(sched.waiting_queue)} requests "
                                           f"are queued (--max-queued-requests {self.max_queued})",
                                           len(msg.input_ids), 503)
            else:
                sched.add_request(msg)
        elif isinstance(msg, AbortReq):
            sched.abort_request(msg.rid)
        elif isinstance(msg, FlushCacheReq):
            self.send_to_tokenizer.send_pyobj(FlushCacheReqOutput(msg.id, sched.flush_cache()))
        elif isinstance(msg, GetInfoReq):
            stats = {**sched.get_stats(), "max_queued_requests": self.max_queued,
                     "max_running_requests": sched.max_running_requests}
            self.send_to_tokenizer.send_pyobj(GetInfoReqOutput(msg.id, stats))
        else:
            logger.warning("scheduler: ignoring an unknown message %r", type(msg).__name__)

    def run_once(self) -> None:
        """一轮：（空闲时阻塞）收消息 → 跑一步 → 发送。One round: (block when idle) recv → step → send."""
        sched = self.scheduler
        if not sched.has_work() and not len(self.rejected):
            self.poller.poll()  # 空闲：睡在 socket 上，不占 CPU / idle: sleep on the socket
        self.recv_requests()
        if len(self.rejected):
            self.send_to_detokenizer.send_pyobj(self.rejected)
            self.rejected = BatchTokenIDOut()
        if not sched.has_work():
            return
        step = sched.step()
        if len(step.out):
            self.send_to_detokenizer.send_pyobj(step.out)
        elif step.forward_mode is None:
            # 有活但这一步什么也没做（例如在等内存）：等一下新消息，别空转。
            # Work exists but nothing ran (e.g. waiting for memory): wait briefly for messages, don't spin.
            self.poller.poll(IDLE_SPIN_WAIT_MS)

    def run_forever(self) -> None:
        while True:
            self.run_once()


def run_scheduler_process(server_args, ipc, ready_writer) -> None:
    """调度进程入口（由 launch.py 以 spawn 启动）。Entry of the scheduler process (spawned by launch.py).

    【工作流程】Workflow
      1. 加载模型、建 KV 池与 Scheduler（这一步最慢）。Load the model, KV pool, Scheduler (slowest part).
      2. 绑定/连接 socket，经管道回报就绪与模型信息（上下文长度、词表、KV 容量）。
      3. run_forever()。
    """
    import zmq

    from minisgl.server.launch import child_process_setup, report_startup_error
    from minisgl.utils import configure_logging

    child_process_setup()
    configure_logging(server_args.log_level)
    try:
        from minisgl.runner.model_runner import ModelRunner
        from minisgl.scheduler.scheduler import Scheduler

        runner = ModelRunner(server_args)
        scheduler = Scheduler(server_args, model_runner=runner)
        ctx = zmq.Context()
        recv = ctx.socket(zmq.PULL)
        recv.bind(ipc.scheduler)
        to_detok = ctx.socket(zmq.PUSH)
        to_detok.connect(ipc.detokenizer)
        to_tok = ctx.socket(zmq.PUSH)
        to_tok.connect(ipc.tokenizer)
    except Exception:
        report_startup_error(ready_writer, "scheduler")
        raise SystemExit(1)
    cfg = scheduler.model_config
    ready_writer.send({"status": "ready", "pid": os.getpid(), "context_len": cfg.context_len, "vocab_size": cfg.vocab_size,
                       "max_total_num_tokens": scheduler.token_to_kv_pool_allocator.size,
                       "max_running_requests": scheduler.max_running_requests})
    SchedulerLoop(scheduler, recv, to_detok, to_tok, server_args.max_queued_requests).run_forever()
