"""共享前缀的 decode 注意力（cascade）：与普通 decode 的参考结果相同，且在引擎里真的被用到。

Cascade decode attention (minisgl/runner/attention/triton_ops/cascade_attention.py): the prefix
level + the suffix-only decode + the merge in stage 2 equal plain decode attention over the whole
sequence; plan_prefix_groups groups only what is really shared; inside the engine the Triton
backend runs it for requests that share a cached prefix, and greedy output equals HF.
CPU: tiny shapes under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
"""
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from minisgl.runner import forward_batch  # noqa: E402
from minisgl.runner.attention.triton_ops import decode_attention_fwd, decode_attention_ref  # noqa: E402
from minisgl.runner.attention.triton_ops import cascade_attention as cas_mod  # noqa: E402
from minisgl.runner.forward_batch import plan_prefix_groups  # noqa: E402

DEV = "cuda" if HAS_CUDA else "cpu"
HALF = torch.bfloat16 if HAS_CUDA else torch.float16  # 解释器不支持 bf16 / the interpreter lacks bf16
if not HAS_CUDA and type(cas_mod._prefix_stage_kernel).__name__ != "InterpretedFunction":
    pytest.skip("triton was imported before TRITON_INTERPRET=1 was set (see tests/conftest.py)",
                allow_module_level=True)


def test_plan_groups_only_real_sharing():
    a, b = (17, 300), (40, 300)  # 两段不同的前缀（最后槽位不同）/ two different prefixes
    plan = plan_prefix_groups([a, None, a, b, a, (17, 100), b], min_len=256)
    assert plan.members == [[0, 2, 4], [3, 6]] and plan.prefix_lens == [300, 300]
    assert plan_prefix_groups([a, b, None], min_len=256) is None  # 没有两人共享 / no pair shares
    assert plan_prefix_groups([(5, 100), (5, 100)], min_len=256) is None  # 太短 / too short
    assert plan_prefix_groups([(5, 100), (5, 100)], min_len=64).members == [[0, 1]]


def test_prefix_work_items_list_every_slice_once():
    assert cas_mod.prefix_work_items([2, 0, 1]) == [3, 0, 0, 0, 1, 2, 0]
    assert cas_mod.prefix_work_items([]) == [0]


