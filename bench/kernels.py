# ================================================================================
# ⏱️ 注意力内核微基准（decode 带宽 / extend 算力）
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   在 GPU 上计时手写的 Triton 注意力内核：decode 报告达到的显存带宽 (GB/s) 并与实测的
#   设备内拷贝带宽对比；extend 报告 TFLOP/s 并与 torch SDPA（FlashAttention）对比。
#   Times the hand-written Triton attention kernels on a GPU: decode reports achieved
#   memory bandwidth against a measured device copy; extend reports TFLOP/s against torch SDPA.
#
# 【生活比喻】Metaphor
#   秒表 + 标尺：同一段跑道（同样的数据），先量“最快能跑多快”（拷贝带宽），再看选手跑了多少。
#   A stopwatch and a ruler: first measure the track's limit (copy bandwidth), then the runner.
#
# 【核心架构】Architecture
#   copy_bandwidth()        y.copy_(x)，2 GiB，字节 = 读 + 写 / bytes = read + write
#   bench_decode()          bs × seq 网格 → triton decode (auto splits) vs gather + SDPA
#   bench_splits()          小批量 (bs 1/8/32) 时 split 数的作用 / split-KV at small batch
#   bench_shared_prefix()   16 组 × 16 个请求共用前缀：L2 复用了多少 / how much L2 reuse a shared prefix gets
#   bench_mixed()           长短不一的批 [100, 2048]：段数策略 × 内核配置 / mixed lengths: split policy x config
#   bench_cascade_parts()   cascade 拆开计时：前缀级扫配置与段数，后缀 + 合并 / cascade by parts, prefix-stage sweep
#   bench_extend()          1k 新 token，前缀 0 / 1k → triton extend vs SDPA (dense, 不分页)
#   --tune                  扫 BLOCK / num_warps / num_stages / splits，打印最好的配置
#
# 【工作流程】Workflow
#   1. 量拷贝带宽。2. decode 表。3. extend 表。4.（可选）扫参。计时都用
#   triton.testing.do_bench 的中位数（CUDA event 计时，先热身）。
#   Measure the copy, then the decode and extend tables, then (optionally) the sweep.
#   All times are do_bench medians (CUDA events, after warm-up).
#
# 【关键概念】Key Concepts
#   - decode 最少字节 = K + V + kv_indices：bs·L·Hkv·D·2·sizeof + bs·L·4（q/o/局部结果很小，不计）。
#     GB/s = 字节 / 时间；与拷贝带宽之比就是“离屋顶还有多远”。
#     Minimum decode bytes = K + V + indices; GB/s over copy bandwidth = distance to the roof.
#   - extend FLOPs = 4·H·D·Σ(Lq·Lp + Lq(Lq+1)/2)（只算因果可见的部分 / causal part only）。
#   - SDPA 基线用稠密、连续的 K/V（不分页，gather 不计时），是理想化的对手。
#     The SDPA baseline gets dense contiguous K/V (no paging, gather untimed): an idealised rival.
#   - decode 的 SDPA 基线则把 gather 算进时间（引擎真要这么做就得先 gather）。
#     The decode baseline does include the gather, as an engine using SDPA would have to.
#
#   - 实测 (H100 80GB HBM3, torch 2.11, triton 3.6, 2026-11)：拷贝 3.02 TB/s；
#     decode bs 64/256 × seq 1k–4k：2.37–2.98 TB/s = 拷贝的 78–99%，是 gather+SDPA 的 2.6–3.0×；
#     extend 1k 新 token：bs 1 无前缀 0.061 ms（受启动开销限制 / launch-bound），1k 前缀 0.058 ms
#     (1.17× SDPA)；bs 8：0.13 ms (0.68× SDPA) / 0.38 ms 带前缀 (0.93× SDPA)。
#     Measured on an H100: decode at 78–99% of copy bandwidth; extend 0.4–1.2× SDPA (FlashAttention).
#
# 【使用方式】Usage
#   PYTHONPATH=. python bench/kernels.py            # 表格 / tables
#   PYTHONPATH=. python bench/kernels.py --tune     # 加扫参 / plus the tuning sweep
#
# 【对应章节】Chapter: docs/zh/07-model-inference.md
# ================================================================================

from __future__ import annotations

import argparse
import itertools
import json
import sys

import torch
import torch.nn.functional as F

try:
    import triton
    from triton.testing import do_bench
except ImportError:  # pragma: no cover
    sys.exit("bench/kernels.py needs triton and a CUDA GPU")

from minisgl.runner.attention.triton_ops.decode_attention import _decode_config  # noqa: E402
from minisgl.runner.attention.triton_ops import (
    decode_attention_fwd,
    extend_attention_fwd,
    get_num_kv_splits,
)

H, HKV, D = 16, 8, 128  # Qwen3-0.6B 的注意力形状 / Qwen3-0.6B's attention shape
PAGE = 16
MAX_KV_SPLITS = 16
DTYPE = torch.bfloat16


def bench_ms(fn) -> float:
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def timed_or_failed(fn, *tag) -> tuple:
    """(ms, *tag)；这个配置跑不起来时（共享内存不够等）(inf, *tag, 错误)。(inf, *tag, error) when it cannot run."""
    try:
        fn()
        return (bench_ms(fn), *tag)
    except Exception as e:  # 共享内存不够等 / e.g. out of shared memory
        return (float("inf"), *tag, repr(e)[:60])


