"""张量并行与数据并行（CPU、gloo）。Tensor and data parallelism on CPU (gloo).

- TP=2 greedy output equals TP=1 token for token on random tiny Qwen3 / Llama / Qwen2 checkpoints,
  with KV heads that divide the ranks and KV heads that must be replicated (Hkv=1 < tp=2), tied and
  untied embeddings; through the Scheduler in spawned gloo ranks, and once through the real server.
- DP=2: requests spread over both replicas; the prefix-aware router keeps a shared prefix on one
  replica, so its cache hit rate beats round-robin's.
"""
import multiprocessing as mp
import os
import random
import tempfile

import pytest
import torch

from minisgl import distributed
from minisgl.dp_router import BLOCK_SIZE, DataParallelRouter
from minisgl.model.parallel_layers import (
    QKVParallelLinear, VocabParallelEmbedding, check_tp_shapes,
)
from minisgl.testing import make_tiny_checkpoint, tp_greedy_worker

TP_CASES = {
    # name: make_tiny_checkpoint kwargs
    "qwen3-kv-split": dict(arch="qwen3", num_heads=4, num_kv_heads=2),
    "llama-kv-replicated": dict(arch="llama", num_heads=4, num_kv_heads=1, tie_word_embeddings=True),
    "qwen2-bias": dict(arch="qwen2", num_heads=4, num_kv_heads=2, head_dim=16),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {name: make_tiny_checkpoint(str(tmp_path_factory.mktemp(name)), **kw) for name, kw in TP_CASES.items()}


def _prompts(n=6, seed=0, vocab=400):
    rng = random.Random(seed)
    return [[rng.randrange(5, vocab) for _ in range(rng.randint(3, 40))] for _ in range(n)]


def _run_tp(model_path, tp_size, prompts, max_new_tokens=24, **server_args):
    """在 tp_size 个 spawn 出的 gloo 进程里跑；返回 rank 0 的结果。Run in tp_size spawned gloo ranks."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory() as d:
        init = f"file://{d}/dist-init"
        procs = [ctx.Process(target=tp_greedy_worker,
                             args=(r, tp_size, init, model_path, prompts, max_new_tokens, results), kwargs=server_args)
                 for r in range(tp_size)]
        for p in procs:
            p.start()
        try:
            out = results.get(timeout=180)
        finally:
            for p in procs:
                p.join(60)
                if p.is_alive():
                    p.kill()
    assert "error" not in out, out["error"]
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return out


@pytest.mark.parametrize("name", list(TP_CASES))
def test_tp2_equals_tp1_greedy(checkpoints, name):
    prompts = _prompts()
    one = _run_tp(checkpoints[name], 1, prompts)
    two = _run_tp(checkpoints[name], 2, prompts)
    assert all(len(v) == 24 for v in one["outputs"].values())
    assert two["outputs"] == one["outputs"]
    # KV 头按 rank 切分（或复制），池容量处处相同。KV heads split (or replicated) per rank.
    kv = TP_CASES[name]["num_kv_heads"]
    assert two["kv_heads"] == max(1, kv // 2) and one["kv_heads"] == kv


def test_tp2_with_chunked_prefill_and_page_size(checkpoints):
    """分块 prefill、页大小 16、radix 命中：TP=2 仍与 TP=1 相同。Chunked prefill, pages, prefix hits."""
    shared = _prompts(1, seed=3)[0] * 3
    prompts = [shared + p for p in _prompts(4, seed=4)]
    kw = dict(page_size=16, chunked_prefill_size=32)
    assert _run_tp(checkpoints["qwen3-kv-split"], 2, prompts, 16, **kw)["outputs"] == \
        _run_tp(checkpoints["qwen3-kv-split"], 1, prompts, 16, **kw)["outputs"]


def test_tp_server_end_to_end(checkpoints):
    """真正的服务器：--tp-size 2 的两个调度进程，输出与进程内 TP=1 相同。The real server with two ranks."""
    import minisgl

    path = checkpoints["llama-kv-replicated"]
    prompts = _prompts(4, seed=7)
    params = {"max_new_tokens": 16, "temperature": 0, "ignore_eos": True}
    with minisgl.Engine(path, device="cpu") as eng:
        want = [o["output_ids"] for o in eng.generate(input_ids=prompts, sampling_params=params)]
    with minisgl.Engine(path, mode="server", device="cpu", tp_size=2) as eng:
        got = [o["output_ids"] for o in eng.generate(input_ids=prompts, sampling_params=params)]
        info = eng.get_server_info()
    assert got == want
    assert info["server_args"]["tp_size"] == 2 and info["num_running_reqs"] == 0


def test_tp_shape_errors():
    check_tp_shapes(4, 2, 128, 2)
    check_tp_shapes(4, 1, 128, 4)  # KV 复制 / replicated KV
    with pytest.raises(ValueError, match="attention heads"):
        check_tp_shapes(6, 2, 128, 4)
    with pytest.raises(ValueError, match="KV heads"):
        check_tp_shapes(6, 3, 128, 2)
    with pytest.raises(ValueError, match="intermediate"):
        check_tp_shapes(4, 2, 129, 2)


def test_engine_inprocess_refuses_tp():
    import minisgl

    with pytest.raises(ValueError, match="mode='server'"):
        minisgl.Engine(tp_size=2)


@pytest.fixture
def fake_rank(monkeypatch):
    """不建进程组，只设 rank 与 size，检查切片。Set rank/size without a group, to check slicing."""
    def set_rank(rank, size):
        monkeypatch.setattr(distributed, "_TP_RANK", rank)
        monkeypatch.setattr(distributed, "_TP_SIZE", size)
    return set_rank


def test_vocab_shard_padding(fake_rank):
    full = torch.arange(7 * 3, dtype=torch.float32).view(7, 3)
    fake_rank(1, 2)
    emb = VocabParallelEmbedding(7, 3)
    emb.weight_loader(emb.weight, full)
    assert emb.local_vocab == 4 and emb.vocab_start == 4
    assert torch.equal(emb.weight.data[:3], full[4:]) and torch.equal(emb.weight.data[3], torch.zeros(3))


def test_qkv_shard_rows_with_replication(fake_rank):
    # H=4, Hkv=1, tp=2：每个 rank 2 个 q 头，同一个 KV 头。Two query heads per rank, one shared KV head.
    D = 2
    full_q, full_k = torch.randn(4 * D, 5), torch.randn(1 * D, 5)
    for rank in range(2):
        fake_rank(rank, 2)
        qkv = QKVParallelLinear(5, D, num_heads=4, num_kv_heads=1)
        qkv.weight_loader(qkv.weight, full_q, 0)
        qkv.weight_loader(qkv.weight, full_k, 1)
        assert (qkv.num_heads, qkv.num_kv_heads) == (2, 1)
        assert torch.equal(qkv.weight.data[:2 * D], full_q[rank * 2 * D:(rank + 1) * 2 * D])
        assert torch.equal(qkv.weight.data[2 * D:3 * D], full_k)


# ======== 数据并行路由 / Data-parallel routing ========
def test_router_round_robin_and_shortest_queue():
    rr = DataParallelRouter(3, "round_robin")
    assert [rr.route(f"r{i}", [1] * 20) for i in range(6)] == [0, 1, 2, 0, 1, 2]
    sq = DataParallelRouter(2, "shortest_queue")
    assert sq.route("a", [1]) == 0 and sq.route("b", [1]) == 1
    sq.finish("a")
    assert sq.route("c", [1]) == 0  # a 结束后 0 号最空 / replica 0 is idle again
    assert sq.in_flight == [1, 1]
    with pytest.raises(ValueError, match="load-balance"):
        DataParallelRouter(2, "random")


def test_router_prefix_aware_sticks_and_balances():
    router = DataParallelRouter(2, "prefix_aware")
    sys_a, sys_b = [7] * (2 * BLOCK_SIZE), [8] * (2 * BLOCK_SIZE)
    first_a = router.route("a0", sys_a + [1, 2])
    first_b = router.route("b0", sys_b + [1, 2])
    assert first_a != first_b  # 新前缀去最空的副本 / a new prefix goes to the lightest replica
    for i in range(1, 5):
        assert router.route(f"a{i}", sys_a + [i]) == first_a
        assert router.route(f"b{i}", sys_b + [i]) == first_b
    # 主人太忙时放弃缓存。An overloaded owner is skipped.
    for i in range(20):
        router.route(f"x{i}", sys_a + [100 + i])
    assert max(router.in_flight) - min(router.in_flight) <= 9


def _hit_rate(method):
    import minisgl

    rng = random.Random(0)
    groups = [[rng.randrange(5, 400) for _ in range(96)] for _ in range(3)]
    prompt_tokens = cached = 0
    with minisgl.Engine(mode="server", device="cpu", dp_size=2, load_balance_method=method) as eng:
        # 组数为奇数：轮询时同一组的请求轮流落在两个副本上。An odd group count: round-robin alternates replicas.
        for round_ in range(4):  # 每组 4 个问题，一个一个发 / 4 questions per group, one at a time
            for g, prefix in enumerate(groups):
                out = eng.generate(input_ids=prefix + [5 + round_, 6 + g], sampling_params={"max_new_tokens": 2})
                prompt_tokens += out["meta_info"]["prompt_tokens"]
                cached += out["meta_info"]["cached_tokens"]
        info = eng.get_server_info()
    return cached / prompt_tokens, info


def test_dp2_spreads_and_prefix_aware_beats_round_robin():
    rr_rate, rr_info = _hit_rate("round_robin")
    pa_rate, pa_info = _hit_rate("prefix_aware")
    for info in (rr_info, pa_info):
        assert len(info["dp_replicas"]) == 2 and len(info["scheduler_pids"]) == 2
        assert all(r["forward_ct"] > 0 for r in info["dp_replicas"])  # 两个副本都干了活 / both replicas worked
        assert min(info["dp_router"]["routed"]) >= 4
    # 轮询：每组的 4 个请求分到两个副本，各算一次前缀；前缀感知：只算一次。
    # Round-robin computes each group's prefix on both replicas; prefix-aware computes it once.
    assert pa_rate > rr_rate + 0.1, (pa_rate, rr_rate)


def test_tp2_overlap_scheduler_equals_tp1(checkpoints):
    """重叠调度下两个 rank 仍一步不差：tp=2 + overlap 与 tp=1（普通调度）逐 token 相同。

    Under the overlap scheduler both ranks stay in step: tp=2 with overlap equals tp=1 without.
    """
    prompts = _prompts(4, seed=5)
    kw = dict(page_size=16, chunked_prefill_size=32)
    two = _run_tp(checkpoints["qwen3-kv-split"], 2, prompts, 16, enable_overlap_schedule=True, **kw)
    assert two["outputs"] == _run_tp(checkpoints["qwen3-kv-split"], 1, prompts, 16, **kw)["outputs"]