@pytest.mark.parametrize("n_groups,programs", [(1, 33), (16, 33), (17, 33), (33, 33), (64, 33), (100, 33), (5, 1)])
def test_choose_prefix_splits_has_the_least_makespan(n_groups, programs):
    # 最忙的 program 做 ceil(n·k / P) 项、每项 1/k 个前缀加固定开销：选出的 k 不比 1..8 里任何一个差，打平取小的。
    # The busiest program does ceil(n·k / P) items of 1/k of a prefix plus a fixed cost: the choice is no
    # worse than any k in 1..8, and the smallest of equals.
    def cost(k):
        return -(-n_groups * k // programs) * (1 / k + cas_mod.PREFIX_ITEM_OVERHEAD)

    k = cas_mod.choose_prefix_splits(n_groups, programs, 8)
    assert cas_mod.choose_prefix_splits(16, 33, 8) == 2  # 实测最快的那个 / the one measured fastest
    assert all(cost(k) < cost(j) or (cost(k) == cost(j) and k <= j) for j in range(1, 9))


def _cascade_inputs(groups, prefix_slots, dev):
    """members / indptr 张量 + 每个请求的前缀长度。Metadata tensors and each request's prefix length."""
    members, group_indptr, prefix_indptr, prefix_indices = [], [0], [0], []
    for rows, g in zip(groups, range(len(groups))):
        members += rows
        group_indptr.append(len(members))
        prefix_indices += prefix_slots[g]
        prefix_indptr.append(len(prefix_indices))
    i32 = dict(dtype=torch.int32, device=dev)
    return (torch.tensor(group_indptr, **i32), torch.tensor(members, **i32), torch.tensor(prefix_indptr, **i32),
            torch.tensor(prefix_indices, dtype=torch.int64, device=dev))


# num_programs：None = 缺省（CPU 上每个 KV 头 1 个常驻 program，它领全部工作项）；2 = 轮流领；16 = 比工作项多。
# num_programs: None = the default (1 persistent program per KV head on the CPU, taking every item);
# 2 = items taken in turn; 16 = more programs than items.
@pytest.mark.parametrize("heads,kv_heads,num_splits,dtype,num_programs",
                         [(4, 2, 1, torch.float32, None), (4, 2, 3, torch.float32, None), (4, 2, 3, torch.float32, 2),
                          (2, 2, 2, torch.float32, 16), (4, 1, 2, torch.float32, None), (4, 2, 2, HALF, None),
                          (4, 1, 2, HALF, 3)])
def test_cascade_equals_plain_decode(heads, kv_heads, num_splits, dtype, num_programs):
    torch.manual_seed(0)
    D, pool = 32, 400
    k_buf = torch.randn(pool, kv_heads, D, device=DEV).to(dtype)
    v_buf = torch.randn(pool, kv_heads, D, device=DEV).to(dtype)
    perm = torch.randperm(pool).tolist()
    # 组 0：请求 0、2、3 共享 40 个槽位；组 1：请求 1、5 共享 23 个；请求 4 独自一人（不在组里）。
    # Group 0: requests 0, 2, 3 share 40 slots; group 1: requests 1 and 5 share 23; request 4 is alone.
    pre0, pre1 = perm[:40], perm[40:63]
    own = [perm[63:68], perm[68:69], perm[69:90], perm[90:93], perm[93:150], perm[150:160]]
    prefix_of = {0: pre0, 2: pre0, 3: pre0, 1: pre1, 5: pre1, 4: []}
    full = [prefix_of[b] + own[b] for b in range(6)]
    bs = len(full)
    q = torch.randn(bs, heads, D, device=DEV).to(dtype)
    scale = D ** -0.5

    def csr(lists):
        indptr = torch.tensor([0] + torch.tensor([len(x) for x in lists]).cumsum(0).tolist(), dtype=torch.int32,
                              device=DEV)
        return indptr, torch.tensor([s for x in lists for s in x], dtype=torch.int64, device=DEV)

    ref = decode_attention_ref(q, k_buf, v_buf, torch.empty_like(q), *csr(full), sm_scale=scale)

    group_indptr, members, prefix_indptr, prefix_indices = _cascade_inputs([[0, 2, 3], [1, 5]], [pre0, pre1], DEV)
    cas_len = torch.tensor([len(prefix_of[b]) for b in range(bs)], dtype=torch.int32, device=DEV)
    cas_out = torch.full((bs, heads, num_splits, D), float("nan"), device=DEV)
    cas_lse = torch.full((bs, heads, num_splits), float("nan"), device=DEV)
    # 再加一个空的填充组（CUDA graph 用固定组数时就是这样）/ plus an empty padding group, as under CUDA graphs
    group_indptr = torch.cat([group_indptr, group_indptr[-1:]])
    prefix_indptr = torch.cat([prefix_indptr, prefix_indptr[-1:]])
    group_splits = torch.tensor([num_splits, num_splits, 0], dtype=torch.int32, device=DEV)
    cas_splits = torch.tensor([num_splits if prefix_of[b] else 0 for b in range(bs)], dtype=torch.int32, device=DEV)
    work = torch.tensor(cas_mod.prefix_work_items(group_splits.tolist()), dtype=torch.int32, device=DEV)
    cfg = cas_mod.cascade_prefix_fwd(q, k_buf, v_buf, cas_out, cas_lse, group_indptr, members, prefix_indptr,
                                     prefix_indices, group_splits, work, max_members=3, sm_scale=scale,
                                     config={"num_programs": num_programs} if num_programs else None)
    assert torch.isnan(cas_lse[4]).all()  # 不在组里的请求没被写 / the lone request is never written
    max_splits = 4
    o = torch.full_like(q, float("nan"))
    suffix_indptr, suffix_indices = csr(own)
    decode_attention_fwd(q, k_buf, v_buf, o, suffix_indptr, suffix_indices,
                         torch.empty(bs, heads, max_splits, D, device=DEV), torch.empty(bs, heads, max_splits, device=DEV),
                         torch.tensor([1, 1, 2, 1, 3, 2], dtype=torch.int32, device=DEV), max_splits, scale,
                         prefix_partials=(cas_out, cas_lse, cas_len, cas_splits, cfg["BLOCK_N"]))
    tol = 2e-2 if dtype != torch.float32 else 1e-5
    err = (o.float() - ref.float()).norm() / ref.float().norm()
    assert err < tol, err
    # 不合并前缀时结果应当不同：证明前缀部分确实进了合并。Without the prefix partials the result differs.
    o2 = torch.empty_like(q)
    decode_attention_fwd(q, k_buf, v_buf, o2, suffix_indptr, suffix_indices,
                         torch.empty(bs, heads, max_splits, D, device=DEV), torch.empty(bs, heads, max_splits, device=DEV),
                         torch.ones(bs, dtype=torch.int32, device=DEV), max_splits, scale)
    assert (o2.float() - ref.float()).norm() / ref.float().norm() > 0.1
    assert torch.allclose(o2[4].float(), ref[4].float(), atol=tol * 10)  # 独自的请求不受影响 / the lone one matches


def test_engine_uses_cascade_and_matches_hf(checkpoint, monkeypatch):
    from minisgl import Engine
    from minisgl.runner.attention import triton_backend
    from tests.conftest import assert_pool_whole, hf_greedy

    monkeypatch.setattr(forward_batch, "CASCADE_MIN_PREFIX_LEN", 8)
    calls = []
    real = triton_backend.cascade_prefix_fwd

    def spy(q, *args, **kw):
        calls.append(int((args[4].diff() > 0).sum()))  # 真实的组数（不算填充组）/ real groups, padding left out
        return real(q, *args, **kw)

    monkeypatch.setattr(triton_backend, "cascade_prefix_fwd", spy)
    path = checkpoint("qwen3")
    engine = Engine(path, attention_backend="triton", disable_cuda_graph=True)
    system = [(11 * j) % 300 + 5 for j in range(20)]
    engine.generate(input_ids=system + [7], sampling_params={"max_new_tokens": 1})  # 前缀进缓存 / cache the prefix
    prompts = [system + [40 + i, 50 + i] for i in range(3)] + [[9, 8, 7, 6]]
    params = {"max_new_tokens": 5, "temperature": 0}
    outs = engine.generate(input_ids=prompts, sampling_params=params)
    assert calls and max(calls) == 1, calls  # 3 个请求共享前缀，成一组 / three requests form one group
    for ids, out in zip(prompts, outs):
        assert out["output_ids"] == hf_greedy(path, ids, 5)
    assert_pool_whole(engine)
    engine.shutdown()
    # 关掉 cascade：同样的输出，且从不调用前缀级 / disabled: same output, no prefix level
    n = len(calls)
    off = Engine(path, attention_backend="triton", disable_cuda_graph=True, disable_cascade_attention=True)
    off.generate(input_ids=system + [7], sampling_params={"max_new_tokens": 1})
    assert [o["output_ids"] for o in off.generate(input_ids=prompts, sampling_params=params)] == \
        [o["output_ids"] for o in outs]
    assert len(calls) == n
    off.shutdown()


@pytest.mark.skipif(not HAS_CUDA, reason="CUDA graphs need a GPU")
def test_cascade_cuda_graph_equals_plain(checkpoint, monkeypatch):
    """GPU：cascade 图的回放（组数据每步写进固定缓冲区）与不用 cascade 的输出逐 token 相同。

    The cascade CUDA graphs (groups written into fixed buffers before each replay) give the same
    tokens as plain decode, for a padded batch of 20 (graph 32) with three groups and loners."""
    from minisgl import Engine
    from minisgl.runner.attention import triton_backend

    monkeypatch.setattr(forward_batch, "CASCADE_MIN_PREFIX_LEN", 8)
    written = []
    real = triton_backend.TritonAttnBackend.write_cascade_plan

    def spy(self, fb):
        ok = real(self, fb)
        written.append(ok)
        return ok

    monkeypatch.setattr(triton_backend.TritonAttnBackend, "write_cascade_plan", spy)
    path = checkpoint("qwen3")
    systems = [[(13 * j + 7 * g) % 300 + 5 for j in range(24 + 8 * g)] for g in range(3)]
    prompts = [systems[i % 3] + [40 + i, 41 + i] for i in range(17)] + [[9, 8, 7, i] for i in range(3)]
    params = {"max_new_tokens": 8, "temperature": 0}
    outs = {}
    for name, kw in [("cascade", {}), ("plain", {"disable_cascade_attention": True})]:
        engine = Engine(path, dtype="float32", **kw)
        engine.generate(input_ids=[s + [1] for s in systems], sampling_params={"max_new_tokens": 1})
        outs[name] = [o["output_ids"] for o in engine.generate(input_ids=prompts, sampling_params=params)]
        if name == "cascade":
            assert engine.scheduler.model_runner.cuda_graph_runner.cascade_graphs
        engine.shutdown()
    assert any(written), "the cascade graphs were never replayed"
    assert outs["cascade"] == outs["plain"]


def test_backend_plan_cuts_pads_and_builds_lists():
    """主机写的 cas_meta 与设备建的前缀/后缀槽位列表，逐项对照手算。

    The host half (write_cascade_plan: pieces of ≤ cascade_max_members, padding groups) and the
    device half (init_cascade_device: one prefix list per piece, each request's suffix list)."""
    from types import SimpleNamespace

    from minisgl.runner.attention.triton_backend import TritonAttnBackend
    from minisgl.runner.forward_batch import ForwardBatch, ForwardMode, PrefixGroups

    bs, ctx, L = 24, 64, 10
    req_to_token = torch.zeros(bs + 1, ctx, dtype=torch.int32, device=DEV)
    pool = SimpleNamespace(req_to_token=req_to_token, size=bs + 1)
    mr = SimpleNamespace(model_config=SimpleNamespace(head_dim=16), device=DEV, num_heads=8, num_kv_heads=1,
                         req_to_token_pool=pool)
    be = TritonAttnBackend(mr)
    assert be.cascade_max_members == 8  # GROUP 8 → 64 // 8 个成员 / members per piece
    # 请求 i 用第 i+1 行；前 19 个共享同一段前缀（槽位 1000..1009），后面各自不同。
    # Request i uses row i + 1; the first 19 share one prefix (slots 1000..1009), the others own theirs.
    seq = [L + 3 + (i % 5) for i in range(bs)]
    for i in range(bs):
        req_to_token[i + 1, :seq[i]] = torch.arange(seq[i], dtype=torch.int32) + 100 * (i + 20)
        if i < 19:
            req_to_token[i + 1, :L] = torch.arange(1000, 1000 + L, dtype=torch.int32)
    fb = ForwardBatch(ForwardMode.DECODE, bs, torch.zeros(bs, dtype=torch.int64), torch.zeros(bs, dtype=torch.int64),
                      torch.zeros(bs, dtype=torch.int64), torch.arange(1, bs + 1, device=DEV),
                      torch.tensor(seq, device=DEV), seq,
                      [s - 1 for s in seq], [1] * bs)
    fb.prefix_groups = PrefixGroups([list(range(19)), [19]], [L, L])  # 单人组不会成块 / a lone member is no piece
    assert be.write_cascade_plan(fb)
    m, G = be.cas_meta, be.cascade_max_groups
    cas_len, cas_splits = be._cas_view(0, bs).tolist(), be._cas_view(1, bs).tolist()
    group_indptr = be._cas_view(3).tolist()
    assert cas_len == [L] * 19 + [0] * 5 and all(k >= 1 for k in cas_splits[:19]) and cas_splits[19:] == [0] * 5
    # 19 人切成 8 + 8 + 3，其余 G − 3 个是空的填充组 / 19 members cut into 8 + 8 + 3, then empty padding groups
    assert group_indptr[:4] == [0, 8, 16, 19] and group_indptr[4:] == [19] * (G - 3) and len(group_indptr) == G + 1
    assert be._cas_view(2, 19).tolist() == list(range(19))
    assert be._cas_view(5).tolist() == [L, L, L] + [0] * (G - 3)
    be.init_cascade_device(fb)
    md = fb.attn_metadata
    pre_ptr = md.cascade.prefix_indptr.tolist()
    assert pre_ptr[:4] == [0, L, 2 * L, 3 * L] and pre_ptr[-1] == 3 * L  # 每块一份前缀 / one prefix per piece
    assert md.cascade.prefix_indices[: 3 * L].tolist() == list(range(1000, 1000 + L)) * 3
    kv_ptr = md.kv_indptr.tolist()
    for i in range(bs):
        start = L if i < 19 else 0  # 组员只列后缀 / members list only their suffix
        got = md.kv_indices[kv_ptr[i] : kv_ptr[i + 1]].tolist()
        assert got == req_to_token[i + 1, start:seq[i]].tolist(), i
    # 只剩单人时不用 cascade / only singletons: plain decode
    fb.prefix_groups = PrefixGroups([[0], [5]], [L, L])
    assert not be.write_cascade_plan(fb)
