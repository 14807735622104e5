"""把基准的 JSON 画成 PNG：前缀缓存、批处理、在线服务延迟三张图。
Turn the benchmarks' JSON into PNG figures: prefix cache, batching, serving latency.

每张图都写明数据来自哪台机器、是不是 --quick 规模，读者一眼就知道这是什么数字。
Every figure says which machine the data came from and whether it was a --quick run.

Usage:
    python bench/prefix_cache.py --quick --json /tmp/prefix_cache.json
    python bench/batching.py --quick --json /tmp/batching.json
    python bench/serving.py --launch-server --quick --output-file /tmp/serving.json
    python bench/plot.py --prefix-cache /tmp/prefix_cache.json --batching /tmp/batching.json \\
        --serving /tmp/serving.json [more_serving.json ...] --out-dir docs/figures
    # 生成 / writes: prefix_cache.png, batching.png, serving_latency.png
"""
from __future__ import annotations

import argparse
import json
import os
from typing import List

import matplotlib

matplotlib.use("Agg")  # 无显示器也能画 / no display needed
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"radix+lpm": "#3b5bdb", "radix+fcfs": "#74c0fc", "no-radix": "#adb5bd",
          "static": "#adb5bd", "continuous": "#3b5bdb"}


def _load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _source(d: dict) -> str:
    quick = " (--quick)" if d.get("quick") else ""
    return f"{d.get('device', '?')}, {os.path.basename(str(d.get('model_path', '?')).rstrip('/'))}{quick}"


def _bar_labels(ax, bars, fmt: str) -> None:
    for b in bars:
        ax.annotate(fmt.format(b.get_height()), (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")


def plot_prefix_cache(path: str, out: str) -> None:
    """左：命中率；右：吞吐（token/s）。每组柱子是一个负载，每根柱子是一个配置。

    Left: hit rate; right: throughput. One group of bars per workload, one bar per configuration.
    """
    d = _load(path)
    workloads = list(d["results"])
    found = list(next(iter(d["results"].values())))
    # 固定顺序（JSON 里可能是别的顺序）/ a fixed order, whatever the JSON's
    configs = [c for c in ("radix+lpm", "radix+fcfs", "no-radix") if c in found] + \
        [c for c in found if c not in ("radix+lpm", "radix+fcfs", "no-radix")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.8 / len(configs)
    for ax, key, title, fmt in ((axes[0], "hit_rate", "cache hit rate (cached / prompt tokens)", "{:.0%}"),
                                (axes[1], "total_throughput", "throughput (prompt + output tokens / s)", "{:.0f}")):
        for j, cfg in enumerate(configs):
            xs = [i + (j - (len(configs) - 1) / 2) * width for i in range(len(workloads))]
            ys = [d["results"][w][cfg][key] for w in workloads]
            _bar_labels(ax, ax.bar(xs, ys, width, label=cfg, color=COLORS.get(cfg)), fmt)
        ax.set_xticks(range(len(workloads)), workloads)
        ax.set_title(title, fontsize=10)
        ax.margins(y=0.15)
    axes[0].set_ylim(0, 1.3)
    axes[0].legend(fontsize=8, loc="upper center", ncol=len(configs))
    speed = ", ".join(f"{w}: {s.get('speedup_radix_vs_off', '?')}x" for w, s in d["summary"].items())
    fig.suptitle(f"RadixAttention on vs off, lpm vs fcfs — speedup {speed}\n{_source(d)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_batching(path: str, out: str) -> None:
    """输出吞吐：静态 vs 连续批处理。Output throughput, static vs continuous batching."""
    d = _load(path)
    fig, ax = plt.subplots(figsize=(5, 4))
    modes = ["static", "continuous"]
    bars = ax.bar(modes, [d[m]["output_throughput"] for m in modes], color=[COLORS[m] for m in modes])
    _bar_labels(ax, bars, "{:.0f}")
    ax.set_ylabel("output tokens / s")
    ax.margins(y=0.15)
    ax.set_title(f"continuous / static = {d['throughput_ratio']}x "
                 f"(B = {d['args']['batch_size']}, static slot usage {d['static_slot_usage']:.0%})\n{_source(d)}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_serving(paths: List[str], out: str) -> None:
    """TTFT / TPOT / ITL / e2e 的 mean、median、p99（毫秒），每个 JSON 一组颜色。

    Mean, median and p99 of TTFT, TPOT, ITL and e2e latency (ms); one colour per JSON file.
    """
    runs = [_load(p) for p in paths]
    keys = [("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("itl_ms", "ITL"), ("e2e_latency_ms", "E2E latency")]
    stats = ["mean", "median", "p99"]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.8))
    width = 0.8 / len(runs)
    for ax, (key, title) in zip(axes, keys):
        for j, r in enumerate(runs):
            c = r["config"]
            label = f"{c['dataset']}, rate={c['request_rate']}" + (f", conc={c['max_concurrency']}"
                                                                  if c.get("max_concurrency") else "")
            if r.get("server_flags"):
                label += " " + " ".join(r["server_flags"])
            xs = [i + (j - (len(runs) - 1) / 2) * width for i in range(len(stats))]
            ax.bar(xs, [r["metrics"][key][s] for s in stats], width, label=label)
        ax.set_xticks(range(len(stats)), stats)
        ax.set_title(f"{title} (ms)", fontsize=10)
    axes[0].legend(fontsize=7, loc="upper left")
    m = runs[0]["metrics"]
    fig.suptitle(f"serving latency — {runs[0]['config']['backend']} backend, {m['completed']} requests, "
                 f"{m['output_throughput']} output tok/s (first run); model "
                 f"{os.path.basename(str(runs[0].get('model')).rstrip('/'))}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefix-cache", help="bench/prefix_cache.py --json 的输出 / its JSON")
    ap.add_argument("--batching", help="bench/batching.py --json 的输出 / its JSON")
    ap.add_argument("--serving", nargs="*", default=[], help="bench/serving.py --output-file 的输出（可多个）")
    ap.add_argument("--out-dir", default="docs/figures")
    ap.add_argument("--suffix", default="", help="文件名后缀，如 _cpu / file-name suffix, e.g. _cpu")
    a = ap.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    done = []
    if a.prefix_cache:
        done.append(os.path.join(a.out_dir, f"prefix_cache{a.suffix}.png"))
        plot_prefix_cache(a.prefix_cache, done[-1])
    if a.batching:
        done.append(os.path.join(a.out_dir, f"batching{a.suffix}.png"))
        plot_batching(a.batching, done[-1])
    if a.serving:
        done.append(os.path.join(a.out_dir, f"serving_latency{a.suffix}.png"))
        plot_serving(a.serving, done[-1])
    if not done:
        ap.error("give at least one of --prefix-cache, --batching, --serving")
    print("wrote", ", ".join(done))


if __name__ == "__main__":
    main()
