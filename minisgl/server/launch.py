# ================================================================================
# 🚀 服务器启动（launch_server）：三个进程、就绪、信号与看门狗
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   `minisgl serve` 的实现。像 SGLang 一样把服务器拆成三个进程：本进程跑 HTTP（FastAPI +
#   TokenizerManager），另起调度进程（Scheduler + 模型）和反分词进程，三者用 ZMQ ipc:// socket 相连。
#   这里负责：按顺序启动、等它们就绪、打印监听地址、处理 Ctrl-C / SIGTERM、子进程意外死亡时让整个
#   服务器带着清楚的错误退出，最后不留孤儿进程和 ipc 文件。
#   `minisgl serve`. As in SGLang, three processes: this one runs HTTP (FastAPI + TokenizerManager),
#   plus a scheduler process (Scheduler + model) and a detokenizer process, joined by ZMQ ipc://
#   sockets. This file starts them in order, waits until they are ready, prints where it listens,
#   handles Ctrl-C / SIGTERM, takes the server down with a clear message when a child dies, and
#   leaves no orphan process and no ipc file behind.
#
# 【生活比喻】Metaphor
#   餐厅开门：先让厨房（调度进程）生火、传菜员（反分词进程）就位，两边都喊“好了”，才打开大门
#   （HTTP）迎客。打烊时先关大门，再让厨房熄火。厨房着火（子进程死掉）就立刻关门，而不是让客人干等。
#   Opening a restaurant: the kitchen lights its stoves, the runners take their places; only when both
#   call "ready" are the doors opened. At closing the doors shut first, then the kitchen. If the kitchen
#   catches fire, the doors close at once instead of leaving guests waiting.
#
# 【核心架构】Architecture
#   launch_server (HTTP 进程 / the HTTP process)
#    ├─ spawn ─► run_scheduler_process    PULL ipc://<dir>/scheduler    (model + Scheduler)
#    │           --tp-size N：每个 rank 一个（只有 rank 0 有 socket）；--dp-size M：M 个副本，
#    │           副本 i 的地址是 scheduler-dp<i>，由 TokenizerManager 的 DataParallelRouter 选。
#    │           One per TP rank (only rank 0 has sockets); M replicas, chosen by the router.
#    ├─ spawn ─► run_detokenizer_process  PULL ipc://<dir>/detokenizer
#    ├─ TokenizerManager                  PULL ipc://<dir>/tokenizer    (asyncio)
#    ├─ uvicorn + FastAPI app (http_server.create_app)
#    └─ _watchdog: 子进程死亡 / 收到信号 → server.should_exit
#   <dir> = tempfile.mkdtemp() 私有目录（0700），关机时删除 / a private 0700 dir, removed at shutdown
#
# 【工作流程】Workflow
#   1. resolve 参数；先检查模型目录、分词器、端口（出错立刻报，不必等子进程）。
#   2. 建私有 ipc 目录；spawn 两个子进程；等它们经管道报告 ready（或报错 / 死亡）。
#   3. asyncio 里启动 TokenizerManager 与 uvicorn；开始监听后做一次 1-token 预热生成，
#      然后打印 "minisgl server is ready: http://host:port"。
#   4. 信号 / 子进程死亡 → uvicorn 优雅退出（最多等 GRACEFUL_SHUTDOWN_S 秒）→ 终止子进程 → 删 ipc 目录。
#
# 【关键概念】Key Concepts
#   - spawn（不是 fork）：torch 与 fork 相处不好；spawn 的子进程从干净的解释器开始。
#   - 子进程忽略 SIGINT：终端里的 Ctrl-C 会发给整个进程组，由父进程统一收尾。子进程还设置了
#     PR_SET_PDEATHSIG：父进程即使被 kill -9，子进程也会随之退出（Linux）。
#     Children ignore SIGINT (the parent shuts them down) and die with the parent (PDEATHSIG).
#   - ZMQ 消息用 pickle：只因 socket 文件在 0700 的私有目录里（只有本用户能连），这才安全。
#     pickle over ZMQ is safe only because the sockets live in a private 0700 directory.
#   - 绑定非回环地址却没有 --api-key 时打印警告。Non-loopback host without --api-key: warn.
#     key 也可以放在环境变量 MINISGL_API_KEY 里（`ps` 看不到）。The key may also come from $MINISGL_API_KEY.
#
# 【使用方式】Usage
#   $ minisgl serve --model-path /path/to/model --port 30000
#   $ curl http://127.0.0.1:30000/health
#
# 【对应章节】Chapter: docs/zh/03-server-startup.md
# ================================================================================
from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import sys
import tempfile
import traceback
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_connections
from typing import Dict, Optional