def copy_bandwidth(nbytes: int = 2 << 30) -> float:
    """设备内拷贝带宽 GB/s（读+写）/ device-to-device copy bandwidth, read + write."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    return 2 * nbytes / ms / 1e6  # src/dst 随函数返回释放 / freed on return


def paged_indices(bs: int, seq: int, page: int = PAGE) -> torch.Tensor:
    """每个请求 seq 个 token，页打乱（和分页池里真实的样子一样）/ shuffled pages, as in a real pool."""
    pages_per_req = -(-seq // page)
    perm = torch.randperm(bs * pages_per_req, device="cuda") + 1  # 页 0 留作哑页 / page 0 = dummy
    slots = perm.view(bs, pages_per_req, 1) * page + torch.arange(page, device="cuda")
    return slots.view(bs, -1)[:, :seq].reshape(-1).to(torch.int32)


# ======== decode ========


def make_decode(bs: int, seq: int, page: int = PAGE):
    pool = (bs * (-(-seq // page)) + 1) * page
    k_buf = torch.randn(pool, HKV, D, dtype=DTYPE, device="cuda")
    v_buf = torch.randn(pool, HKV, D, dtype=DTYPE, device="cuda")
    q = torch.randn(bs, H, D, dtype=DTYPE, device="cuda")
    kv_indices = paged_indices(bs, seq, page)
    kv_indptr = torch.arange(bs + 1, dtype=torch.int32, device="cuda") * seq
    seq_lens = torch.full((bs,), seq, dtype=torch.int32, device="cuda")
    return q, k_buf, v_buf, kv_indptr, kv_indices, seq_lens


def run_decode(batch, splits=None, config=None):
    q, k_buf, v_buf, kv_indptr, kv_indices, seq_lens = batch
    bs = q.shape[0]
    o = torch.empty_like(q)
    logits = torch.empty(bs, H, MAX_KV_SPLITS, D, dtype=torch.float32, device="cuda")
    lse = torch.empty(bs, H, MAX_KV_SPLITS, dtype=torch.float32, device="cuda")
    if splits is None:
        num_splits = get_num_kv_splits(seq_lens, MAX_KV_SPLITS, num_kv_heads=HKV)
    else:
        num_splits = torch.full((bs,), splits, dtype=torch.int32, device="cuda")

    def fn():
        decode_attention_fwd(q, k_buf, v_buf, o, kv_indptr, kv_indices, logits, lse, num_splits,
                             MAX_KV_SPLITS, D**-0.5, config=config)

    return fn, o, num_splits


def sdpa_decode_fn(batch):
    q, k_buf, v_buf, kv_indptr, kv_indices, seq_lens = batch
    bs, seq = q.shape[0], kv_indices.numel() // q.shape[0]
    idx = kv_indices.long()

    def fn():
        k = k_buf[idx].view(bs, seq, HKV, D).transpose(1, 2)  # gather（计时）/ gather, timed
        v = v_buf[idx].view(bs, seq, HKV, D).transpose(1, 2)
        return F.scaled_dot_product_attention(q.unsqueeze(2), k, v, enable_gqa=True)

    return fn


def decode_bytes(bs: int, seq: int) -> int:
    return bs * seq * HKV * D * 2 * DTYPE.itemsize + bs * seq * 4


def bench_decode(copy_gbs: float, rows: list):
    print(f"\n## decode  (H={H}, Hkv={HKV}, D={D}, bf16, page {PAGE}, max_kv_splits {MAX_KV_SPLITS})")
    print(f"{'bs':>5} {'seq':>6} {'splits':>6} {'triton ms':>10} {'GB/s':>8} {'% copy':>7} "
          f"{'sdpa ms':>9} {'speedup':>8}")
    for bs, seq, page in [(b, s, PAGE) for b in (64, 256) for s in (1024, 2048, 4096)] + [(64, 2048, 1)]:
        batch = make_decode(bs, seq, page)
        fn, o, ns = run_decode(batch)
        ms = bench_ms(fn)
        ref_fn = sdpa_decode_fn(batch)
        ref_ms = bench_ms(ref_fn)
        err = ((o.float() - ref_fn().squeeze(2).float()).norm() / o.float().norm()).item()
        gbs = decode_bytes(bs, seq) / ms / 1e6
        print(f"{bs:>5} {seq:>6} {int(ns[0]):>6} {ms:>10.4f} {gbs:>8.0f} {100 * gbs / copy_gbs:>6.1f}% "
              f"{ref_ms:>9.4f} {ref_ms / ms:>7.2f}x   (rel err vs sdpa {err:.1e})"
              + ("   [page 1: every token's slot random]" if page == 1 else ""))
        rows.append(dict(kind="decode", bs=bs, seq=seq, page=page, splits=int(ns[0]), ms=ms, gbs=gbs,
                         frac_copy=gbs / copy_gbs, sdpa_ms=ref_ms, rel_err=err))
        del batch, fn, o, ref_fn
        torch.cuda.empty_cache()


def shared_prefix_indices(groups: int, per_group: int, prefix: int, suffix: int, interleave: bool) -> torch.Tensor:
    """每组 per_group 个请求共用同一段前缀槽位（像 radix 缓存命中），后缀各自独有。

    Each group's requests point at the same prefix slots (as after a radix-cache hit); the
    suffixes are their own. interleave=False keeps a group's requests adjacent in the batch.
    """
    prefix_slots = paged_indices(groups, prefix).view(groups, prefix)
    own = paged_indices(groups * per_group, suffix).view(groups * per_group, suffix) + groups * prefix + PAGE
    rows = []
    for i in range(groups * per_group):
        g = i % groups if interleave else i // per_group
        rows.append(torch.cat([prefix_slots[g], own[i]]))
    return torch.stack(rows).reshape(-1).to(torch.int32)


def bench_shared_prefix(copy_gbs: float, rows: list):
    """共享前缀的 decode：同一批里 16 个请求读同一段 KV，能从 L2 里复用多少？

    Shared-prefix decode: how much does the L2 cache give back when 16 requests of a batch read
    the same prefix KV? GB/s counts every request's full KV, as if nothing were shared.
    """
    groups, per_group, prefix, suffix = 16, 16, 2048, 256
    bs, seq = groups * per_group, prefix + suffix
    print(f"\n## shared-prefix decode  ({groups} groups x {per_group} requests, prefix {prefix} + own {suffix}, "
          f"GB/s as if unshared)")
    base = make_decode(bs, seq)
    q, k_buf, v_buf, kv_indptr, _, seq_lens = base
    pool = max(k_buf.shape[0], groups * prefix + bs * suffix + 2 * PAGE)
    k_buf = torch.randn(pool, HKV, D, dtype=DTYPE, device="cuda")
    v_buf = torch.randn(pool, HKV, D, dtype=DTYPE, device="cuda")
    layouts = {"unshared": base[4], "shared, groups adjacent": shared_prefix_indices(groups, per_group, prefix, suffix, False),
               "shared, groups interleaved": shared_prefix_indices(groups, per_group, prefix, suffix, True)}
    for name, idx in layouts.items():
        fn, _, ns = run_decode((q, k_buf, v_buf, kv_indptr, idx, seq_lens))
        ms = bench_ms(fn)
        gbs = decode_bytes(bs, seq) / ms / 1e6
        print(f"  {name:28s} {ms:8.4f} ms {gbs:8.0f} GB/s ({100 * gbs / copy_gbs:5.1f}% of copy)  splits {int(ns[0])}")
        rows.append(dict(kind="shared_prefix", layout=name, bs=bs, seq=seq, ms=ms, gbs=gbs))
    # cascade：每组前缀只读一次（cascade_attention.py），后缀照常 / each prefix once per group, suffixes as usual
    from minisgl.runner.attention.triton_ops.cascade_attention import cascade_prefix_fwd, prefix_work_items

    full_idx = layouts["shared, groups adjacent"]
    ref_fn, ref_o, _ = run_decode((q, k_buf, v_buf, kv_indptr, full_idx, seq_lens))
    ref_fn()
    per_row = full_idx.view(bs, seq)
    suffix_idx = per_row[:, prefix:].reshape(-1).contiguous()
    suffix_indptr = torch.arange(bs + 1, dtype=torch.int32, device="cuda") * suffix
    suffix_lens = torch.full((bs,), suffix, dtype=torch.int32, device="cuda")
    group_indptr = torch.arange(groups + 1, dtype=torch.int32, device="cuda") * per_group
    members = torch.arange(bs, dtype=torch.int32, device="cuda")
    prefix_indptr = torch.arange(groups + 1, dtype=torch.int32, device="cuda") * prefix
    prefix_idx = per_row[::per_group, :prefix].reshape(-1).long().contiguous()
    cas_len = torch.full((bs,), prefix, dtype=torch.int32, device="cuda")
    for n_splits in (1, 2, 4):
        group_splits = torch.full((groups,), n_splits, dtype=torch.int32, device="cuda")
        work = torch.tensor(prefix_work_items([n_splits] * groups), dtype=torch.int32, device="cuda")
        cas_splits = torch.full((bs,), n_splits, dtype=torch.int32, device="cuda")
        cas_out = torch.empty(bs, H, n_splits, D, dtype=torch.float32, device="cuda")
        cas_lse = torch.empty(bs, H, n_splits, dtype=torch.float32, device="cuda")
        o = torch.empty_like(q)
        logits = torch.empty(bs, H, MAX_KV_SPLITS, D, dtype=torch.float32, device="cuda")
        lse = torch.empty(bs, H, MAX_KV_SPLITS, dtype=torch.float32, device="cuda")
        ns = get_num_kv_splits(suffix_lens, MAX_KV_SPLITS, num_kv_heads=HKV)

        def cascade_fn():
            cfg = cascade_prefix_fwd(q, k_buf, v_buf, cas_out, cas_lse, group_indptr, members, prefix_indptr,
                                     prefix_idx, group_splits, work, per_group, D**-0.5)
            decode_attention_fwd(q, k_buf, v_buf, o, suffix_indptr, suffix_idx, logits, lse, ns, MAX_KV_SPLITS,
                                 D**-0.5, prefix_partials=(cas_out, cas_lse, cas_len, cas_splits, cfg["BLOCK_N"]))

        ms = bench_ms(cascade_fn)
        err = ((o.float() - ref_o.float()).norm() / ref_o.float().norm()).item()
        moved = (groups * prefix + bs * suffix) * HKV * D * 2 * DTYPE.itemsize
        print(f"  {'cascade, prefix splits ' + str(n_splits):28s} {ms:8.4f} ms   {moved / ms / 1e6:8.0f} GB/s of bytes "
              f"really read  (rel err vs plain {err:.1e})")
        rows.append(dict(kind="shared_prefix", layout=f"cascade splits {n_splits}", bs=bs, seq=seq, ms=ms,
                         gbs_real=moved / ms / 1e6, rel_err=err))


def make_mixed_decode(bs: int, lo: int = 100, hi: int = 2048, seed: int = 0):
    """长短不一的 decode 批（像 offline_throughput 跑到一半：prompt + 已生成，约在 [100, 2048]），页大小 1。

    A decode batch of mixed lengths (offline_throughput mid-run: prompt + output so far, about
    [100, 2048]), page size 1: every token's slot random, as in the engine's default pool.
    """
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(lo, hi + 1, (bs,), generator=g).to(torch.int32)
    total = int(lens.sum())
    k_buf = torch.randn(total + 1, HKV, D, dtype=DTYPE, device="cuda")
    v_buf = torch.randn(total + 1, HKV, D, dtype=DTYPE, device="cuda")
    q = torch.randn(bs, H, D, dtype=DTYPE, device="cuda")
    kv_indices = (torch.randperm(total, device="cuda") + 1).to(torch.int32)
    kv_indptr = torch.zeros(bs + 1, dtype=torch.int32, device="cuda")
    kv_indptr[1:] = torch.cumsum(lens.cuda(), 0)
    return q, k_buf, v_buf, kv_indptr, kv_indices, lens.cuda()


def split_policy(seq_lens: torch.Tensor, name: str) -> torch.Tensor:
    """扫参用的段数策略。Split-count policies for the sweep.

    auto      get_num_kv_splits（引擎现在用的）/ what the engine uses
    len-T     每段至多 T 个 token，不看占用率 / at most T tokens per split, whatever the batch size
    """
    if name == "auto":
        return get_num_kv_splits(seq_lens, MAX_KV_SPLITS, num_kv_heads=HKV)
    t = int(name.split("-")[1])
    return ((seq_lens.long() + t - 1) // t).clamp(1, MAX_KV_SPLITS).to(torch.int32)


def bench_mixed(copy_gbs: float, rows: list):
    """长短不一的批：段数策略 × 内核配置。Mixed lengths: split policy x kernel config (ms; best first)."""
    print("\n## decode, mixed lengths in [100, 2048], page 1 (offline_throughput's batches): "
          "split policy x config")
    policies = ("auto", "len-256", "len-512", "len-1024")
    configs = [dict(BLOCK_N=bn, num_warps=nw, num_stages=st)
               for bn, nw, st in itertools.product((32, 64, 128), (2, 4, 8), (2, 3, 4))]
    for bs in (256, 128, 48, 16):
        batch = make_mixed_decode(bs)
        q, k_buf, v_buf, kv_indptr, kv_indices, seq_lens = batch
        nbytes = int(seq_lens.sum()) * (HKV * D * 2 * DTYPE.itemsize + 4)
        o_ref = sdpa_mixed_reference(batch)
        results = []
        for pol, cfg in itertools.product(policies, configs):
            ns = split_policy(seq_lens, pol)
            o = torch.empty_like(q)
            logits = torch.empty(bs, H, MAX_KV_SPLITS, D, dtype=torch.float32, device="cuda")
            lse = torch.empty(bs, H, MAX_KV_SPLITS, dtype=torch.float32, device="cuda")

            def fn():
                decode_attention_fwd(q, k_buf, v_buf, o, kv_indptr, kv_indices, logits, lse, ns, MAX_KV_SPLITS,
                                     D**-0.5, config=cfg)
            try:
                fn()
                err = ((o.float() - o_ref).norm() / o_ref.norm()).item()
                results.append((bench_ms(fn), pol, cfg, err))
            except Exception as e:  # 共享内存不够等 / e.g. out of shared memory
                results.append((float("inf"), pol, cfg, repr(e)[:60]))
        results.sort(key=lambda r: r[0])
        engine_cfg = _decode_config(q, D, HKV)  # 引擎现在的选择 / what the engine picks now
        default = next(r for r in results if r[1] == "auto" and r[2] == engine_cfg)
        for ms, pol, cfg, err in results[:6] + [default]:
            print(f"  bs {bs:>3} {ms:8.4f} ms {nbytes / ms / 1e6:6.0f} GB/s ({100 * nbytes / ms / 1e6 / copy_gbs:4.1f}%)"
                  f"  {pol:9s} {cfg}  err {err}" + ("   <- current default" if (pol, cfg) == default[1:3] else ""))
        for pol in policies:  # 每个策略的最好配置 / the best config of each policy
            best = next(r for r in results if r[1] == pol)
            print(f"      best of {pol:9s} {best[0]:8.4f} ms  {best[2]}")
        # grid 的段轴（缺省 vs MAX_KV_SPLITS = 旧的 grid）/ the grid's slice axis (default vs the old MAX_KV_SPLITS)
        ns = split_policy(seq_lens, "auto")
        grid_ms = {}
        for gs in (None, 1, 4, MAX_KV_SPLITS):
            o = torch.empty_like(q)
            logits = torch.empty(bs, H, MAX_KV_SPLITS, D, dtype=torch.float32, device="cuda")
            lse = torch.empty(bs, H, MAX_KV_SPLITS, dtype=torch.float32, device="cuda")
            grid_ms[str(gs or "default")] = bench_ms(lambda: decode_attention_fwd(
                q, k_buf, v_buf, o, kv_indptr, kv_indices, logits, lse, ns, MAX_KV_SPLITS, D**-0.5,
                config={**engine_cfg, "grid_splits": gs}))
        print("      grid slice axis: " + "  ".join(f"{k} {v:.4f} ms" for k, v in grid_ms.items()))
        rows.append(dict(kind="mixed_decode", bs=bs, bytes=nbytes, grid_splits_ms=grid_ms,
                         results=[(r[0], r[1], r[2], str(r[3])) for r in results]))
        del batch
        torch.cuda.empty_cache()


def sdpa_mixed_reference(batch) -> torch.Tensor:
    """逐请求的 SDPA（float32）作参照。Per-request float32 SDPA as the reference."""
    q, k_buf, v_buf, kv_indptr, kv_indices, seq_lens = batch
    out = []
    for b in range(q.shape[0]):
        idx = kv_indices[kv_indptr[b]:kv_indptr[b + 1]].long()
        k = k_buf[idx].float().transpose(0, 1)  # [Hkv, L, D]
        v = v_buf[idx].float().transpose(0, 1)
        out.append(F.scaled_dot_product_attention(q[b].float().unsqueeze(1), k, v, enable_gqa=True).squeeze(1))
    return torch.stack(out)


def bench_cascade_parts(copy_gbs: float, rows: list):
    """cascade 拆开计时：前缀级（扫配置与段数）、后缀级 + 合并、合计。Cascade timed by parts, with a sweep.

    16 组 × 16 个请求，前缀 2048 + 各自 256（bench/prefix_cache.py 的形状，lpm 把一组聚在一起时）。
    16 groups x 16 requests, prefix 2048 + 256 own tokens (prefix_cache.py's shape once lpm keeps groups together).
    """
    from minisgl.runner.attention.triton_ops.cascade_attention import (
        cascade_config,
        cascade_prefix_fwd,
        prefix_programs,
        prefix_work_items,
    )

    groups, per_group, prefix, suffix = 16, 16, 2048, 256
    bs = groups * per_group
    print(f"\n## cascade by parts ({groups} groups x {per_group}, prefix {prefix} + own {suffix}); "
          f"GB/s of bytes really read")
    q = torch.randn(bs, H, D, dtype=DTYPE, device="cuda")
    pool = groups * prefix + bs * suffix + 2 * PAGE
    k_buf = torch.randn(pool, HKV, D, dtype=DTYPE, device="cuda")
    v_buf = torch.randn(pool, HKV, D, dtype=DTYPE, device="cuda")
    per_row = shared_prefix_indices(groups, per_group, prefix, suffix, False).view(bs, prefix + suffix)
    suffix_idx = per_row[:, prefix:].reshape(-1).contiguous()
    suffix_indptr = torch.arange(bs + 1, dtype=torch.int32, device="cuda") * suffix
    suffix_lens = torch.full((bs,), suffix, dtype=torch.int32, device="cuda")
    # 和引擎一样：组数补到 G = max_bs // 2（空组，工作表里没有它们），BLOCK_M 按 64 // GROUP 个成员。
    # As in the engine: groups padded to G = max_bs // 2 (empty ones, absent from the work list), BLOCK_M
    # for 64 // GROUP members.
    G, grid_splits, max_members = bs // 2, 8, max(2, 64 // (H // HKV))
    programs = prefix_programs(HKV, torch.cuda.get_device_properties(0).multi_processor_count)
    group_indptr = (torch.arange(G + 1, device="cuda").clamp(max=groups) * per_group).to(torch.int32)
    members = torch.arange(bs, dtype=torch.int32, device="cuda")
    prefix_indptr = (torch.arange(G + 1, device="cuda").clamp(max=groups) * prefix).to(torch.int32)
    prefix_idx = per_row[::per_group, :prefix].reshape(-1).long().contiguous()
    cas_len = torch.full((bs,), prefix, dtype=torch.int32, device="cuda")
    o = torch.empty_like(q)
    logits = torch.empty(bs, H, MAX_KV_SPLITS, D, dtype=torch.float32, device="cuda")
    lse = torch.empty(bs, H, MAX_KV_SPLITS, dtype=torch.float32, device="cuda")
    ns = get_num_kv_splits(suffix_lens, MAX_KV_SPLITS, num_kv_heads=HKV)
    prefix_bytes = groups * prefix * HKV * D * 2 * DTYPE.itemsize
    suffix_bytes = bs * suffix * HKV * D * 2 * DTYPE.itemsize
    results = []
    cas_out = torch.empty(bs, H, grid_splits, D, dtype=torch.float32, device="cuda")
    cas_lse = torch.empty(bs, H, grid_splits, dtype=torch.float32, device="cuda")

    def prefix_inputs(n_splits):
        group_splits = torch.zeros(G, dtype=torch.int32, device="cuda")
        group_splits[:groups] = n_splits
        work = torch.tensor(prefix_work_items([n_splits] * groups), dtype=torch.int32, device="cuda")
        return group_splits, work

    # 常驻 program 的个数：缺省（每 SM 两个）、翻倍，和“每项一个 program”（G × 8，像旧的 grid：大多没活）。
    # The number of persistent programs: the default (two per SM), twice that, and one per possible item
    # (G x 8, like the old grid, most of them idle).
    print("  prefix stage by number of programs per KV head (64/4/3, 2 slices):")
    for n_prog in (programs, 2 * programs, G * grid_splits):
        group_splits, work = prefix_inputs(2)

        def grid_fn():
            cascade_prefix_fwd(q, k_buf, v_buf, cas_out, cas_lse, group_indptr, members, prefix_indptr,
                               prefix_idx, group_splits, work, max_members, D**-0.5, config={"num_programs": n_prog})
        ms = bench_ms(grid_fn)
        print(f"    {n_prog:5d} programs  {ms:8.4f} ms {prefix_bytes / ms / 1e6:7.0f} GB/s")
        rows.append(dict(kind="cascade_prefix_programs", programs=n_prog, ms=ms))
    for n_splits, bn, nw, st in itertools.product((1, 2, 4, 8), (32, 64, 128), (4, 8), (2, 3)):
        cfg = dict(BLOCK_N=bn, num_warps=nw, num_stages=st)
        group_splits, work = prefix_inputs(n_splits)

        def prefix_fn():
            cascade_prefix_fwd(q, k_buf, v_buf, cas_out, cas_lse, group_indptr, members, prefix_indptr,
                               prefix_idx, group_splits, work, max_members, D**-0.5, config=cfg)
        results.append(timed_or_failed(prefix_fn, n_splits, cfg))
    results.sort(key=lambda r: r[0])
    for ms, n_splits, cfg, *_ in results[:8]:
        print(f"  prefix stage  {ms:8.4f} ms {prefix_bytes / ms / 1e6:7.0f} GB/s  splits {n_splits} {cfg}")
    default = [r for r in results if r[2] == cascade_config(q)]
    for ms, n_splits, cfg, *_ in default:
        print(f"  prefix stage  {ms:8.4f} ms {prefix_bytes / ms / 1e6:7.0f} GB/s  splits {n_splits} {cfg}  <- default config")
    best_ms, best_splits, best_cfg = results[0][:3]
    group_splits, work = prefix_inputs(best_splits)
    cas_splits = torch.full((bs,), best_splits, dtype=torch.int32, device="cuda")
    cascade_prefix_fwd(q, k_buf, v_buf, cas_out, cas_lse, group_indptr, members, prefix_indptr, prefix_idx,
                       group_splits, work, max_members, D**-0.5, config=best_cfg)
    partials = (cas_out, cas_lse, cas_len, cas_splits, best_cfg["BLOCK_N"])

    def suffix_fn():
        decode_attention_fwd(q, k_buf, v_buf, o, suffix_indptr, suffix_idx, logits, lse, ns, MAX_KV_SPLITS,
                             D**-0.5, prefix_partials=partials)

    def plain_suffix_fn():
        decode_attention_fwd(q, k_buf, v_buf, o, suffix_indptr, suffix_idx, logits, lse, ns, MAX_KV_SPLITS, D**-0.5)

    # 后缀级 grid 的段轴：缺省（大批量 2）、1、4，和 MAX_KV_SPLITS（旧的 grid：每个请求只有 1 段，15/16 的 program 没活）。
    # The suffix stage's slice axis: the default (2 at large batch), 1, 4, and MAX_KV_SPLITS (the old
    # grid: one slice per request here, so 15 of 16 programs idle).
    print("  suffix stage by grid slice axis (default config):")
    for gs in (None, 1, 4, MAX_KV_SPLITS):
        def gs_fn():
            decode_attention_fwd(q, k_buf, v_buf, o, suffix_indptr, suffix_idx, logits, lse, ns, MAX_KV_SPLITS,
                                 D**-0.5, config={"grid_splits": gs}, prefix_partials=partials)
        ms = bench_ms(gs_fn)
        print(f"    grid splits {str(gs or 'default'):>7s}  {ms:8.4f} ms {suffix_bytes / ms / 1e6:7.0f} GB/s")
        rows.append(dict(kind="suffix_grid_splits", grid_splits=gs, ms=ms))
    # 后缀级（就是普通 decode 内核加上合并）也扫一遍：段数 × 配置。The suffix stage swept too: splits x config.
    suffix_sweep = []
    for n_splits, bn, nw, st in itertools.product((1, 2), (32, 64, 128), (2, 4), (2, 3)):
        cfg = dict(BLOCK_N=bn, num_warps=nw, num_stages=st)
        ns_try = torch.full((bs,), n_splits, dtype=torch.int32, device="cuda")

        def sweep_fn():
            decode_attention_fwd(q, k_buf, v_buf, o, suffix_indptr, suffix_idx, logits, lse, ns_try, MAX_KV_SPLITS,
                                 D**-0.5, config=cfg, prefix_partials=partials)
        suffix_sweep.append(timed_or_failed(sweep_fn, n_splits, cfg))
    suffix_sweep.sort(key=lambda r: r[0])
    for ms, n_splits, cfg, *_ in suffix_sweep[:6]:
        print(f"  suffix stage  {ms:8.4f} ms {suffix_bytes / ms / 1e6:7.0f} GB/s  splits {n_splits} {cfg}")
    full_indptr = torch.arange(bs + 1, dtype=torch.int32, device="cuda") * (prefix + suffix)
    full_lens = torch.full((bs,), prefix + suffix, dtype=torch.int32, device="cuda")
    ref_fn, ref_o, _ = run_decode((q, k_buf, v_buf, full_indptr, per_row.reshape(-1).contiguous(), full_lens))
    ref_fn()
    suffix_fn()
    err = ((o.float() - ref_o.float()).norm() / ref_o.float().norm()).item()
    suffix_ms, plain_ms = bench_ms(suffix_fn), bench_ms(plain_suffix_fn)
    full_ms = bench_ms(ref_fn)
    print(f"  plain decode over the whole rows: {full_ms:.4f} ms; cascade (best) vs plain rel err {err:.1e}")
    print(f"  suffix + merge {suffix_ms:7.4f} ms {suffix_bytes / suffix_ms / 1e6:7.0f} GB/s  (suffix alone, no "
          f"merge: {plain_ms:.4f} ms)  splits per request {int(ns[0])}")
    print(f"  total (best)   {best_ms + suffix_ms:7.4f} ms {(prefix_bytes + suffix_bytes) / (best_ms + suffix_ms) / 1e6:7.0f}"
          f" GB/s ({100 * (prefix_bytes + suffix_bytes) / (best_ms + suffix_ms) / 1e6 / copy_gbs:.1f}% of copy)")
    rows.append(dict(kind="cascade_parts", prefix=[(r[0], r[1], r[2]) for r in results], suffix_ms=suffix_ms,
                     suffix_sweep=[(r[0], r[1], r[2]) for r in suffix_sweep],
                     plain_suffix_ms=plain_ms, plain_full_ms=full_ms, rel_err=err))


# ======== extend ========


def make_extend(bs: int, lq: int, lp: int):
    pool = (bs * (-(-(lq + lp) // PAGE)) + 1) * PAGE
    k_buf = torch.randn(pool, HKV, D, dtype=DTYPE, device="cuda")
    v_buf = torch.randn_like(k_buf)
    q = torch.randn(bs * lq, H, D, dtype=DTYPE, device="cuda")
    k = torch.randn(bs * lq, HKV, D, dtype=DTYPE, device="cuda")
    v = torch.randn_like(k)
    slots = paged_indices(bs, lq + lp).view(bs, lq + lp)
    kv_indices = slots[:, :lp].reshape(-1).contiguous()
    k_buf[slots[:, lp:].reshape(-1).long()] = k  # 新 token 也写进池子 / new K/V also in the pool
    v_buf[slots[:, lp:].reshape(-1).long()] = v
    qo_indptr = torch.arange(bs + 1, dtype=torch.int32, device="cuda") * lq
    kv_indptr = torch.arange(bs + 1, dtype=torch.int32, device="cuda") * lp
    return q, k, v, k_buf, v_buf, qo_indptr, kv_indptr, kv_indices, lq


def run_extend(batch, config=None):
    q, k, v, k_buf, v_buf, qo_indptr, kv_indptr, kv_indices, lq = batch
    o = torch.empty_like(q)

    def fn():
        extend_attention_fwd(q, k, v, o, k_buf, v_buf, qo_indptr, kv_indptr, kv_indices, lq, D**-0.5,
                             config=config)

    return fn, o


def sdpa_extend_fn(batch, bs: int, lq: int, lp: int):
    """稠密 K/V（前缀 ‖ 新 token），gather 不计时 / dense K/V, gather untimed."""
    from torch.nn.attention.bias import causal_lower_right

    q, k, v, k_buf, v_buf, qo_indptr, kv_indptr, kv_indices, _ = batch
    kp = k_buf[kv_indices.long()].view(bs, lp, HKV, D)
    vp = v_buf[kv_indices.long()].view(bs, lp, HKV, D)
    kk = torch.cat([kp, k.view(bs, lq, HKV, D)], 1).transpose(1, 2).repeat_interleave(H // HKV, 1).contiguous()
    vv = torch.cat([vp, v.view(bs, lq, HKV, D)], 1).transpose(1, 2).repeat_interleave(H // HKV, 1).contiguous()
    qq = q.view(bs, lq, H, D).transpose(1, 2).contiguous()
    if lp == 0:
        return lambda: F.scaled_dot_product_attention(qq, kk, vv, is_causal=True)
    mask = causal_lower_right(lq, lp + lq)  # 右下对齐的因果掩码 / bottom-right causal
    return lambda: F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask)


def extend_flops(bs: int, lq: int, lp: int) -> float:
    return 4.0 * H * D * bs * (lq * lp + lq * (lq + 1) / 2)


def bench_extend(rows: list):
    print(f"\n## extend  (H={H}, Hkv={HKV}, D={D}, bf16; SDPA gets dense K/V)")
    print(f"{'bs':>3} {'new':>5} {'prefix':>6} {'triton ms':>10} {'TFLOP/s':>8} {'sdpa ms':>9} {'TFLOP/s':>8} "
          f"{'triton/sdpa':>11}")
    for bs, lq, lp in [(1, 1024, 0), (1, 1024, 1024), (8, 1024, 0), (8, 1024, 1024)]:
        batch = make_extend(bs, lq, lp)
        fn, o = run_extend(batch)
        ms = bench_ms(fn)
        ref_fn = sdpa_extend_fn(batch, bs, lq, lp)
        ref_ms = bench_ms(ref_fn)
        ref = ref_fn().transpose(1, 2).reshape(bs * lq, H, D)
        err = ((o.float() - ref.float()).norm() / ref.float().norm()).item()
        fl = extend_flops(bs, lq, lp)
        print(f"{bs:>3} {lq:>5} {lp:>6} {ms:>10.4f} {fl / ms / 1e9:>8.1f} {ref_ms:>9.4f} {fl / ref_ms / 1e9:>8.1f} "
              f"{ref_ms / ms:>10.2f}x   (rel err vs sdpa {err:.1e})")
        rows.append(dict(kind="extend", bs=bs, lq=lq, lp=lp, ms=ms, tflops=fl / ms / 1e9, sdpa_ms=ref_ms,
                         rel_err=err))


# ======== 扫参 / tuning sweep ========


def bench_splits(copy_gbs: float, rows: list):
    """小批量时 split-KV 的作用：固定段数 vs get_num_kv_splits 自动选择。
    What split-KV buys at small batch: fixed split counts vs the automatic choice."""
    fixed = (1, 2, 4, 8, 16)
    print("\n## decode split-KV at small batch (ms; GB/s of the best in brackets)")
    print(f"{'bs':>4} {'seq':>6} " + " ".join(f"{'s=' + str(s):>8}" for s in fixed) + f" {'auto':>14}")
    for bs, seq in [(1, 4096), (1, 16384), (8, 4096), (8, 16384), (32, 4096), (32, 16384)]:
        batch = make_decode(bs, seq)
        times = [bench_ms(run_decode(batch, splits=s)[0]) for s in fixed]
        fn, _, ns = run_decode(batch)
        auto_ms = bench_ms(fn)
        best = min(times + [auto_ms])
        print(f"{bs:>4} {seq:>6} " + " ".join(f"{t:>8.4f}" for t in times)
              + f" {auto_ms:>8.4f} (s={int(ns[0])})  [{decode_bytes(bs, seq) / best / 1e6:.0f} GB/s]")
        rows.append(dict(kind="splits", bs=bs, seq=seq, fixed=dict(zip(fixed, times)), auto_ms=auto_ms,
                         auto_splits=int(ns[0])))


def tune(rows: list):
    print("\n## tuning sweep: decode (ms; best first)")
    for bs, seq in [(64, 2048), (256, 4096)]:
        batch = make_decode(bs, seq)
        fn_ref, o_ref, _ = run_decode(batch)
        fn_ref()
        results = []
        for bn, nw, ns in itertools.product((64, 128), (4, 8), (2, 3)):
            cfg = dict(BLOCK_N=bn, num_warps=nw, num_stages=ns)
            try:
                fn, o, _ = run_decode(batch, config=cfg)
                fn()
                ok = torch.allclose(o.float(), o_ref.float(), atol=2e-2, rtol=2e-2)
                results.append((bench_ms(fn), cfg, ok))
            except Exception as e:  # 共享内存不够等 / e.g. out of shared memory
                results.append((float("inf"), cfg, repr(e)[:60]))
        results.sort(key=lambda r: r[0])
        for ms, cfg, ok in results[:4]:
            gbs = decode_bytes(bs, seq) / ms / 1e6
            print(f"  bs {bs:>3} seq {seq:>5}  {ms:.4f} ms {gbs:>6.0f} GB/s  {cfg} ok={ok}")
        rows.append(dict(kind="tune_decode", bs=bs, seq=seq, results=[(r[0], r[1], str(r[2])) for r in results]))
        del batch
        torch.cuda.empty_cache()

    print("\n## tuning sweep: extend (ms; best first)")
    for bs, lq, lp in [(1, 1024, 1024), (8, 1024, 0)]:
        batch = make_extend(bs, lq, lp)
        fn_ref, o_ref = run_extend(batch)
        fn_ref()
        results = []
        for bm, bn, nw, ns in itertools.product((64, 128), (32, 64, 128), (4, 8), (2, 3)):
            if bm % bn:
                continue  # 内核要求 BLOCK_M 是 BLOCK_N 的倍数 / the kernel needs BLOCK_N | BLOCK_M
            cfg = dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=nw, num_stages=ns)
            try:
                fn, o = run_extend(batch, config=cfg)
                fn()
                ok = torch.allclose(o.float(), o_ref.float(), atol=2e-2, rtol=2e-2)
                results.append((bench_ms(fn), cfg, ok))
            except Exception as e:
                results.append((float("inf"), cfg, repr(e)[:60]))
        results.sort(key=lambda r: r[0])
        fl = extend_flops(bs, lq, lp)
        for ms, cfg, ok in results[:6]:
            print(f"  bs {bs} new {lq} prefix {lp}  {ms:.4f} ms {fl / ms / 1e9:6.1f} TFLOP/s  {cfg} ok={ok}")
        rows.append(dict(kind="tune_extend", bs=bs, lq=lq, lp=lp, results=[(r[0], r[1], str(r[2])) for r in results]))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tune", action="store_true", help="also sweep block sizes / warps / stages / splits")
    ap.add_argument("--json", default=None, help="write all numbers to this file")
    ap.add_argument("--sections", default="decode,splits,extend,shared",
                    help="逗号分隔 / comma-separated: decode, splits, extend, shared, mixed, cascade")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    torch.manual_seed(0)
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}")
    copy_gbs = copy_bandwidth()
    print(f"device-to-device copy: {copy_gbs:.0f} GB/s (read + write)")
    rows = [dict(kind="copy", gbs=copy_gbs)]
    if "decode" in sections:
        bench_decode(copy_gbs, rows)
    if "splits" in sections:
        bench_splits(copy_gbs, rows)
    if "shared" in sections:
        bench_shared_prefix(copy_gbs, rows)
    if "mixed" in sections:
        bench_mixed(copy_gbs, rows)
    if "cascade" in sections:
        bench_cascade_parts(copy_gbs, rows)
    if "extend" in sections:
        bench_extend(rows)
    if args.tune:
        tune(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)


if __name__ == "__main__":
    main()
