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
#   --tp-size N：每个 rank 一个这样的进程。只有 rank 0（leader）有 socket；它把每轮收到的消息
#   broadcast_pyobj 给其他 rank（follower），大家处理同样的消息、跑同样的 step()，只有 rank 0 发出结果。
#   With --tp-size N there is one such process per rank. Only rank 0 (the leader) has sockets; it
#   broadcasts each round's messages to the followers, all handle the same messages and run the
#   same step(), and only rank 0 sends results.
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

from minisgl import distributed
from minisgl.io_struct import (
    AbortReq, BatchTokenIDOut, FlushCacheReq, FlushCacheReqOutput, GetInfoReq, GetInfoReqOutput,
    TokenizedGenerateReqInput,
)

from minisgl.tokenizer_manager import HEALTH_CHECK_PREFIX
from minisgl.utils import collect_deferred_gc, freeze_gc

logger = logging.getLogger(__name__)
IDLE_SPIN_WAIT_MS = 5  # 有请求却一步也走不了时的小憩 / a short nap when work exists but nothing can run


class SchedulerLoop:
    """ZMQ ⇄ Scheduler 的事件循环（见文件头）。The ZMQ ⇄ Scheduler loop; see the file header."""

    def __init__(self, scheduler, recv_from_tokenizer, send_to_detokenizer, send_to_tokenizer,
                 max_queued: Optional[int] = None):
        """三个 socket 都是 None 时这是张量并行的 follower：消息来自 rank 0 的广播。

        With all three sockets None this is a tensor-parallel follower: messages come from rank 0's broadcast.
        """
        import zmq

        self.scheduler = scheduler
        self.recv_from_tokenizer = recv_from_tokenizer
        self.send_to_detokenizer = send_to_detokenizer
        self.send_to_tokenizer = send_to_tokenizer
        self.max_queued = max_queued
        self.is_leader = recv_from_tokenizer is not None
        self.poller = zmq.Poller()
        if self.is_leader:
            self.poller.register(recv_from_tokenizer, zmq.POLLIN)
        self.rejected = BatchTokenIDOut()  # 队列已满被拒的请求 / refused because the queue was full

    def recv_requests(self) -> None:
        """非阻塞地收完所有积压消息，广播给其他 rank，再处理。

        Drain every pending message without blocking, broadcast them to the other ranks (a no-op
        without tensor parallelism), then handle them — on every rank, in the same order.
        """
        import zmq

        msgs = []
        while self.is_leader:
            try:
                msgs.append(self.recv_from_tokenizer.recv_pyobj(zmq.NOBLOCK))
            except zmq.Again:
                break
        for msg in distributed.broadcast_pyobj(msgs):
            self.handle(msg)

    def _send(self, sock, obj) -> None:
        if sock is not None:  # follower 不发送 / followers send nothing
            sock.send_pyobj(obj)

    def handle(self, msg) -> None:
        sched = self.scheduler
        if isinstance(msg, TokenizedGenerateReqInput):
            queued = len(sched.waiting_queue) + len(sched.grammar_queue)  # 等语法的也算排队 / grammar waits count
            queue_full = self.max_queued is not None and queued >= self.max_queued
            if queue_full and not msg.rid.startswith(HEALTH_CHECK_PREFIX):
                self.rejected.add_rejected(msg.rid, f"the server is overloaded: {queued} requests "
                                           f"are queued (--max-queued-requests {self.max_queued})",
                                           len(msg.input_ids), 503)
            else:
                sched.add_request(msg)
        elif isinstance(msg, AbortReq):
            sched.abort_request(msg.rid)
        elif isinstance(msg, FlushCacheReq):
            self._send(self.send_to_tokenizer, FlushCacheReqOutput(msg.id, sched.flush_cache()))
        elif isinstance(msg, GetInfoReq):
            stats = {**sched.get_stats(), "max_queued_requests": self.max_queued,
                     "max_running_requests": sched.max_running_requests}
            self._send(self.send_to_tokenizer, GetInfoReqOutput(msg.id, stats))
        else:
            logger.warning("scheduler: ignoring an unknown message %r", type(msg).__name__)

    def run_once(self) -> None:
        """一轮：（空闲时阻塞）收消息 → 跑一步 → 发送。One round: (block when idle) recv → step → send."""
        sched = self.scheduler
        idle = not sched.has_work()
        if idle:
            collect_deferred_gc(busy=False)  # 推迟的全量回收到期就在空闲时做 / a due full collection, at idle (every rank)
        if idle and not len(self.rejected) and self.is_leader:
            # 空闲：睡在 socket 上，不占 CPU（follower 睡在下一次广播上）。
            # Idle: sleep on the socket (a follower sleeps in the next broadcast instead).
            self.poller.poll()
        self.recv_requests()
        if len(self.rejected):
            self._send(self.send_to_detokenizer, self.rejected)
            self.rejected = BatchTokenIDOut()
        if not sched.has_work():
            return
        collect_deferred_gc(busy=True)  # 一直不空闲时也不会无限推迟 / never deferred forever
        step = sched.step()
        if len(step.out):
            self._send(self.send_to_detokenizer, step.out)
        elif step.forward_mode is None and self.is_leader:
            # 有活但这一步什么也没做（例如在等内存）：等一下新消息，别空转。
            # Work exists but nothing ran (e.g. waiting for memory): wait briefly for messages, don't spin.
            self.poller.poll(IDLE_SPIN_WAIT_MS)

    def run_forever(self) -> None:
        while True:
            self.run_once()


