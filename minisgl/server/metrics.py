# ================================================================================
# 📈 Prometheus 指标（/metrics，需 --enable-metrics）
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   用 prometheus-client 定义服务器的指标，名字照搬 SGLang 的 `sglang:*`，只把前缀换成 `minisgl:`，
#   这样为 SGLang 写的 Grafana 面板改个前缀就能用。
#   The server's metrics with prometheus-client, named like SGLang's `sglang:*` under a `minisgl:`
#   prefix, so a Grafana board written for SGLang works after a prefix change.
#
# 【生活比喻】Metaphor
#   餐厅墙上的看板：现在几桌在吃、门口排了几位、冰箱用了多少、客人平均等第一道菜多久。
#   The board on a restaurant wall: tables eating, people queuing, fridge fill, wait for the first dish.
#
# 【核心架构】Architecture
#   TokenizerManager._update ──observe_*──► Histogram / Counter（请求级 / per request）
#   /metrics ──get_scheduler_stats──► set_scheduler_stats ──► Gauge（调度器快照 / scheduler snapshot）
#   render() ──generate_latest──► Prometheus 文本格式 / text format
#
# 【工作流程】Workflow
#   1. 每个请求的第一个 token：TTFT；之后每批 token：(间隔 / token 数) 记为 inter-token latency。
#   2. 请求结束：e2e 延迟、prompt / generation token 计数、命中缓存的 token 数。
#   3. 抓取 /metrics 时先向调度进程要一份最新状态，更新 Gauge，再输出文本。
#
# 【关键概念】Key Concepts
#   - TTFT（time to first token）= 第一个 token 到达 HTTP 进程 − 请求进入；ITL = 相邻两次输出的间隔 / token 数。
#   - cache_hit_rate = Σ cached_tokens / Σ prompt_tokens（已结束的请求，累计）。
#   - token_usage = KV 池已用 / 容量（含基数树缓存着的部分）。
#   - 独立的 CollectorRegistry：同一进程里开几个服务器（测试）也不会重名冲突。
#
# 【使用方式】Usage
#   $ minisgl serve --enable-metrics &
#   $ curl -s localhost:30000/metrics | grep minisgl:time_to_first_token
#
# 【对应章节】Chapter: docs/zh/04-request-journey.md
# ================================================================================
from __future__ import annotations

from typing import Any, Dict

# 与 SGLang 相近的桶（秒）。Buckets close to SGLang's (seconds).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 15.0,
                20.0, 25.0, 30.0)
ITL_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2,
               0.3, 0.4, 0.5, 0.75, 1.0, 2.0)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0, 600.0)

PREFIX = "minisgl:"


class MetricsCollector:
    """服务器的全部指标（见文件头）。Every server metric; see the file header."""

    def __init__(self, model_name: str):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = reg = CollectorRegistry()
        self.labels = {"model_name": model_name}
        names = list(self.labels)

        def gauge(name, doc):
            return Gauge(PREFIX + name, doc, names, registry=reg).labels(**self.labels)

        def counter(name, doc):
            return Counter(PREFIX + name, doc, names, registry=reg).labels(**self.labels)

        def histogram(name, doc, buckets):
            return Histogram(PREFIX + name, doc, names, buckets=buckets, registry=reg).labels(**self.labels)

        # ---- 调度器快照 / scheduler snapshot ----
        self.num_running_reqs = gauge("num_running_reqs", "The number of running requests.")
        self.num_queue_reqs = gauge("num_queue_reqs", "The number of requests in the waiting queue.")
        self.num_used_tokens = gauge("num_used_tokens", "The number of used KV cache tokens.")
        self.token_usage = gauge("token_usage", "The token usage of the KV cache (used / capacity).")
        self.cache_hit_rate = gauge("cache_hit_rate", "The prefix cache hit rate (cached / prompt tokens).")
        self.num_retractions = gauge("num_retractions", "The number of retracted requests so far.")
        # ---- 请求级 / per request ----
        self.prompt_tokens_total = counter("prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens_total = counter("generation_tokens", "Number of generation tokens processed.")
        self.cached_tokens_total = counter("cached_tokens", "Number of prompt tokens served from the prefix cache.")
        self.num_requests_total = counter("num_requests", "Number of finished requests.")
        self.ttft = histogram("time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              TTFT_BUCKETS)
        self.itl = histogram("inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                             ITL_BUCKETS)
        self.e2e = histogram("e2e_request_latency_seconds", "Histogram of end-to-end request latency in seconds.",
                             E2E_BUCKETS)
        self._prompt_sum = 0
        self._cached_sum = 0

    def observe_time_to_first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def observe_inter_token_latency(self, seconds: float) -> None:
        self.itl.observe(seconds)

    def observe_finished(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int, e2e: float) -> None:
        self.prompt_tokens_total.inc(prompt_tokens)
        self.generation_tokens_total.inc(completion_tokens)
        self.cached_tokens_total.inc(cached_tokens)
        self.num_requests_total.inc()
        self.e2e.observe(e2e)
        self._prompt_sum += prompt_tokens
        self._cached_sum += cached_tokens
        self.cache_hit_rate.set(self._cached_sum / self._prompt_sum if self._prompt_sum else 0.0)

    def set_scheduler_stats(self, stats: Dict[str, Any]) -> None:
        self.num_running_reqs.set(stats["num_running_reqs"])
        self.num_queue_reqs.set(stats["num_queued_reqs"])
        self.num_used_tokens.set(stats["used_kv_tokens"])
        self.token_usage.set(stats["token_usage"])
        self.num_retractions.set(stats["num_retractions"])

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
