# ================================================================================
# 🧰 小工具：加载分词器、选空闲端口、日志
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   几个到处都要用、又不属于任何一章主角的小函数。
#   Small helpers used everywhere that belong to no single chapter.
#
# 【生活比喻】Metaphor
#   厨房抽屉里的开瓶器和剪刀：不起眼，但每道菜都可能用到。
#   The bottle opener in the kitchen drawer: unremarkable, used by every dish.
#
# 【核心架构】Architecture
#   load_tokenizer(path) ──► transformers.AutoTokenizer（清楚的错误信息 / clear errors）
#   get_free_port()       ──► 本机空闲 TCP 端口（测试用）/ a free localhost port (tests)
#   to_device(list, …)    ──► 设备张量，不隐式同步 GPU / a device tensor without a hidden GPU sync
#   host_tensor(list)     ──► CPU 张量，比 torch.tensor(list) 快约 4 倍 / a CPU tensor, ~4x faster
#   check_token_ids(ids)  ──► 整数且在词表内？（C 速度）/ ints inside the vocabulary? (at C speed)
#   freeze_gc()           ──► 启动后冻结已有对象，全量回收挪到空闲时 / GC off start-up objects, full ones at idle
#   collect_deferred_gc(busy) / unfreeze_gc()  ──► 空闲时回收；引擎关掉时还原 / collect at idle; undo it all
#
# 【工作流程】Workflow
#   直接调用。Call directly.
#
# 【关键概念】Key Concepts
#   - 分词器和模型放在同一个 HF 目录：tokenizer.json + tokenizer_config.json（含 chat_template）。
#
# 【使用方式】Usage
#   >>> tok = load_tokenizer("minisgl/assets/tiny-zh-en")
#
# 【对应章节】Chapter: docs/zh/05-tokenization.md
# ================================================================================
from __future__ import annotations

import array
import gc
import logging
import os
import socket
import time


