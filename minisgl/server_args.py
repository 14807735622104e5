# ================================================================================
# ⚙️ 启动参数（ServerArgs）：所有旋钮在一个地方
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   一个 dataclass 列出引擎和服务器的全部参数，名字与 SGLang 的 server_args 相同
#   （--page-size、--disable-radix-cache、--schedule-policy……）。命令行参数由字段自动生成，
#   Engine(**kwargs) 也用它，所以两处永远一致。
#   One dataclass holds every engine/server knob, named as SGLang's server_args. CLI flags are
#   generated from the fields and Engine(**kwargs) uses the same class, so the two never drift.
#
# 【生活比喻】Metaphor
#   餐厅开门前的检查表：几张桌子（max_running_requests）、冰箱多大（KV 池）、按什么顺序接待（policy）。
#   The opening checklist of a restaurant: tables, fridge size, seating order.
#
# 【核心架构】Architecture
#   argparse  ──ServerArgs.from_cli_args──►  ServerArgs  ◄── Engine(**kwargs)
#                                                │ .resolve()：补全 device / dtype / 默认路径
#                                                ▼
#                                  Scheduler / ModelRunner / HTTP server
#
# 【工作流程】Workflow
#   1. 字段的 metadata["help"] 同时是 --help 文本。Each field's help is the CLI help.
#   2. resolve() 填上依赖环境的默认值（cuda 可用则用 GPU、bf16、triton 后端……）。
#   3. check() 拒绝不合理的组合，报错写清是哪个参数。check() rejects bad combinations by name.
#
# 【关键概念】Key Concepts
#   - model_path=None → 随包附带的小模型（离线可用）。None means the bundled tiny model.
#   - KV 池大小：GPU 上 = 空闲显存 × mem_fraction_static；CPU 上默认 1 GiB 预算；
#     --max-total-tokens 直接指定（测试用它制造内存紧张 → retraction）。
#   - 同时运行的请求数上限（max_running_requests）：显存 ≥ 64 GiB 的 GPU 上 1024，更小的 GPU 上 256，CPU 上 64。
#     这只是上限，真正能跑几个由 KV 池决定；共享前缀（radix 缓存）省下的 KV 要靠一个够高的上限才变成更大的 batch
#     （第 08 章）。CUDA graph 缺省录到同一个大小。
#     The cap on running requests: 1024 on a GPU of >= 64 GiB, 256 on smaller GPUs, 64 on the CPU.
#     Only a cap: the KV pool decides how many really run; the KV that shared prefixes save (the radix
#     cache) becomes a larger batch only under a high enough cap (chapter 08). CUDA graphs are
#     captured up to the same size by default.
#
# 【使用方式】Usage
#   >>> args = ServerArgs(page_size=4, schedule_policy="lpm").resolve()
#   $ minisgl serve --help
#
# 【对应章节】Chapter: docs/zh/03-server-startup.md
# ================================================================================
from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

BUNDLED_MODEL = os.path.join(os.path.dirname(__file__), "assets", "tiny-zh-en")


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


# 显存至少这么多的 GPU（H100 80 GB、H200、A100 80 GB）缺省允许 1024 个请求同时运行。
# GPUs with at least this much memory (H100 80 GB, H200, A100 80 GB) allow 1024 running requests by default.
BIG_GPU_BYTES = 64 << 30


def _default_max_running_requests(device: str) -> int:
    """max_running_requests 的缺省值。The default cap on running requests.

    为什么大卡上是 1024 而不是 256：上限只是上限，KV 池才决定能跑几个（每个请求的 KV 都要放得下）。共享前缀的
    负载里 radix 缓存让 16 个请求共用一份 2k token 的 KV，同样的池子能放下 4 倍多的请求；上限卡在 256 时这部分
    显存用不上。H200 上 bench/prefix_cache.py 的共享前缀负载：上限 256 时 radix 开/关 2.4–2.6×，1024 时 2.9–3.2×
    （四次，差别在主机快慢；bench/RESULTS.md）。小卡上保留 256：每个可运行的请求都要一行 req_to_token
    （context_len 个槽位）和 CUDA graph 的录制时间。
    Why 1024 and not 256 on a big GPU: the cap is only a cap, the KV pool decides how many run. In a
    shared-prefix workload the radix cache lets 16 requests share one 2k-token KV, so the same pool
    holds over 4x the requests, which a cap of 256 leaves unused: radix on/off was 2.4-2.6x under
    256 and 2.9-3.2x under 1024 on the H200 (four runs, differing by the host's speed;
    bench/RESULTS.md). Smaller GPUs keep 256: each runnable request costs a req_to_token row of
    context_len slots and CUDA-graph capture time.
    """
    if device != "cuda":
        return 64
    import torch

    return 1024 if torch.cuda.get_device_properties(0).total_memory >= BIG_GPU_BYTES else 256


