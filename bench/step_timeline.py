"""每一步的时间线：每次发射记一行，再加上主机各阶段的时间和 GPU 的忙 / 闲。
The step timeline: one row per launched batch, the host's time per phase, and the GPU's busy / idle time.

【生活比喻】Metaphor
  厨房的出菜记录：每道菜什么时候下单（发射）、灶台（GPU）真正在炒的时间、灶台空着等单的时间，
  还有跑堂（主机）每一轮花在哪：排队（调度）、写单（准备输入）、传菜（处理结果）。
  灶台常常空着，说明慢的是跑堂，不是厨师。
  A kitchen's ticket log: when each order went in (launch), how long the stove (GPU) actually cooked,
  how long it stood idle waiting for the next ticket, and where the waiter (host) spent each round:
  seating (scheduling), writing tickets (preparing inputs), carrying plates (processing results).
  An often idle stove means the waiter is slow, not the cook.

【量什么】What it measures
  rows        每次 run_batch 一行 (时刻, 模式, batch 大小, 本批 KV token 数)；两行之差 ≈ 这一步的墙钟时间
              （重叠调度下晚记一批，总数不受影响）。One row per run_batch; the gap to the next row is
              about one step of wall time (one batch late under overlap scheduling; totals are right).
  gpu busy    每批在 GPU 上从 forward 的第一个 kernel 到采样结果拷回主机排队处之间的时间（CUDA event）。
              GPU time of each batch, from its forward pass to the queued copy of its tokens (CUDA events).
  gpu idle    上一批结束到这一批开始之间 GPU 空着的时间：主机没及时发射下一批。
              The gap between two batches on the GPU: the host did not launch the next one in time.
  host        主机在各阶段花的时间（不同步设备，只量 Python 与 kernel 启动）：
              The host's time per phase (no device sync: Python work and kernel launches only):
                schedule       选下一批（含 lpm 排序）/ choose the next batch (lpm sort included)
                prepare        _prepare_decode / _prepare_extend：槽位、输入张量 / slots and input tensors
                forward        发射前向（CUDA graph 回放或逐个 kernel）/ launch the forward pass
                sample         发射采样 / launch the sampler
                wait           等设备算完上一批（LaunchedBatch.results）/ blocked on the device
                process        process_batch_result：追加 token、检查结束、交给缓存 / append, check, cache
                other          其余（引擎循环、反分词……）= 总时间 − 上面之和 / the rest: engine loop, detokenizer…

Used by `offline_throughput.py --timeline` and `prefix_cache.py --timeline`.
"""
from __future__ import annotations

import functools
import time
from typing import Dict, List, Optional

import torch

HOST_PHASES = ("schedule", "prepare", "forward", "sample", "wait", "process", "other")