from minisgl.server_args import ServerArgs

logger = logging.getLogger("minisgl.server")

GRACEFUL_SHUTDOWN_S = 3  # 关机时等在途请求的最长时间 / how long shutdown waits for in-flight requests
CHILD_STOP_TIMEOUT_S = 5
WATCHDOG_INTERVAL_S = 0.2
WARMUP_TIMEOUT_S = 120
API_KEY_ENV = "MINISGL_API_KEY"  # --api-key 的替代：不出现在命令行里 / instead of --api-key, kept out of argv


# ======== 进程间的地址 / IPC addresses ========
@dataclass
class IpcNames:
    """三个 PULL socket 的地址（都在一个私有临时目录里）。The three PULL addresses, in one private dir."""

    dir: str
    scheduler: str
    detokenizer: str
    tokenizer: str

    @classmethod
    def create(cls) -> "IpcNames":
        d = tempfile.mkdtemp(prefix="minisgl-ipc-")  # mkdtemp 本身就是 0700 / mkdtemp is already 0700
        os.chmod(d, 0o700)
        return cls(d, f"ipc://{d}/scheduler", f"ipc://{d}/detokenizer", f"ipc://{d}/tokenizer")

    def scheduler_for(self, dp_rank: int) -> str:
        """第 dp_rank 个数据并行副本的调度地址。The scheduler address of data-parallel replica dp_rank."""
        return self.scheduler if dp_rank == 0 else f"{self.scheduler}-dp{dp_rank}"

    def dist_init_method(self, dp_rank: int) -> str:
        """副本内 TP 进程组的会合文件（同一个私有目录，不占端口）。The TP group's rendezvous file."""
        return f"file://{self.dir}/dist-init-dp{dp_rank}"

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


