"""在线服务基准：对一个正在运行的服务器发流式请求，量 TTFT / TPOT / ITL / 端到端延迟与吞吐。
Online serving benchmark: stream requests to a running server; measure TTFT, TPOT, ITL, e2e latency, throughput.

思路来自 SGLang 的 bench_serving（代码是重新写的）。An idea from SGLang's bench_serving, written afresh.

【生活比喻】Metaphor
  神秘顾客：按泊松分布陆续走进餐厅（--request-rate），记下每桌等第一道菜多久（TTFT）、
  之后每道菜隔多久（ITL / TPOT）、整顿饭多久（e2e），最后算餐厅每秒上了多少菜（吞吐）。
  Mystery diners walk in at Poisson-distributed times, time the first dish (TTFT), the gap between
  dishes (ITL / TPOT) and the whole meal (e2e); at the end, count dishes served per second.

【指标】Metrics (all per request, then mean / median / p99 over requests or gaps)
  TTFT  time to first token   = 第一个输出 token 到达的时刻 − 发出请求的时刻
  ITL   inter-token latency   = 相邻两次流式事件的间隔（一个事件可能带多个 token）/ gap between stream events
  TPOT  time per output token = (e2e − TTFT) / (output_len − 1)，只统计 output_len > 1 的请求
  e2e   end-to-end latency    = 最后一个事件到达 − 发出请求
  throughput = 请求数、输入 token 数、输出 token 数 ÷ 整个基准的墙钟时间 / ÷ wall time of the whole run
  cache hit rate（仅 minisgl 后端 / minisgl backend only）= Σ cached_tokens / Σ prompt_tokens（来自 meta_info）

【数据集】Datasets
  random                   每个请求随机 token ids（或 --random-prompt text：把随机 ids 解码成文字），
                           输入/输出长度在 [len × range_ratio, len] 里均匀抽取。
                           Random token ids (or decoded to text); lengths uniform in [len × ratio, len].
  generated-shared-prefix  --gsp-num-groups 组，每组 --gsp-prompts-per-group 个 prompt，
                           组内共享一段 --gsp-system-prompt-len 的“系统提示”，后接各自的问题；
                           打乱顺序后发出（真实流量里不同组的请求交错到达）。
                           Groups of prompts sharing a long system prompt, shuffled across groups.

Usage:
    minisgl serve --port 30000 &                                  # 先起服务器 / a running server, or:
    python bench/serving.py --base-url http://127.0.0.1:30000 --dataset random --num-prompts 200 \\
        --random-input-len 1024 --random-output-len 256 --request-rate 8 --output-file serving.json
    python bench/serving.py --backend openai --base-url http://127.0.0.1:8000 --model my-model ...
    # 自己启动并在结束后停掉服务器；不认识的参数原样交给 `minisgl serve`。
    # Start (and always stop) the server itself; unknown flags go to `minisgl serve` unchanged:
    python bench/serving.py --launch-server --model-path /tmp/qwen3-0.6b --disable-radix-cache \\
        --dataset generated-shared-prefix --max-concurrency 64
    python bench/serving.py --launch-server --quick               # CPU 冒烟测试（自带小模型）/ CPU smoke test
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

import httpx

READY_TIMEOUT_S = 600


# ================================================================================
# 第1步：造请求 / Step 1: build the requests
# ================================================================================
@dataclass
class BenchRequest:
    """一个要发出的请求。One request to send: the prompt (token ids or text) and its output length."""

    prompt: Any  # List[int] 或 str / token ids or text
    prompt_len: int
    output_len: int
    group: int = -1  # 共享前缀的组号（random 数据集为 -1）/ shared-prefix group (-1 for random)


def random_ids(rng: random.Random, n: int, vocab: int) -> List[int]:
    # 避开最前面的 id（常是特殊 token）。Skip the lowest ids (often special tokens).
    return [rng.randrange(min(100, vocab // 2), vocab) for _ in range(n)]


def sample_random(num: int, input_len: int, output_len: int, range_ratio: float, vocab: int,
                  seed: int, tokenizer=None) -> List[BenchRequest]:
    """random 数据集（tokenizer 不为 None 时把 ids 解码成文字）。The random dataset (text when a tokenizer is given)."""
    rng = random.Random(seed)
    reqs = []
    for _ in range(num):
        n_in = rng.randint(max(1, int(input_len * range_ratio)), input_len)
        n_out = rng.randint(max(1, int(output_len * range_ratio)), output_len)
        ids = random_ids(rng, n_in, vocab)
        if tokenizer is None:
            reqs.append(BenchRequest(ids, n_in, n_out))
        else:  # 文字重新分词后长度会变一点 / re-tokenized text changes length a little
            text = tokenizer.decode(ids)
            reqs.append(BenchRequest(text, len(tokenizer.encode(text, add_special_tokens=False)), n_out))
    return reqs


def sample_shared_prefix(num_groups: int, prompts_per_group: int, system_len: int, question_len: int,
                         output_len: int, vocab: int, seed: int, shuffle: bool = True) -> List[BenchRequest]:
    """generated-shared-prefix 数据集：每组一段系统提示 + 各自的问题（随机 token ids）。

    Groups of prompts, each = the group's system prompt + its own question (random token ids).
    Shuffled by default, so requests of different groups arrive interleaved, as in real traffic
    (this is what gives the scheduling policy something to do).
    """
    rng = random.Random(seed)
    reqs = []
    for g in range(num_groups):
        system = random_ids(rng, system_len, vocab)
        for _ in range(prompts_per_group):
            ids = system + random_ids(rng, question_len, vocab)
            reqs.append(BenchRequest(ids, len(ids), output_len, g))
    if shuffle:
        rng.shuffle(reqs)
    return reqs


# ================================================================================
# 第2步：发一个流式请求并计时 / Step 2: send one streaming request and time it
# ================================================================================
@dataclass
class RequestResult:
    success: bool = False
    error: str = ""
    prompt_len: int = 0
    output_len: int = 0
    cached_tokens: Optional[int] = None
    start: float = 0.0  # 相对基准开始的秒数 / seconds since the run began
    ttft: float = 0.0
    latency: float = 0.0
    itl: List[float] = field(default_factory=list)


def _payload(backend: str, req: BenchRequest, model: Optional[str]) -> tuple:
    """(路径, JSON)。两种接口都要求忽略 EOS，保证输出长度正好是 output_len。

    (path, JSON body). Both ask to ignore EOS, so every output is exactly output_len tokens long.
    """
    if backend == "minisgl":
        key = "input_ids" if isinstance(req.prompt, list) else "text"
        return "/generate", {key: req.prompt, "stream": True, "sampling_params": {
            "max_new_tokens": req.output_len, "temperature": 0.0, "ignore_eos": True}}
    return "/v1/completions", {"model": model, "prompt": req.prompt, "max_tokens": req.output_len,
                               "temperature": 0.0, "ignore_eos": True, "stream": True,
                               "stream_options": {"include_usage": True}}


async def send_one(client: httpx.AsyncClient, backend: str, req: BenchRequest, model: Optional[str],
                   t_zero: float) -> RequestResult:
    """发出一个流式请求，逐个 SSE 事件记时间。Send one streaming request; time every SSE event.

    minisgl 的 /generate 每个事件带*累计*的 output_ids（数差值就是新 token 数）；
    OpenAI 的 /v1/completions 每个事件带*增量*文字，最后一个事件带 usage。
    /generate events carry cumulative output_ids; /v1/completions events carry text deltas and a final usage.
    """
    res = RequestResult(prompt_len=req.prompt_len)
    path, body = _payload(backend, req, model)
    st = time.perf_counter()
    res.start = st - t_zero
    last = st
    n_tokens = 0
    try:
        async with client.stream("POST", path, json=body) as resp:
            if resp.status_code != 200:
                res.error = f"HTTP {resp.status_code}: {(await resp.aread()).decode(errors='replace')[:200]}"
                return res
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                now = time.perf_counter()
                obj = json.loads(line[len("data: "):])
                if "error" in obj:
                    res.error = obj["error"].get("message", str(obj["error"]))
                    return res
                if backend == "minisgl":
                    new = len(obj["output_ids"]) - n_tokens
                    meta = obj["meta_info"]
                    res.cached_tokens = meta.get("cached_tokens", res.cached_tokens)
                    res.prompt_len = meta.get("prompt_tokens", res.prompt_len)
                    if (meta.get("finish_reason") or {}).get("type") == "abort":
                        res.error = "aborted: " + str(meta["finish_reason"].get("message"))
                        return res
                else:
                    usage = obj.get("usage") or {}
                    if usage.get("completion_tokens") is not None:  # 最后的 usage 事件 / the final usage event
                        res.output_len = usage["completion_tokens"]
                        res.prompt_len = usage.get("prompt_tokens", res.prompt_len)
                        res.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
                    choices = obj.get("choices") or []
                    new = 1 if choices and choices[0].get("text") else 0
                if new <= 0:
                    continue
                if n_tokens == 0:
                    res.ttft = now - st
                else:
                    res.itl.append(now - last)
                last = now
                n_tokens += new
        res.latency = last - st
        res.output_len = res.output_len or n_tokens  # openai: usage 优先 / usage wins when given
        res.success = n_tokens > 0
        if not res.success:
            res.error = "the stream ended without any output token"
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as e:
        res.error = f"{type(e).__name__}: {e}"
    return res


# ================================================================================
# 第3步：按到达过程发出全部请求 / Step 3: send everything on an arrival schedule
# ================================================================================
async def arrivals(reqs: List[BenchRequest], rate: float, rng: random.Random):
    """泊松到达：间隔服从均值 1/rate 的指数分布；rate=inf 时一次全部发出。

    Poisson arrivals: exponential gaps with mean 1/rate; rate = inf sends everything at once.
    """
    for i, r in enumerate(reqs):
        yield r
        if rate != float("inf") and i + 1 < len(reqs):
            await asyncio.sleep(rng.expovariate(rate))


async def run_benchmark(base_url: str, backend: str, reqs: List[BenchRequest], rate: float,
                        max_concurrency: Optional[int], model: Optional[str], seed: int = 0,
                        show_progress: bool = True, headers: Optional[dict] = None):
    """发出全部请求，返回 (每个请求的结果, 墙钟时间)。Send all requests; return (results, wall time)."""
    from tqdm.asyncio import tqdm

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    bar = tqdm(total=len(reqs), desc="requests", disable=not show_progress)
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(None), limits=limits,
                                 headers=headers or {}) as client:
        # 热身一个短请求（不计入结果）：第一次调用常带一次性开销。之后清空 minisgl 的前缀缓存，
        # 免得热身的 prompt 算进命中率。One short warm-up, not counted; then flush minisgl's prefix cache
        # so the warm-up prompt does not count as a hit.
        warm = reqs[0].prompt[:8] if isinstance(reqs[0].prompt, list) else reqs[0].prompt[:32]
        await send_one(client, backend, BenchRequest(warm, len(warm), 4), model, time.perf_counter())
        if backend == "minisgl":
            await client.post("/flush_cache")

        async def limited(r: BenchRequest, t_zero: float) -> RequestResult:
            if sem is None:
                out = await send_one(client, backend, r, model, t_zero)
            else:
                async with sem:  # --max-concurrency：最多这么多个在途请求 / at most this many in flight
                    out = await send_one(client, backend, r, model, t_zero)
            bar.update(1)
            return out

        t_zero = time.perf_counter()
        tasks = []
        async for r in arrivals(reqs, rate, random.Random(seed)):
            tasks.append(asyncio.create_task(limited(r, t_zero)))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - t_zero
    bar.close()
    return list(results), duration


# ================================================================================
# 第4步：汇总 / Step 4: summarize
# ================================================================================
def _stats(values: List[float], scale: float = 1000.0) -> Dict[str, float]:
    """mean / median / p99（毫秒）。mean / median / p99, in ms."""
    if not values:
        return {"mean": 0.0, "median": 0.0, "p99": 0.0}
    v = sorted(values)

    def pct(p: float) -> float:  # 线性插值分位数 / linear-interpolation percentile
        k = (len(v) - 1) * p
        lo, hi = int(k), min(int(k) + 1, len(v) - 1)
        return v[lo] + (v[hi] - v[lo]) * (k - lo)

    return {"mean": round(sum(v) / len(v) * scale, 3), "median": round(pct(0.5) * scale, 3),
            "p99": round(pct(0.99) * scale, 3)}


def summarize(results: List[RequestResult], duration: float) -> Dict[str, Any]:
    ok = [r for r in results if r.success]
    n_in = sum(r.prompt_len for r in ok)
    n_out = sum(r.output_len for r in ok)
    tpots = [(r.latency - r.ttft) / (r.output_len - 1) for r in ok if r.output_len > 1]
    m: Dict[str, Any] = {
        "completed": len(ok), "failed": len(results) - len(ok), "duration_s": round(duration, 3),
        "total_input_tokens": n_in, "total_output_tokens": n_out,
        "request_throughput": round(len(ok) / duration, 3),
        "input_throughput": round(n_in / duration, 1), "output_throughput": round(n_out / duration, 1),
        "total_throughput": round((n_in + n_out) / duration, 1),
        # 平均并发 = Σ 延迟 / 墙钟时间（Little 定律）。Mean concurrency by Little's law.
        "concurrency": round(sum(r.latency for r in ok) / duration, 2),
        "ttft_ms": _stats([r.ttft for r in ok]), "tpot_ms": _stats(tpots),
        "itl_ms": _stats([x for r in ok for x in r.itl]), "e2e_latency_ms": _stats([r.latency for r in ok]),
    }
    if ok and all(r.cached_tokens is not None for r in ok):
        m["cache_hit_rate"] = round(sum(r.cached_tokens for r in ok) / max(n_in, 1), 4)
    errors = sorted({r.error for r in results if not r.success})
    if errors:
        m["errors"] = errors[:5]
    return m


def print_table(m: Dict[str, Any], title: str) -> None:
    w = 50
    print("\n" + f" {title} ".center(w, "="))
    rows = [("Successful requests", m["completed"]), ("Failed requests", m["failed"]),
            ("Benchmark duration (s)", m["duration_s"]), ("Total input tokens", m["total_input_tokens"]),
            ("Total output tokens", m["total_output_tokens"]), ("Request throughput (req/s)", m["request_throughput"]),
            ("Input throughput (tok/s)", m["input_throughput"]), ("Output throughput (tok/s)", m["output_throughput"]),
            ("Total throughput (tok/s)", m["total_throughput"]), ("Mean concurrency", m["concurrency"])]
    if "cache_hit_rate" in m:
        rows.append(("Cache hit rate (cached/prompt)", m["cache_hit_rate"]))
    for k, v in rows:
        print(f"{k:<36}{v:>14}")
    for name, key in (("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("ITL", "itl_ms"), ("E2E latency", "e2e_latency_ms")):
        print(f" {name} (ms) ".center(w, "-"))
        for stat in ("mean", "median", "p99"):
            print(f"{stat.capitalize() + ' ' + name:<36}{m[key][stat]:>14.2f}")
    print("=" * w)


# ================================================================================
# 第5步：（可选）自己启动服务器，并保证停掉它 / Step 5: optionally launch the server, and always stop it
# ================================================================================
class LaunchedServer:
    """`python -m minisgl serve` 子进程；日志写临时文件（管道写满会卡住服务器）。

    A `python -m minisgl serve` subprocess. Its log goes to a temp file (a full pipe would block it).
    Use it as a context manager: the server is stopped on every way out (error, Ctrl-C, normal end).
    """

    def __init__(self, flags: List[str]):
        from minisgl.utils import get_free_port

        self.port = get_free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="minisgl-bench-server-", suffix=".log", delete=False)
        cmd = [sys.executable, "-m", "minisgl", "serve", "--port", str(self.port), *flags]
        print("launching:", " ".join(cmd), f"(log: {self.log.name})", flush=True)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=30).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"the server was not healthy after {timeout} s:\n{self.tail()}")

    def tail(self, n: int = 3000) -> str:
        self.log.flush()
        with open(self.log.name, errors="replace") as f:
            return f.read()[-n:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # 服务器优雅关机，并停掉它的两个子进程 / graceful, stops its children
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)

    def __enter__(self) -> "LaunchedServer":
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# ================================================================================
# 入口 / Entry point
# ================================================================================
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["minisgl", "openai"], default="minisgl",
                    help="minisgl → POST /generate；openai → POST /v1/completions")
    ap.add_argument("--base-url", default="http://127.0.0.1:30000")
    ap.add_argument("--model", help="openai 后端的 model 字段（缺省取 /v1/models 的第一个）/ model name for openai")
    ap.add_argument("--api-key", default=os.environ.get("MINISGL_API_KEY"), help="Authorization: Bearer <key>")
    ap.add_argument("--tokenizer", help="分词器目录（--random-prompt text 用）/ tokenizer folder, for text prompts")
    ap.add_argument("--vocab-size", type=int, help="随机 id 的上界（缺省问服务器或分词器）/ upper bound of random ids")
    ap.add_argument("--dataset", choices=["random", "generated-shared-prefix"], default="random")
    ap.add_argument("--num-prompts", type=int, default=200)
    ap.add_argument("--random-input-len", type=int, default=1024)
    ap.add_argument("--random-output-len", type=int, default=256)
    ap.add_argument("--random-range-ratio", type=float, default=1.0, help="长度在 [len×ratio, len] 均匀 / uniform in")
    ap.add_argument("--random-prompt", choices=["ids", "text"], default="ids", help="随机 token ids 或解码后的文字")
    ap.add_argument("--gsp-num-groups", type=int, default=64)
    ap.add_argument("--gsp-prompts-per-group", type=int, default=16)
    ap.add_argument("--gsp-system-prompt-len", type=int, default=2048)
    ap.add_argument("--gsp-question-len", type=int, default=128)
    ap.add_argument("--gsp-output-len", type=int, default=256)
    ap.add_argument("--request-rate", type=float, default=float("inf"), help="每秒请求数（泊松）；inf = 一次全发")
    ap.add_argument("--max-concurrency", type=int, help="最多同时在途的请求数 / max requests in flight")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output-file", help="写 JSON 结果 / write the results as JSON")
    ap.add_argument("--disable-tqdm", action="store_true")
    ap.add_argument("--launch-server", action="store_true",
                    help="自己启动 minisgl serve（不认识的参数传给它），结束时停掉 / start and stop the server")
    ap.add_argument("--model-path", help="--launch-server 时的模型（也传给服务器）/ model for --launch-server")
    ap.add_argument("--quick", action="store_true", help="CPU 冒烟测试的小规模 / tiny sizes for a CPU smoke test")
    return ap


def apply_quick(a: argparse.Namespace) -> None:
    a.num_prompts = 8
    a.random_input_len, a.random_output_len, a.random_range_ratio = 64, 8, 0.5
    a.gsp_num_groups, a.gsp_prompts_per_group = 2, 4
    a.gsp_system_prompt_len, a.gsp_question_len, a.gsp_output_len = 128, 16, 8


def server_info(base_url: str, backend: str, headers: dict) -> Dict[str, Any]:
    """问服务器：模型名、词表大小、分词器路径（能问到多少算多少）。Ask the server what it can tell."""
    info: Dict[str, Any] = {}
    with httpx.Client(base_url=base_url, timeout=30, headers=headers) as c:
        try:
            models = c.get("/v1/models").json()["data"]
            info["model"] = models[0]["id"]
        except Exception:
            pass
        if backend == "minisgl":
            try:
                info.update(c.get("/get_model_info").json())
            except Exception:
                pass
    return info


def main(argv: Optional[List[str]] = None) -> int:
    a, server_flags = build_parser().parse_known_args(argv)
    if a.quick:
        apply_quick(a)
    if server_flags and not a.launch_server:
        build_parser().error(f"unrecognized arguments: {' '.join(server_flags)} (only --launch-server passes flags on)")
    server = None
    if a.launch_server:
        # SIGTERM 也走 finally（默认会直接退出，留下服务器）。SIGTERM runs `finally` too (by default it would not).
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
        flags = (["--model-path", a.model_path] if a.model_path else []) + server_flags
        server = LaunchedServer(flags).__enter__()
        a.base_url = server.url
    try:
        return _bench(a, server_flags)
    finally:
        if server is not None:
            server.stop()


def _bench(a: argparse.Namespace, server_flags: List[str]) -> int:
    headers = {"Authorization": f"Bearer {a.api_key}"} if a.api_key else {}
    info = server_info(a.base_url, a.backend, headers)
    model = a.model or info.get("model")
    tokenizer = None
    if a.random_prompt == "text" or not (a.vocab_size or info.get("vocab_size")):
        from minisgl.utils import load_tokenizer

        path = a.tokenizer or a.model_path or info.get("tokenizer_path")
        if path is None or not os.path.isdir(path):
            from minisgl.server_args import BUNDLED_MODEL

            path = BUNDLED_MODEL
        tokenizer = load_tokenizer(path)
    vocab = a.vocab_size or info.get("vocab_size") or tokenizer.vocab_size
    if a.dataset == "random":
        reqs = sample_random(a.num_prompts, a.random_input_len, a.random_output_len, a.random_range_ratio, vocab,
                             a.seed, tokenizer if a.random_prompt == "text" else None)
    else:
        reqs = sample_shared_prefix(a.gsp_num_groups, a.gsp_prompts_per_group, a.gsp_system_prompt_len,
                                    a.gsp_question_len, a.gsp_output_len, vocab, a.seed)
    results, duration = asyncio.run(run_benchmark(a.base_url, a.backend, reqs, a.request_rate, a.max_concurrency,
                                                  model, a.seed, not a.disable_tqdm, headers))
    m = summarize(results, duration)
    print_table(m, f"Serving Benchmark ({a.backend}, {a.dataset})")
    config = {k: v for k, v in vars(a).items() if k != "api_key"}
    config["request_rate"] = str(a.request_rate) if a.request_rate == float("inf") else a.request_rate
    out = {"benchmark": "serving", "config": config, "server_flags": server_flags, "model": model,
           "metrics": m,
           "requests": [{k: v for k, v in asdict(r).items() if k != "itl"} for r in results]}
    if a.output_file:
        with open(a.output_file, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {a.output_file}")
    return 0 if m["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