def run_scheduler_process(server_args, ipc, ready_writer, tp_rank: int = 0, dp_rank: int = 0) -> None:
    """调度进程入口（由 launch.py 以 spawn 启动）。Entry of the scheduler process (spawned by launch.py).

    【工作流程】Workflow
      1. 张量并行时先加入本副本的进程组（GPU：每个 rank 一张卡）。Join the TP group (one GPU per rank).
      2. 加载模型（本 rank 的分片）、建 KV 池与 Scheduler（这一步最慢）。Load this rank's shard, pool, Scheduler.
      3. rank 0 绑定/连接 socket；经管道回报就绪与模型信息（上下文长度、词表、KV 容量）。
      4. run_forever()。
    """
    import zmq

    from minisgl.server.launch import child_process_setup, report_startup_error
    from minisgl.utils import configure_logging

    child_process_setup()
    configure_logging(server_args.log_level)
    name = "scheduler" + (f" (dp {dp_rank}, tp {tp_rank})" if server_args.tp_size * server_args.dp_size > 1 else "")
    try:
        if server_args.device == "cuda":
            import torch

            torch.cuda.set_device(dp_rank * server_args.tp_size + tp_rank)  # 每个 rank 一张卡 / one GPU per rank
        distributed.init_distributed(tp_rank, server_args.tp_size, ipc.dist_init_method(dp_rank), server_args.device)
        from minisgl.runner.model_runner import ModelRunner
        from minisgl.scheduler.scheduler import Scheduler

        runner = ModelRunner(server_args)
        scheduler = Scheduler(server_args, model_runner=runner)
        # 一个进程一个引擎，活到进程结束：垃圾回收不再扫启动时的对象，全量回收等到空闲时（run_once）。
        # One engine per process, alive until it ends: the GC leaves start-up objects alone, full collections wait
        # for idle (run_once; utils.freeze_gc).
        freeze_gc()
        recv = to_detok = to_tok = None
        if tp_rank == 0:  # 只有 leader 和外界说话 / only the leader talks to the outside
            ctx = zmq.Context()
            recv = ctx.socket(zmq.PULL)
            recv.bind(ipc.scheduler_for(dp_rank))
            to_detok = ctx.socket(zmq.PUSH)
            to_detok.connect(ipc.detokenizer)
            to_tok = ctx.socket(zmq.PUSH)
            to_tok.connect(ipc.tokenizer)
    except Exception:
        report_startup_error(ready_writer, name)
        raise SystemExit(1)
    cfg = scheduler.model_config
    ready_writer.send({"status": "ready", "pid": os.getpid(), "context_len": cfg.context_len, "vocab_size": cfg.vocab_size,
                       "max_total_num_tokens": scheduler.token_to_kv_pool_allocator.size,
                       "max_running_requests": scheduler.max_running_requests})
    SchedulerLoop(scheduler, recv, to_detok, to_tok, server_args.max_queued_requests).run_forever()
