"""融合算子（Triton）对照 torch 参考实现。Fused Triton ops against their torch references.

CPU: through the Triton interpreter (float32 and float16; the interpreter's bf16 is unreliable).
GPU: bf16 too, which must match the reference to within one bf16 rounding step.
"""
import pytest
import torch

pytest.importorskip("triton")
from minisgl.model import fused_ops  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEV == "cuda" else [])
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def close(a, b, dtype):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.allclose(a.float(), b.float(), rtol=TOL[dtype], atol=TOL[dtype]), (a.float() - b.float()).abs().max()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 96])  # 96：不是 2 的幂 / not a power of two
def test_rmsnorm(dtype, hidden):
    x = torch.randn(5, hidden, device=DEV).to(dtype)
    w = (1 + 0.3 * torch.randn(hidden, device=DEV)).to(dtype)
    close(fused_ops.rmsnorm(x, w, 1e-6, force_triton=True), fused_ops.rmsnorm_ref(x, w, 1e-6), dtype)
    res = torch.randn(5, hidden, device=DEV).to(dtype)
    out_ref, res_ref = fused_ops.rmsnorm_ref(x, w, 1e-6, res.clone())
    res_tri = res.clone()
    out_tri, res_out = fused_ops.rmsnorm(x, w, 1e-6, res_tri, force_triton=True)
    assert res_out.data_ptr() == res_tri.data_ptr()  # 原地更新 / updated in place
    close(out_tri, out_ref, dtype)
    close(res_tri, res_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [(4, 2), (6, 1)])
def test_rope(dtype, heads):
    from minisgl.model.layers import RotaryEmbedding

    H, Hkv = heads
    D, N = 16, 7
    rope = RotaryEmbedding(D, 64, 10000.0).to(DEV)
    # q/k 取自一个合并的 qkv 张量（非连续视图），就像模型里那样。Views into one qkv tensor, as in the model.
    qkv = torch.randn(N, (H + 2 * Hkv) * D, device=DEV).to(dtype)
    q = qkv[:, : H * D].view(N, H, D)
    k = qkv[:, H * D : (H + Hkv) * D].view(N, Hkv, D)
    pos = torch.tensor([0, 1, 5, 9, 33, 2, 63], device=DEV)
    q_ref, k_ref = fused_ops.rope_ref(q.clone(), k.clone(), pos, rope.cos_cache, rope.sin_cache)
    fused_ops.rope_(q, k, pos, rope.cos_cache, rope.sin_cache, force_triton=True)
    close(q, q_ref, dtype)
    close(k, k_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inter", [32, 80])
def test_silu_and_mul(dtype, inter):
    x = torch.randn(6, 2 * inter, device=DEV).to(dtype)
    close(fused_ops.silu_and_mul(x, force_triton=True), fused_ops.silu_and_mul_ref(x), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rmsnorm_over_strided_heads(dtype):
    """q/k norm 直接读 qkv 里的非连续视图 [N, H, D]。q/k norm reads the strided [N, H, D] view of qkv."""
    N, H, Hkv, D = 5, 4, 2, 16
    qkv = torch.randn(N, (H + 2 * Hkv) * D, device=DEV).to(dtype)
    k = qkv[:, H * D:(H + Hkv) * D].view(N, Hkv, D)
    assert not k.is_contiguous()
    w = (1 + 0.3 * torch.randn(D, device=DEV)).to(dtype)
    close(fused_ops.rmsnorm(k, w, 1e-6, force_triton=True), fused_ops.rmsnorm_ref(k, w, 1e-6), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [2, 3])  # 3·16 = 48：不是 2 的幂 / not a power of two
def test_store_kv(dtype, heads):
    N, D, slots = 6, 16, 20
    qkv = torch.randn(N, 3 * heads * D, device=DEV).to(dtype)  # k/v 是非连续视图 / strided views
    k = qkv[:, heads * D:2 * heads * D].view(N, heads, D)
    v = qkv[:, 2 * heads * D:].view(N, heads, D)
    loc = torch.tensor([3, 0, 19, 7, 8, 12], device=DEV)
    bufs = [torch.zeros(slots, heads, D, dtype=dtype, device=DEV) for _ in range(4)]
    fused_ops.store_kv_(bufs[0], bufs[1], loc, k, v, force_triton=True)
    bufs[2][loc], bufs[3][loc] = k, v
    assert torch.equal(bufs[0], bufs[2]) and torch.equal(bufs[1], bufs[3])