# ======== 子进程里调用的小工具 / Helpers called inside the children ========
def child_process_setup() -> None:
    """子进程：忽略 Ctrl-C（父进程负责关机），父进程死了自己也退出。

    In a child: ignore Ctrl-C (the parent shuts us down) and die when the parent dies.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            PR_SET_PDEATHSIG = 1
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except OSError:
            pass


def report_startup_error(ready_writer, name: str) -> None:
    ready_writer.send({"status": "error", "message": f"the {name} process failed to start:\n{traceback.format_exc()}"})


# ======== 子进程管理 / Child processes ========
class StartupError(RuntimeError):
    pass


class ChildProcesses:
    """启动、等待、监视、停止调度进程与反分词进程。Start, await, watch and stop the two children."""

    def __init__(self, args: ServerArgs, ipc: IpcNames):
        self.args, self.ipc = args, ipc
        self.procs: Dict[str, mp.Process] = {}
        self.failure: Optional[str] = None

    def start(self, should_stop) -> dict:
        """spawn 子进程并等它们就绪；返回调度进程的模型信息。Spawn and await readiness; return model info."""
        from minisgl.detokenizer import run_detokenizer_process
        from minisgl.scheduler.scheduler_process import run_scheduler_process

        ctx = mp.get_context("spawn")
        readers = {}
        # 子进程在 import torch 的那几秒还没来得及忽略 SIGINT：先在父进程里设成 SIG_IGN，exec 后会保留。
        # A child needs seconds (importing torch) before it can ignore SIGINT itself: SIG_IGN set here
        # survives exec, so a Ctrl-C during start-up prints no traceback from the children.
        handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
        # 每个数据并行副本的每个 TP rank 一个调度进程；(0, 0) 就叫 "scheduler"。
        # One scheduler process per (DP replica, TP rank); (0, 0) is plain "scheduler".
        targets = []
        for dp in range(self.args.dp_size):
            for tp in range(self.args.tp_size):
                name = "scheduler" + (f"-dp{dp}" if dp else "") + (f"-tp{tp}" if tp else "")
                targets.append((name, run_scheduler_process, (tp, dp)))
        targets.append(("detokenizer", run_detokenizer_process, ()))
        try:
            for name, target, extra in targets:
                reader, writer = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=target, args=(self.args, self.ipc, writer, *extra), name=f"minisgl-{name}",
                                   daemon=True)
                proc.start()
                writer.close()  # 只留子进程那一端 / only the child keeps the write end
                self.procs[name], readers[name] = proc, reader
        finally:
            signal.signal(signal.SIGINT, handler)
        infos = {}
        while len(infos) < len(readers):
            if should_stop():
                raise KeyboardInterrupt
            pending = [r for n, r in readers.items() if n not in infos]
            wait_connections(pending + [self.procs[n].sentinel for n in readers if n not in infos],
                             timeout=WATCHDOG_INTERVAL_S)
            for name, reader in readers.items():
                if name in infos:
                    continue
                if reader.poll():
                    try:
                        msg = reader.recv()
                    except EOFError:
                        msg = None
                    if msg and msg.get("status") == "ready":
                        infos[name] = msg
                        continue
                    if msg:
                        raise StartupError(msg["message"])
                if not self.procs[name].is_alive():
                    raise StartupError(f"the {name} process exited during start-up "
                                       f"(exit code {self.procs[name].exitcode})")
        info = dict(infos["scheduler"])
        # 所有副本的 leader 的 pid（/get_server_info 报告）。The pids of every replica's leader.
        info["scheduler_pids"] = [infos[n]["pid"] for n, *_ in targets if n.startswith("scheduler") and "-tp" not in n]
        return info

    def dead_child(self) -> Optional[str]:
        for name, proc in self.procs.items():
            if not proc.is_alive():
                return f"the {name} process died unexpectedly (exit code {proc.exitcode})"
        return None

    def stop(self) -> None:
        """先 SIGTERM，等一会儿，还活着就 SIGKILL。SIGTERM, wait, then SIGKILL the stragglers."""
        for proc in self.procs.values():
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs.values():
            proc.join(CHILD_STOP_TIMEOUT_S)
            if proc.is_alive():
                proc.kill()
                proc.join(CHILD_STOP_TIMEOUT_S)


# ======== 入口 / Entry point ========
def _bind_socket(host: str, port: int) -> socket.socket:
    """先占住端口：端口被占用时在加载模型之前就报错。Bind first, so a busy port fails before the model loads."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def is_loopback(ip: str) -> bool:
    """127.0.0.0/8 与 ::1 只有本机能连。Only this machine can reach 127.0.0.0/8 and ::1."""
    try:
        return ipaddress.ip_address(ip.split("%")[0]).is_loopback
    except ValueError:
        return False


def launch_server(server_args: ServerArgs) -> int:
    """启动三进程服务器并阻塞到关机，返回退出码（见文件头）。Run the server until shutdown; return an exit code.

    0 after Ctrl-C / SIGTERM; 1 when a child failed; ValueError / FileNotFoundError for bad arguments.
    """
    from minisgl.utils import configure_logging, load_tokenizer

    configure_logging(server_args.log_level)
    # ======== 第1步：信号只设标志，由各个等待循环收尾 / Step 1: signals only set a flag; the loops shut down ========
    stop = {"flag": False}

    def on_signal(signum, frame):
        stop["flag"] = True

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        # ======== 第2步：先检查能很快发现的错误 / Step 2: fail fast on what can be checked quickly ========
        from minisgl.model.config import ModelConfig

        if server_args.api_key is None and os.environ.get(API_KEY_ENV):
            # 环境变量里的 key：不出现在 `ps` 看得到的命令行里。A key from the environment stays out of argv.
            server_args = dataclasses.replace(server_args, api_key=os.environ[API_KEY_ENV])
        args = server_args.resolve()
        cfg = ModelConfig.from_pretrained(args.model_path, args.context_length)
        from minisgl.model.parallel_layers import check_tp_shapes

        check_tp_shapes(cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size, args.tp_size)
        tokenizer = load_tokenizer(args.tokenizer_path)
        sock = _bind_socket(args.host, args.port)
    except BaseException:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        raise
    if not is_loopback(sock.getsockname()[0]) and not args.api_key:
        logger.warning("listening on %s, which is not a loopback address, without --api-key: anyone who can reach "
                       "this port can use the server / 非回环地址且未设置 --api-key，任何人都能访问", args.host)
    ipc = IpcNames.create()
    logger.info("ZMQ sockets in %s (private, removed at shutdown)", ipc.dir)
    children = ChildProcesses(args, ipc)
    try:
        if stop["flag"]:
            raise KeyboardInterrupt
        # ======== 第3步：子进程 / Step 3: the children ========
        info = children.start(lambda: stop["flag"])
        # ======== 第4步：HTTP（直到关机）/ Step 4: HTTP, until shutdown ========
        return asyncio.run(_serve(args, tokenizer, info, ipc, children, sock, stop))
    except KeyboardInterrupt:
        logger.info("interrupted during start-up / 启动中被中断")
        return 0
    except StartupError as e:
        print(f"minisgl: error: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        # ======== 第5步：收尾 / Step 5: clean up ========
        children.stop()
        ipc.cleanup()
        sock.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)