@dataclass
class ServerArgs:
    model_path: Optional[str] = _f(None, "本地 HF 模型目录；缺省为自带小模型 / local HF model folder (default: the bundled tiny model)")
    tokenizer_path: Optional[str] = _f(None, "分词器目录（缺省同 model_path）/ tokenizer folder (default: model_path)")
    host: str = _f("127.0.0.1", "HTTP 监听地址 / HTTP host (127.0.0.1 keeps strangers out)")
    port: int = _f(30000, "HTTP 端口 / HTTP port")
    device: Optional[str] = _f(None, "cpu 或 cuda（缺省自动）/ cpu or cuda (default: cuda if available)", choices=["cpu", "cuda"])
    dtype: str = _f("auto", "auto（GPU bf16，CPU float32）/ auto = bf16 on GPU, float32 on CPU",
                    choices=["auto", "float32", "bfloat16", "float16"])
    context_length: Optional[int] = _f(None, "最大上下文长度（缺省取模型配置）/ max context length (default: from config)")
    page_size: int = _f(1, "KV 池每页 token 数 / tokens per KV page")
    max_total_tokens: Optional[int] = _f(None, "KV 池容量（token），覆盖自动估算 / KV pool size in tokens (overrides sizing)")
    mem_fraction_static: float = _f(0.85, "GPU 上权重+KV 池占显存比例 / GPU memory fraction for weights + KV pool")
    max_running_requests: Optional[int] = _f(None, "同时运行的请求数上限 / max concurrently running requests")
    max_queued_requests: Optional[int] = _f(None, "排队上限，超过回 503 / max queued requests (503 beyond)")
    max_prefill_tokens: int = _f(16384, "一次 prefill 的 token 预算 / token budget of one prefill batch")
    chunked_prefill_size: Optional[int] = _f(None, "分块 prefill 的块大小，-1 关闭 / chunk size of chunked prefill, -1 = off")
    schedule_conservativeness: float = _f(1.0, "越小越激进地接纳新请求（更可能 retraction）/ lower = admit more eagerly (more retraction)")
    schedule_policy: str = _f("fcfs", "调度策略 / scheduling policy", choices=["fcfs", "lpm"])
    disable_radix_cache: bool = _f(False, "关闭前缀缓存 / disable the radix (prefix) cache")
    attention_backend: Optional[str] = _f(None, "注意力后端（GPU 缺省 triton）/ attention backend (default: triton on GPU)",
                                          choices=["torch", "triton"])
    disable_cuda_graph: bool = _f(False, "关闭 decode 的 CUDA graph / disable CUDA graphs for decode")
    disable_cascade_attention: bool = _f(False, "decode 时不合并读取共享前缀（Triton 后端）/ read shared prefixes once per "
                                                 "request instead of once per group (Triton backend)")
    cuda_graph_max_bs: Optional[int] = _f(None, "CUDA graph 捕获的最大 batch（缺省 = max_running_requests，至多 1024）/ "
                                                "largest captured batch size (default: max_running_requests, at most 1024)")
    disable_overlap_schedule: bool = _f(False, "关闭重叠调度（GPU 上默认开）/ disable the overlap scheduler (on by default on GPU)")
    enable_overlap_schedule: bool = _f(False, "CPU 上也用重叠调度（测试与学习用）/ use the overlap scheduler on CPU too "
                                              "(for tests and learning)")
    random_seed: int = _f(0, "全局随机种子 / global random seed")
    api_key: Optional[str] = _f(None, "需要 Authorization: Bearer <key> / require this API key")
    enable_metrics: bool = _f(False, "开启 /metrics（Prometheus）/ enable /metrics")
    max_request_bytes: int = _f(1 << 20, "请求体大小上限 / request body limit in bytes")
    tp_size: int = _f(1, "张量并行数（每个 rank 一个调度进程）/ tensor parallel size (one scheduler process per rank)")
    dp_size: int = _f(1, "数据并行副本数（每个副本一套完整模型）/ data parallel replicas (a whole model each)")
    load_balance_method: str = _f("round_robin", "--dp-size > 1 时的请求路由 / how requests are routed over the replicas",
                                  choices=["round_robin", "shortest_queue", "prefix_aware"])
    lora_paths: Optional[List[str]] = _f(None, "LoRA 适配器（PEFT 目录），name=path 可写多个 / LoRA adapters (PEFT folders) "
                                               "as name=path [name=path ...]", nargs="+")
    max_loras_per_batch: int = _f(8, "一个 batch 里最多几个不同的适配器（= 设备上的槽位数）/ max distinct LoRA adapters "
                                     "in one batch (= adapter slots on the device)")
    served_model_name: Optional[str] = _f(None, "/v1/models 中的名字 / model name shown by /v1/models")
    log_level: str = _f("info", "日志级别 / log level", choices=["debug", "info", "warning", "error"])

    # ======== 命令行 / CLI ========
    @classmethod
    def add_cli_args(cls, parser: argparse.ArgumentParser) -> None:
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            kw = {"help": f.metadata.get("help", ""), "default": f.default}
            if f.type in ("bool", bool):
                parser.add_argument(flag, action="store_true", help=kw["help"])
                continue
            typ = {"int": int, "float": float}.get(str(f.type).replace("Optional[", "").rstrip("]"), str)
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
            if "nargs" in f.metadata:  # 列表参数，如 --lora-paths a=/x b=/y / list flags
                kw["nargs"] = f.metadata["nargs"]
            parser.add_argument(flag, type=typ, **kw)

    @classmethod
    def from_cli_args(cls, ns: argparse.Namespace) -> "ServerArgs":
        return cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if hasattr(ns, f.name)})

    @classmethod
    def from_kwargs(cls, **kwargs) -> "ServerArgs":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"unknown engine argument(s): {', '.join(unknown)}")
        return cls(**kwargs)

    # ======== 补全与检查 / Resolve and check ========
    def resolve(self) -> "ServerArgs":
        """填上依赖环境的默认值（返回新对象）。Fill environment-dependent defaults (a new object)."""
        import torch

        a = dataclasses.replace(self)
        if a.model_path is None:
            a.model_path = BUNDLED_MODEL
        a.tokenizer_path = a.tokenizer_path or a.model_path
        if a.device is None:
            a.device = "cuda" if torch.cuda.is_available() else "cpu"
        if a.dtype == "auto":
            a.dtype = "bfloat16" if a.device == "cuda" else "float32"
        if a.attention_backend is None:
            a.attention_backend = "triton" if a.device == "cuda" else "torch"
        if a.chunked_prefill_size is None:
            a.chunked_prefill_size = 8192 if a.device == "cuda" else 2048
        if a.max_running_requests is None:
            a.max_running_requests = _default_max_running_requests(a.device)
        if a.cuda_graph_max_bs is None:
            a.cuda_graph_max_bs = a.max_running_requests  # 录制的大小本身至多到 1024 / captured sizes stop at 1024
        if a.device == "cpu" or a.attention_backend == "torch":
            # torch 后端的 decode 元数据是 Python 列表，录不进 CUDA graph（回放会用录制时的长度）。
            # The torch backend keeps decode metadata in Python lists, which a CUDA graph cannot
            # capture (a replay would reuse the captured lengths): graphs only with Triton.
            a.disable_cuda_graph = True
        if a.enable_overlap_schedule and a.disable_overlap_schedule:
            raise ValueError("--enable-overlap-schedule and --disable-overlap-schedule contradict each other")
        # 重叠调度：GPU 算这一步时 CPU 准备下一步（第 06 章）。CPU 上 torch 是同步的，没什么可藏，默认关。
        # Overlap: the CPU prepares the next step while the GPU runs this one (chapter 06). On CPU torch
        # runs synchronously, so there is nothing to hide: off unless asked for. Resolved: enable_* is the answer.
        a.enable_overlap_schedule = a.enable_overlap_schedule or (a.device == "cuda" and not a.disable_overlap_schedule)
        if a.lora_paths is not None:  # dict / 单个字符串 → ["name=path", ...]（命令行可以原样写回）/ CLI-shaped
            a.lora_paths = [f"{name}={path}" for name, path in a.lora_adapters().items()]
        a.check()
        return a

    def check(self) -> None:
        if self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
        if self.tp_size < 1 or self.dp_size < 1:
            raise ValueError(f"--tp-size and --dp-size must be >= 1, got {self.tp_size} and {self.dp_size}")
        if self.device == "cuda":
            import torch

            need, have = self.tp_size * self.dp_size, torch.cuda.device_count()
            if need > have:
                raise ValueError(f"--tp-size {self.tp_size} × --dp-size {self.dp_size} needs {need} GPUs; "
                                 f"this machine has {have}")
        if self.page_size < 1:
            raise ValueError(f"--page-size must be >= 1, got {self.page_size}")
        if self.chunked_prefill_size is not None and self.chunked_prefill_size != -1:
            if self.chunked_prefill_size < self.page_size:
                raise ValueError("--chunked-prefill-size must be >= --page-size (or -1 to turn chunking off)")
        if self.max_total_tokens is not None and self.max_total_tokens < 2 * self.page_size:
            raise ValueError("--max-total-tokens is too small (need at least two pages)")
        if self.schedule_conservativeness <= 0:
            raise ValueError("--schedule-conservativeness must be > 0")
        if not 0.0 < self.mem_fraction_static < 1.0:
            raise ValueError("--mem-fraction-static must be in (0, 1)")
        if self.max_running_requests is not None and self.max_running_requests < 1:
            raise ValueError("--max-running-requests must be >= 1")
        if self.cuda_graph_max_bs is not None and self.cuda_graph_max_bs < 1:
            raise ValueError(f"--cuda-graph-max-bs must be >= 1, got {self.cuda_graph_max_bs}")
        if self.attention_backend == "triton" and self.device != "cuda":
            import os as _os

            if _os.environ.get("TRITON_INTERPRET") != "1":
                raise ValueError("--attention-backend triton needs CUDA (or TRITON_INTERPRET=1 on CPU)")
        # ---- LoRA（minisgl/lora/）----
        if self.lora_paths:
            for name, path in self.lora_adapters().items():
                if not os.path.isdir(path):
                    raise ValueError(f"--lora-paths {name}={path}: {path!r} is not a directory "
                                     "(expected a PEFT adapter folder with adapter_config.json)")
            if self.tp_size != 1:
                raise ValueError(f"--lora-paths needs --tp-size 1 (got {self.tp_size}): LoRA layers add their "
                                 "delta to each layer's full, unsharded output")
        if self.max_loras_per_batch < 1:
            raise ValueError(f"--max-loras-per-batch must be >= 1, got {self.max_loras_per_batch}")

    def lora_adapters(self) -> Dict[str, str]:
        """--lora-paths → {适配器名: 目录}（有序）。--lora-paths as {adapter name: folder}, in order.

        Accepts "name=path" entries, a bare "path" (its name is the path itself, as in SGLang), a
        single string, or a dict {name: path} (Python API).
        """
        value = self.lora_paths
        if not value:
            return {}
        if isinstance(value, dict):
            items = [(str(k), str(v)) for k, v in value.items()]
        else:
            entries = [value] if isinstance(value, str) else list(value)
            items = [tuple(e.split("=", 1)) if "=" in e else (e, e) for e in map(str, entries)]
        out: Dict[str, str] = {}
        for name, path in items:
            if not name or not path:
                raise ValueError(f"--lora-paths: bad entry {name}={path!r}; write name=path")
            if name in out:
                raise ValueError(f"--lora-paths: the adapter name {name!r} is given twice")
            out[name] = path
        return out