class StepTimeline:
    """挂在一个 Scheduler 上，记录它之后的每一步。Attach to a Scheduler; record every step after that."""

    def __init__(self, scheduler):
        self.rows: List[tuple] = []  # (时刻 / time, 模式 / mode, bs, kv tokens)
        self.events: List[tuple] = []  # (start, end) CUDA events，每批一对 / one pair per batch
        self.host: Dict[str, float] = {k: 0.0 for k in HOST_PHASES}
        self.t_start = time.perf_counter()
        self.t_end: Optional[float] = None
        self.cuda = str(scheduler.model_runner.device).startswith("cuda")
        self._wrap(scheduler)

    # ======== 包装 / Wrapping ========
    def _timed(self, phase: str, fn):
        host = self.host

        @functools.wraps(fn)
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                host[phase] += time.perf_counter() - t

        return wrapper

    def _wrap(self, sch) -> None:
        sch._schedule = self._timed("schedule", sch._schedule)
        sch._prepare_decode = self._timed("prepare", sch._prepare_decode)
        sch._prepare_extend = self._timed("prepare", sch._prepare_extend)
        sch.sampler.sample = self._timed("sample", sch.sampler.sample)
        sch.process_batch_result = self._timed("process", sch.process_batch_result)
        # _process_launched = 等设备 + process_batch_result；等的时间 = 两者之差（见 summary）。
        # _process_launched = the wait + process_batch_result; the wait is the difference (see summary).
        sch._process_launched = self._timed("wait", sch._process_launched)
        mr, forward, run_batch = sch.model_runner, sch.model_runner.forward, sch.run_batch
        pending: list = []  # 这一批的 start event，run_batch 返回时配对 / this batch's start event

        def forward_after_start_event(fb):
            if self.cuda:
                start = torch.cuda.Event(enable_timing=True)
                start.record()
                pending.append(start)
            return forward(fb)

        def recorded_run_batch(batch, mode):
            launched = run_batch(batch, mode)
            self.rows.append((time.perf_counter(), mode.name, len(batch), sum(r.kv_len for r in batch)))
            if self.cuda and pending:
                end = torch.cuda.Event(enable_timing=True)
                end.record()
                self.events.append((pending.pop(), end))
            return launched

        # 实例属性遮住类上的方法；调度器里的 self.model_runner.forward(...) 会走到这里。
        # Instance attributes shadow the class methods; the scheduler's calls land here.
        mr.forward = self._timed("forward", forward_after_start_event)
        sch.run_batch = recorded_run_batch

    def detach(self, sch) -> None:
        """去掉包装（ModelRunner 会被下一个 Scheduler 复用）。Remove the wrappers: the ModelRunner is reused."""
        for obj, name in [(sch, "_schedule"), (sch, "_prepare_decode"), (sch, "_prepare_extend"),
                          (sch, "process_batch_result"), (sch, "_process_launched"), (sch, "run_batch"),
                          (sch.sampler, "sample"), (sch.model_runner, "forward")]:
            obj.__dict__.pop(name, None)

    def restart(self) -> None:
        """从现在起重新记录（丢掉之前的行与主机账）。Start over from now: drop earlier rows and host time."""
        self.rows.clear()
        self.events.clear()
        self.host.update({k: 0.0 for k in HOST_PHASES})  # 原地清零：包装函数握着这个字典 / the wrappers hold this dict
        self.t_start = time.perf_counter()

    def stop(self) -> None:
        """结束记录（调用者先同步设备）。Close the record; the caller has synced the device."""
        self.t_end = time.perf_counter()

    # ======== 汇总 / Summary ========
    def gpu_times(self) -> List[tuple]:
        """每批 (GPU 忙 ms, 之前 GPU 空闲 ms)；不在 GPU 上时为空。(busy ms, idle ms before it) per batch."""
        if not self.events:
            return []
        torch.cuda.synchronize()
        out, prev_end = [], None
        for start, end in self.events:
            idle = prev_end.elapsed_time(start) if prev_end is not None else 0.0
            out.append((start.elapsed_time(end), max(idle, 0.0)))
            prev_end = end
        return out

    def host_summary(self) -> Dict[str, float]:
        """各阶段的主机秒数；wait 已减去其中的 process。Host seconds per phase; process is taken out of wait."""
        h = dict(self.host)
        h["wait"] = max(h["wait"] - h["process"], 0.0)
        total = (self.t_end or time.perf_counter()) - self.t_start
        h["other"] = max(total - sum(v for k, v in h.items() if k != "other"), 0.0)
        h["total"] = total
        return {k: round(v, 3) for k, v in h.items()}

    def summary(self, kv_bytes_per_token: int) -> dict:
        """按模式、按 batch 大小分档汇总（decode 还有 KV GB/s）。Per mode and batch-size bucket."""
        rows = self.rows + [(self.t_end or time.perf_counter(), "END", 0, 0)]
        gpu = self.gpu_times()
        out: dict = {}
        for i, ((t0, mode, bs, kv), (t1, *_)) in enumerate(zip(rows, rows[1:])):
            if mode == "DECODE":
                # 256 以内每 32 一档，再往上每 128 一档 / buckets of 32 up to 256, of 128 beyond
                width = 32 if bs <= 256 else 128
                hi = width * ((bs + width - 1) // width)
                key = f"DECODE bs {hi - width + 1}-{hi}"
            else:
                key = mode
            d = out.setdefault(key, {"steps": 0, "time_s": 0.0, "kv_GB": 0.0, "gpu_busy_s": 0.0, "gpu_idle_s": 0.0})
            d["steps"] += 1
            d["time_s"] += t1 - t0
            d["kv_GB"] += kv * kv_bytes_per_token / 1e9
            if i < len(gpu):
                d["gpu_busy_s"] += gpu[i][0] / 1e3
                d["gpu_idle_s"] += gpu[i][1] / 1e3
        for d in out.values():
            n = d["steps"]
            d["ms_per_step"] = round(1e3 * d["time_s"] / n, 3)
            d["kv_GBps"] = round(d["kv_GB"] / d["time_s"], 1) if d["time_s"] else None
            if gpu:
                # 忙：这一批在 GPU 上的时间；闲：它开始之前 GPU 空着的时间（主机没跟上）。
                # busy: this batch on the GPU; idle: the GPU waiting before it (the host was late).
                d["gpu_busy_ms_per_step"] = round(1e3 * d["gpu_busy_s"] / n, 3)
                d["gpu_idle_ms_per_step"] = round(1e3 * d["gpu_idle_s"] / n, 3)
            for k in ("gpu_busy_s", "gpu_idle_s"):
                del d[k]
            d["time_s"], d["kv_GB"] = round(d["time_s"], 3), round(d["kv_GB"], 2)
        return dict(sorted(out.items()))


def print_summary(timeline: dict, host: Optional[dict] = None, indent: str = "    ") -> None:
    """把 summary() 与 host_summary() 打印成人能读的几行。Print the summaries as a few readable lines."""
    for phase, d in timeline.items():
        gpu = (f"  gpu busy {d['gpu_busy_ms_per_step']:>7.3f} idle {d['gpu_idle_ms_per_step']:>7.3f} ms/step"
               if "gpu_busy_ms_per_step" in d else "")
        print(f"{indent}{phase:<18} steps {d['steps']:>5}  {d['time_s']:>7.3f} s  {d['ms_per_step']:>7.3f} ms/step{gpu}")
    if host:
        print(f"{indent}host s: " + "  ".join(f"{k} {v:.3f}" for k, v in host.items()))
