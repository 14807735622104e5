"""作业 decode_attention 的评分测试（由 `minisgl course grade decode_attention` 运行）。

Grading tests of the decode_attention assignment: the student's ``decode_attention_fwd`` (stage-1
loop and stage-2 merge rewritten) against the float32 torch reference of triton_ops/reference.py.
Without CUDA the kernels run under the Triton interpreter (TRITON_INTERPRET=1, set by the grader
before triton is imported), so the shapes stay tiny.
"""
import torch

from minisgl.course.grader import points

# 不需要整个引擎：只导入内核包，Swap 就能换掉它导出的名字。Only the kernel package is needed.
PRELOAD = ["minisgl.runner.attention.triton_ops"]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _batch(seq_lens, H, Hkv, D, page_size=1, seed=0, idx_dtype=torch.int32, q_scale=1.0):
    """随机的分页 KV 池和一批 decode 请求（槽位按页打乱，第 0 页是哑页）。A random paged batch."""
    gen = torch.Generator().manual_seed(seed)
    num_pages = sum(-(-n // page_size) for n in seq_lens) + 3
    k_buf = torch.randn(num_pages * page_size, Hkv, D, generator=gen)
    v_buf = torch.randn(num_pages * page_size, Hkv, D, generator=gen)
    q = torch.randn(len(seq_lens), H, D, generator=gen) * q_scale
    pages = (torch.randperm(num_pages - 1, generator=gen) + 1).tolist()
    parts = []
    for n in seq_lens:
        need = -(-n // page_size)
        mine, pages = pages[:need], pages[need:]
        parts.append(torch.tensor([p * page_size + o for p in mine for o in range(page_size)][:n], dtype=torch.int64))
    indptr = torch.zeros(len(seq_lens) + 1, dtype=torch.int32)
    indptr[1:] = torch.tensor(seq_lens).cumsum(0)
    indices = torch.cat(parts).to(idx_dtype)
    return [t.to(DEVICE) for t in (q, k_buf, v_buf, indptr, indices)]


def _check(ctx, seq_lens, H, Hkv, D, splits=None, max_splits=4, logit_cap=0.0, plant_last=False, **kw):
    q, k_buf, v_buf, indptr, indices = _batch(seq_lens, H, Hkv, D, **kw)
    if plant_last:  # 最后一个 token 的 K 对准 q：最大分数出现在最后一块 / the max score sits in the last block
        for b, n in enumerate(seq_lens):
            if n:
                k_buf[indices[int(indptr[b + 1]) - 1].long()] = q[b].view(Hkv, H // Hkv, D).mean(1) * 2
    bs = len(seq_lens)
    sm_scale = D ** -0.5
    o = torch.full_like(q, float("nan"))  # 没写到的元素会留下 NaN / unwritten elements stay NaN
    attn_logits = torch.full((bs, H, max_splits, D), float("nan"), device=DEVICE)
    attn_lse = torch.full((bs, H, max_splits), float("nan"), device=DEVICE)
    num_kv_splits = torch.tensor(splits or [1] * bs, dtype=torch.int32, device=DEVICE)
    ctx.student.decode_attention_fwd(q, k_buf, v_buf, o, indptr, indices, attn_logits, attn_lse, num_kv_splits,
                                     max_splits, sm_scale, logit_cap)
    from minisgl.runner.attention.triton_ops.reference import decode_attention_ref

    ref = torch.empty_like(q)
    decode_attention_ref(q, k_buf, v_buf, ref, indptr, indices, None, None, None, max_splits, sm_scale, logit_cap)
    assert not torch.isnan(o).any(), "some outputs were never written (they are still NaN)"
    err = (o - ref).abs().max().item()
    assert err < 1e-4, f"max |out - ref| = {err:.3g} (seq_lens {seq_lens}, H {H}, Hkv {Hkv}, D {D})"


@points(2)
def test_one_short_request(ctx):
    """一个请求、一块、一段（MHA）/ one request, one block, one split"""
    _check(ctx, [5], H=2, Hkv=2, D=16)


@points(3)
def test_several_blocks(ctx):
    """序列长于 BLOCK_N：在线 softmax 要正确重缩放 / longer than a block: the online softmax rescales"""
    _check(ctx, [40], H=2, Hkv=2, D=16, plant_last=True)
    _check(ctx, [33], H=1, Hkv=1, D=16, seed=1, q_scale=2.0, plant_last=True)


@points(2)
def test_batch_and_gqa(ctx):
    """一批请求 + GQA（多个 query 头共享一个 KV 头）/ a batch with grouped-query attention"""
    _check(ctx, [3, 17], H=4, Hkv=1, D=16)
    _check(ctx, [9, 1, 20], H=4, Hkv=2, D=16, seed=2)


@points(3)
def test_split_kv_merge(ctx):
    """多段 split-KV 的 log-sum-exp 合并，空段不能读 / merging splits by log-sum-exp; empty splits skipped"""
    _check(ctx, [50, 7], H=2, Hkv=1, D=16, splits=[3, 2], max_splits=4)
    _check(ctx, [64], H=2, Hkv=2, D=16, splits=[4], max_splits=4, seed=3)


@points(2)
def test_paged_scattered_slots(ctx):
    """页大小 4、槽位打乱、int64 下标 / page size 4, shuffled pages, int64 indices"""
    _check(ctx, [13, 6], H=2, Hkv=1, D=16, page_size=4, idx_dtype=torch.int64, splits=[2, 1], seed=4)


@points(1)
def test_empty_sequence(ctx):
    """长度为 0 的请求输出 0（不是 NaN）/ a zero-length request gives 0, not NaN"""
    _check(ctx, [0, 5], H=2, Hkv=2, D=16)


@points(1)
def test_logit_cap(ctx):
    """logit cap：s ← cap·tanh(s/cap) / the logit soft cap"""
    _check(ctx, [20], H=2, Hkv=2, D=16, logit_cap=5.0, q_scale=8.0)


@points(2)
def test_head_dim_not_power_of_two(ctx):
    """头维度 24（补齐到 32 并屏蔽）/ head dim 24 is padded to 32 and masked"""
    _check(ctx, [19, 4], H=2, Hkv=1, D=24, splits=[2, 1], seed=5)


@points(2)
def test_large_scores_stay_finite(ctx):
    """分数很大时不溢出（减去最大值）/ huge scores do not overflow (subtract the max)"""
    _check(ctx, [37], H=2, Hkv=2, D=16, q_scale=60.0, splits=[2], seed=6)