def load_tokenizer(path: str):
    """加载 HF 分词器。Load a Hugging Face tokenizer from a local folder."""
    from transformers import AutoTokenizer

    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer path {path!r} is not a directory")
    if not any(os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise FileNotFoundError(f"no tokenizer files (tokenizer.json / vocab.json) in {path!r}")
    return AutoTokenizer.from_pretrained(path)


_ARRAY_CODES = {"torch.int64": "q", "torch.int32": "i", "torch.float32": "f", "torch.float64": "d"}


def host_tensor(values, dtype=None) -> "torch.Tensor":
    """Python 数字列表 → CPU 张量。A list of Python numbers → a CPU tensor (default int64).

    torch.tensor(list) converts element by element (~0.15 µs each); array.array packs the list in C
    and torch.frombuffer wraps it without a copy, about 4x faster. That matters on the host path of
    every step (a prefill's 8k input ids, a decode's 3 × 256 columns). Nested lists are flattened
    row by row and reshaped. Other dtypes (bool, fp16, ...) fall back to torch.tensor.
    """
    import torch

    dtype = torch.int64 if dtype is None else dtype
    code = _ARRAY_CODES.get(str(dtype))
    if code is None:
        return torch.tensor(values, dtype=dtype)
    shape = None
    if values and isinstance(values[0], (list, tuple)):
        shape = (len(values), len(values[0]))
        values = [v for row in values for v in row]
        if len(values) != shape[0] * shape[1]:
            raise ValueError("host_tensor: rows of different lengths")
    if len(values) == 0:
        return torch.zeros(shape or (0,), dtype=dtype)
    # frombuffer 让张量持有 array 的引用（内存不会先被释放）/ the tensor keeps the array alive
    t = torch.frombuffer(array.array(code, values), dtype=dtype)
    return t.view(shape) if shape else t


def check_token_ids(ids, vocab_size: int):
    """所有 id 都是 [0, vocab_size) 里的 int 时返回 None，否则返回第一条问题。None if every id is fine.

    Runs at C speed (map/set/min/max, ~30-70 ns a token): a batch of 1,024 prompts of 2k tokens is
    checked before its first forward step, while the GPU waits; so it is checked once, by
    normalize_requests (TokenizedGenerateReqInput.ids_checked tells the scheduler).
    bool is rejected although it is an int subclass.
    """
    if len(ids) == 0:
        return None
    if set(map(type, ids)) != {int}:
        return "input_ids must be integers"
    lo, hi = min(ids), max(ids)
    if lo < 0 or hi >= vocab_size:
        return f"token id {lo if lo < 0 else hi} is outside the vocabulary [0, {vocab_size})"
    return None


def to_device(data, dtype, device) -> "torch.Tensor":
    """Python 列表（或 CPU 张量）→ 设备张量，不阻塞主机。A list or CPU tensor → a device tensor, host not blocked.

    `torch.tensor(data, device="cuda")` copies from pageable memory and waits for every kernel
    already queued on the stream: one hidden GPU sync per call, several per scheduler step.
    Building the tensor in pinned host memory and copying with non_blocking=True lets the CPU
    move on while the GPU is still busy (the caching host allocator keeps the buffer alive).
    """
    import torch

    if isinstance(data, torch.Tensor) and (data.is_cuda or not str(device).startswith("cuda")):
        return data.to(device=device, dtype=dtype)  # 已在目标设备，或目标是 CPU / nothing to pin
    if str(device).startswith("cuda"):
        host = data.to(dtype) if isinstance(data, torch.Tensor) else host_tensor(data, dtype)
        return host.pin_memory().to(device, non_blocking=True)
    return host_tensor(data, dtype).to(device)


def freeze_gc() -> int:
    """启动（加载权重、分词器、录 CUDA graph）之后调用：把此刻活着的对象移出 Python 垃圾回收的视野。

    Call after start-up (weights, tokenizer, CUDA graphs): moves every object alive now out of the
    Python garbage collector's sight, as SGLang does after its start-up. Returns how many.

    【为什么】Why
      Python 的循环垃圾回收每隔一阵会扫一遍所有“老”对象。启动后老对象有二十多万个（分词器、模块、图……），
      而 decode 每步为 1024 个请求新建几千个小列表，隔几步就触发一次这样的全扫。在本机 2 核 CPU 上
      （bs 1024 的共享前缀 decode，自带小模型）垃圾回收每步 5.3–5.5 ms，冻结后 0.6–1.1 ms
      （bench/gc_pauses.py，两次）。冻结只影响循环回收：引用计数归零的对象照样立刻释放。
      The cyclic collector now and then scans every "old" object: after start-up there are over two
      hundred thousand (tokenizer, modules, graphs...), while a bs-1024 decode step makes thousands of
      small lists and sets off such a full scan every few steps. On this project's 2-core CPU (bs-1024
      shared-prefix decode, bundled model) the collector took 5.3-5.5 ms per step, 0.6-1.1 ms once
      frozen (bench/gc_pauses.py, two runs). Freezing affects only the cycle collector: objects whose
      refcount drops to 0 are freed at once.
    【代价】The cost
      冻结的对象若后来成了循环垃圾就不会被回收，所以引擎关闭或被丢弃时要 gc.unfreeze()（Engine 这样做）。
      Frozen objects that later become cyclic garbage are never collected, so call unfreeze_gc() when
      the engine is shut down or dropped (Engine does).
    Also defers full collections to idle (defer_full_gc): freezing does not cover what is created later.
    """
    gc.collect()
    gc.freeze()
    defer_full_gc()
    return gc.get_freeze_count()


def unfreeze_gc() -> None:
    """freeze_gc 的逆：解冻，并恢复自动全量回收。Undo freeze_gc: unfreeze, automatic full collections back."""
    gc.unfreeze()
    restore_full_gc()


# 忙的时候全量回收最多推迟这么久（一直不空闲的服务器也要回收循环垃圾）。同 SGLang 的思路（PR 28067、36366）。
# The longest a full collection waits while busy (a server that is never idle still collects its cycles).
FULL_GC_MAX_DEFER_S = 60.0
_GC_DEFER = {"threshold2": None, "last_full": 0.0}


def defer_full_gc() -> None:
    """关掉自动的全量（第 2 代）回收，改由 collect_deferred_gc 在空闲时做。Full collections wait for idle.

    【为什么】Why
      冻结之后，垃圾回收仍会隔一阵扫一遍之后新建的所有老对象：1,024 个请求的 prompt 列表（每个 2k 个
      元素，还有好几份拷贝）都在里面。H200 上的 bs-1024 共享前缀 decode 里，这样的全扫每约 33 步一次，
      每次让 GPU 空等 45–67 ms；本机 2 核 CPU 上（bench/gc_pauses.py 之外的探针，800 token 的 prompt）
      4 次共 114 ms。这些列表都活着，扫完什么也收不走；第 0、1 代回收照常（每次几毫秒以内）。
      After freezing, the collector still scans every old object created since, now and then: the
      prompt lists of 1,024 requests (2k elements each, in several copies) among them. In bs-1024
      shared-prefix decode on an H200 such a full scan came every ~33 steps and left the GPU idle
      for 45-67 ms each time; all those lists are alive, so the scan frees nothing. Generations 0
      and 1 still run as usual (a few ms at most each).
    【代价】The cost
      循环垃圾晚一点回收：空闲时（collect_deferred_gc(busy=False)），最晚忙着时过 FULL_GC_MAX_DEFER_S 秒。
      Cyclic garbage is collected later: at idle, or after FULL_GC_MAX_DEFER_S while busy.
      restore_full_gc() puts the threshold back (Engine does when shut down or dropped).
    """
    if _GC_DEFER["threshold2"] is None:
        t0, t1, t2 = gc.get_threshold()
        _GC_DEFER["threshold2"] = t2
        gc.set_threshold(t0, t1, 1 << 30)  # 第 1 代回收 2^30 次才触发一次全量 / practically never
    _GC_DEFER["last_full"] = time.monotonic()


def collect_deferred_gc(busy: bool) -> bool:
    """推迟的全量回收到期了就做（空闲时；忙着时等满 FULL_GC_MAX_DEFER_S）。Run a due full collection.

    Due = at least as many generation-1 collections since the last full one as the original
    threshold asks for, i.e. CPython would have run it by now. Returns whether it collected.
    """
    t2 = _GC_DEFER["threshold2"]
    if t2 is None or gc.get_count()[2] < t2:
        return False
    if busy and time.monotonic() - _GC_DEFER["last_full"] < FULL_GC_MAX_DEFER_S:
        return False
    gc.collect()
    _GC_DEFER["last_full"] = time.monotonic()
    return True


def restore_full_gc() -> None:
    """恢复自动全量回收。Automatic full collections back on (undoes defer_full_gc)."""
    t2, _GC_DEFER["threshold2"] = _GC_DEFER["threshold2"], None
    if t2 is not None:
        t0, t1, _ = gc.get_threshold()
        gc.set_threshold(t0, t1, t2)


def get_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def configure_logging(level: str = "info") -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), format="[%(asctime)s %(name)s] %(message)s",
                        datefmt="%H:%M:%S")