async def _serve(args: ServerArgs, tokenizer, info: dict, ipc: IpcNames, children: ChildProcesses,
                 sock: socket.socket, stop: dict) -> int:
    import uvicorn

    from minisgl.server.http_server import create_app
    from minisgl.server.metrics import MetricsCollector
    from minisgl.tokenizer_manager import TokenizerManager

    name = args.served_model_name or args.model_path
    metrics = MetricsCollector(name) if args.enable_metrics else None
    tm = TokenizerManager(args, ipc, tokenizer, info["context_len"], info["vocab_size"], metrics)
    tm.start()
    app = create_app(tm, args, info)
    config = uvicorn.Config(app, log_level=args.log_level, access_log=args.log_level == "debug", lifespan="off",
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    server = uvicorn.Server(config)
    result = {"rc": 0}
    tasks = [asyncio.create_task(_watchdog(server, children, tm, stop, result)),
             asyncio.create_task(_announce_ready(server, tm, sock, result))]
    try:
        await server.serve(sockets=[sock])
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        tm.close()
    return result["rc"]


async def _watchdog(server, children: ChildProcesses, tm, stop: dict, result: dict) -> None:
    """子进程死了或收到信号：让 uvicorn 退出，并让在等的请求立刻得到错误而不是挂住。

    A dead child or a signal: stop uvicorn, and fail waiting requests at once instead of hanging them.
    """
    while not server.should_exit:
        dead = children.dead_child()
        if dead:
            message = f"{dead}; shutting the server down / 子进程意外退出，服务器关闭"
            print(f"minisgl: error: {message}", file=sys.stderr, flush=True)
            tm.fail_all(message)
            result["rc"] = 1
            server.should_exit = True
        if stop["flag"]:
            server.should_exit = True
        await asyncio.sleep(WATCHDOG_INTERVAL_S)
    # 关机（信号可能由 uvicorn 自己接到）：在途请求立刻以 abort 结束——流式客户端收到最后一个事件和
    # [DONE]，而不是在 uvicorn 的优雅等待之后被切断。
    # Shutting down (uvicorn may have caught the signal itself): in-flight requests end now with an
    # abort reason — a stream gets its last event and [DONE] — instead of being cut off after
    # uvicorn's graceful wait.
    if not tm.dead:
        tm.fail_all("the server is shutting down (SIGTERM / Ctrl-C) / 服务器正在关闭")


async def _announce_ready(server, tm, sock: socket.socket, result: dict) -> None:
    """开始监听后预热一次，再打印地址。After listening starts: warm up once, then print the address."""
    while not server.started:
        await asyncio.sleep(0.02)
    if not await tm.health_generate(WARMUP_TIMEOUT_S):
        print("minisgl: error: the warm-up generation failed; shutting down", file=sys.stderr, flush=True)
        result["rc"] = 1
        server.should_exit = True
        return
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    print(f"minisgl server is ready: {url} (Ctrl-C to stop)", flush=True)
