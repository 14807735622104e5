# ================================================================================
# 🔗 融合算子（Triton）：RMSNorm(+残差)、RoPE、SiLU·mul
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   模型里最常见的三段“小运算”，各写成一个 Triton kernel：
#     1. rmsnorm(x, w[, residual])：可选先做残差加法（residual += x，原地），再归一化；
#     2. rope_(q, k, positions, cos, sin)：对 q、k 原地做旋转位置编码；
#     3. silu_and_mul(gate_up)：SiLU(gate) * up；
#     4. store_kv_(k_buf, v_buf, loc, k, v)：把新 token 的 K/V 一次写进 KV 池的槽位。
#   每个函数都有纯 torch 的参考实现（CPU 上用它），GPU 上走 Triton。
#   The three commonest small operations of the model, each one Triton kernel: RMSNorm with an
#   optional fused residual add (residual updated in place), in-place RoPE on q and k, and
#   SiLU(gate)·up, and the store of new K/V into the pool's slots. Each has a plain-torch reference used on CPU; on the GPU the kernels run.
#
# 【生活比喻】Metaphor
#   一次出门办完几件事：不融合时，每个小运算都要把整张表从显存搬进来再搬回去（出门六趟）；
#   融合后读一次、写一次（出门一趟）。
#   Running errands in one trip: unfused, every small op carries the whole tensor to and from
#   memory (six trips for one RMSNorm); fused, it is read once and written once.
#
# 【核心架构】Architecture
#   layers.RMSNorm.forward ──► rmsnorm()        ──x.is_cuda──► _rmsnorm_kernel   否则 / else torch
#   layers.RotaryEmbedding ──► rope_()          ──x.is_cuda──► _rope_kernel
#   layers.MLP             ──► silu_and_mul()   ──x.is_cuda──► _silu_mul_kernel
#   TokenToKVPool.set_kv_buffer ──► store_kv_() ──x.is_cuda──► _store_kv_kernel
#
# 【工作流程】Workflow
#   每个 kernel：一个 program 处理一行（一个 token）：读入 → float32 里计算 → 写回。
#   One program per row (token): load → compute in float32 → store.
#
# 【关键概念】Key Concepts
#   - 为什么快：Qwen3-0.6B 的 decode 一步原本约 2,000 个小 kernel（每个 1–5 µs，CUDA graph 里也省不掉），
#     RMSNorm 一个就是 pow/mean/rsqrt/mul/cast/mul 六个；融合后每层约 15 个 kernel。
#     Measured on an H100 (bench/profile_step.py): unfused, batch-1 decode spent 3.7 ms/step in ~2,000 kernels.
#   - 舍入与 HF 一致：HF 在 bf16 下每个 torch 运算后都舍入一次（例如 weight * x.to(bf16)），
#     kernel 在同样的位置 .to(dtype)，所以 bf16 结果也几乎逐位相同，float32 下完全一致。
#     Rounding follows HF: the kernels round to the storage dtype where HF's torch ops do.
#   - 残差融合（SGLang/vLLM 的写法）：residual ← residual + x；x ← RMSNorm(residual)，一次读写完成。
#   - 非连续视图：q/k norm 与 store_kv_ 直接按步长读 qkv 里的 q/k/v，不先拷成连续张量——每层省掉几次拷贝
#     （H200 上 bs 256 时，这些拷贝和两次 index_put_ 约占 GPU 时间的 12%，bench/profile_step.py --kernels）。
#     Strided views: q/k norm and store_kv_ read q/k/v inside qkv by strides, with no copy first.
#
# 【使用方式】Usage
#   >>> y = rmsnorm(x, weight, 1e-6)                  # x: [N, hidden]
#   >>> y, residual = rmsnorm(x, weight, 1e-6, residual)
#   >>> rope_(q, k, positions, cos_cache, sin_cache)   # q: [N, H, D], k: [N, Hkv, D]（原地 / in place）
#   >>> out = silu_and_mul(gate_up)                   # [N, 2I] → [N, I]
#   >>> store_kv_(k_buffer, v_buffer, loc, k, v)       # k, v: [N, Hkv, D] → 槽位 loc [N] / slots loc
#
# 【对应章节】Chapter: docs/zh/07-model-inference.md
# ================================================================================
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # CPU-only installs: the torch references are used
    HAS_TRITON = False


def _use_triton(x: torch.Tensor) -> bool:
    return HAS_TRITON and x.is_cuda


# ======== 参考实现（CPU，也是测试的标准）/ References (CPU, and the tests' yardstick) ========
def rmsnorm_ref(x, weight, eps, residual=None):
    if residual is not None:
        residual = x + residual  # 与 HF 相同：在存储 dtype 里相加 / added in the storage dtype, as HF
        x = residual
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    out = weight * h.to(dtype)
    return out if residual is None else (out, residual)


def rope_ref(q, k, positions, cos_cache, sin_cache):
    cos = cos_cache[positions].unsqueeze(1).to(q.dtype)  # [N, 1, D]
    sin = sin_cache[positions].unsqueeze(1).to(q.dtype)

    def rotate_half(x):
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([-x2, x1], dim=-1)

    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def silu_and_mul_ref(gate_up):
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


if HAS_TRITON:

    @triton.jit
    def _rmsnorm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, stride_xn, stride_xh, stride_r, stride_o, H, N, eps,
                        HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
        # 一个 program = 一行（一个 token 的 hidden 向量，或 q/k norm 时一个 token 的一个头）。
        # 按 (token, 头) 两个步长寻址：q/k 是合并的 qkv 张量里的非连续视图，不必先拷成连续的。
        # One program = one row (a token's hidden vector, or one head of a token for q/k norm),
        # addressed by (token, head) strides: q/k are strided views into qkv, read without a copy.
        row = tl.program_id(0)
        tok, head = row // H, row % H
        cols = tl.arange(0, BLOCK)
        mask = cols < N  # hidden 不是 2 的幂时，多出来的列不读不写 / padding columns
        x = tl.load(x_ptr + tok * stride_xn + head * stride_xh + cols, mask=mask, other=0.0)
        if HAS_RES:
            # residual ← x + residual（在存储 dtype 里舍入一次，与 HF 的 h + attn_out 相同）
            x = (x.to(tl.float32) + tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32))
            x = x.to(res_ptr.dtype.element_ty)
            tl.store(res_ptr + row * stride_r + cols, x, mask=mask)
        xf = x.to(tl.float32)
        var = tl.sum(xf * xf, axis=0) / N  # 均方 / mean square, in float32
        y = (xf * tl.rsqrt(var + eps)).to(x.dtype)  # HF: hidden.to(input_dtype)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0)
        out = (w.to(tl.float32) * y.to(tl.float32)).to(out_ptr.dtype.element_ty)  # HF: weight * hidden
        tl.store(out_ptr + row * stride_o + cols, out, mask=mask)

    @triton.jit
    def _store_kv_kernel(k_ptr, v_ptr, k_buf_ptr, v_buf_ptr, loc_ptr, stride_kn, stride_kh, stride_vn, stride_vh,
                         stride_buf, HKV, D: tl.constexpr, BLOCK: tl.constexpr):
        # 一个 program = 一个新 token：它所有 KV 头的 K 和 V 写进槽位 loc[n]（池里是连续的一行）。
        # One program = one new token: K and V of all its KV heads go to slot loc[n] (one contiguous pool row).
        n = tl.program_id(0)
        slot = tl.load(loc_ptr + n).to(tl.int64)
        i = tl.arange(0, BLOCK)
        mask = i < HKV * D
        h, d = i // D, i % D
        k = tl.load(k_ptr + n * stride_kn + h * stride_kh + d, mask=mask)
        v = tl.load(v_ptr + n * stride_vn + h * stride_vh + d, mask=mask)
        tl.store(k_buf_ptr + slot * stride_buf + i, k.to(k_buf_ptr.dtype.element_ty), mask=mask)
        tl.store(v_buf_ptr + slot * stride_buf + i, v.to(v_buf_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _rope_kernel(q_ptr, k_ptr, pos_ptr, cos_ptr, sin_ptr, stride_qn, stride_qh, stride_kn, stride_kh,
                     stride_cos, H, HKV, HALF: tl.constexpr, BLOCK_H: tl.constexpr):
        # 一个 program = 一个 token 的所有 q 头和 k 头。One program = all q and k heads of one token.
        n = tl.program_id(0)
        pos = tl.load(pos_ptr + n)
        d = tl.arange(0, HALF)  # 前半 x1 与后半 x2 配对旋转 / first half pairs with second half
        # cos/sin 表在 float32；按 HF 先转成 q 的 dtype。Tables are float32; cast like HF does.
        cos = tl.load(cos_ptr + pos * stride_cos + d).to(q_ptr.dtype.element_ty).to(tl.float32)
        sin = tl.load(sin_ptr + pos * stride_cos + d).to(q_ptr.dtype.element_ty).to(tl.float32)
        h = tl.arange(0, BLOCK_H)[:, None]
        for which in tl.static_range(2):  # 0: q，1: k
            ptr = q_ptr if which == 0 else k_ptr
            sn = stride_qn if which == 0 else stride_kn
            sh = stride_qh if which == 0 else stride_kh
            nh = H if which == 0 else HKV
            mask = h < nh
            base = ptr + n * sn + h * sh + d[None, :]
            x1 = tl.load(base, mask=mask, other=0.0)
            x2 = tl.load(base + HALF, mask=mask, other=0.0)
            dt = x1.dtype
            # out1 = x1·cos − x2·sin；out2 = x2·cos + x1·sin（每次乘法后舍入，与 HF 的逐个 torch 运算相同）
            a1 = (x1.to(tl.float32) * cos[None, :]).to(dt).to(tl.float32)
            b1 = (x2.to(tl.float32) * sin[None, :]).to(dt).to(tl.float32)
            a2 = (x2.to(tl.float32) * cos[None, :]).to(dt).to(tl.float32)
            b2 = (x1.to(tl.float32) * sin[None, :]).to(dt).to(tl.float32)
            tl.store(base, (a1 - b1).to(dt), mask=mask)
            tl.store(base + HALF, (a2 + b2).to(dt), mask=mask)

    @triton.jit
    def _silu_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, I, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        start = tl.program_id(1) * BLOCK
        cols = start + tl.arange(0, BLOCK)
        mask = cols < I
        gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
        up = tl.load(x_ptr + row * stride_x + I + cols, mask=mask, other=0.0)
        g = gate.to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(gate.dtype)  # HF: silu 在 bf16 里舍入 / rounded like F.silu
        tl.store(out_ptr + row * stride_o + cols, (act.to(tl.float32) * up.to(tl.float32)).to(gate.dtype), mask=mask)


# ======== 对外接口（自动选择实现）/ Public entry points (pick the implementation) ========
def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: Optional[torch.Tensor] = None,
            force_triton: bool = False):
    """RMSNorm，可选融合残差（residual 原地更新）。RMSNorm with an optional fused residual (updated in place).

    x: [N, hidden]. Returns out, or (out, residual) when residual is given.
    """
    if not (force_triton or _use_triton(x)):
        return rmsnorm_ref(x, weight, eps, residual)
    n, shape = x.shape[-1], x.shape
    assert x.stride(-1) == 1
    if x.dim() == 3 and residual is None:  # [N, H, D]：q/k norm，可以是非连续视图 / may be a strided view
        tokens, heads = x.shape[0], x.shape[1]
        stride_xn, stride_xh = x.stride(0), x.stride(1)
    else:
        x = x.reshape(-1, n)  # 2 维时不拷贝 / no copy for a 2-D row-major tensor
        tokens, heads, stride_xn, stride_xh = x.shape[0], 1, x.stride(0), 0
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    res2 = residual.view(-1, n) if residual is not None else out
    block = triton.next_power_of_2(n)
    # 短行（q/k norm 的 head_dim=128）一个 warp 就够；长行多几个 warp。One warp for short rows.
    warps = 1 if block <= 256 else (4 if block <= 2048 else 8)
    _rmsnorm_kernel[(tokens * heads,)](x, res2, weight, out, stride_xn, stride_xh, res2.stride(0), n, heads, n,
                                       eps, HAS_RES=residual is not None, BLOCK=block, num_warps=warps)
    out = out.view(shape)
    return out if residual is None else (out, residual)


def store_kv_(k_buffer: torch.Tensor, v_buffer: torch.Tensor, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              force_triton: bool = False) -> None:
    """把新 token 的 K/V（[N, Hkv, D]，可为非连续视图）写进池的槽位 loc [N]。

    Store the new tokens' K/V ([N, Hkv, D], strided views allowed) at pool slots loc [N]: one kernel
    for both, instead of two index_put_ calls (each of which first copies a strided v).
    """
    if not (force_triton or _use_triton(k)):
        k_buffer[loc] = k.to(k_buffer.dtype)
        v_buffer[loc] = v.to(v_buffer.dtype)
        return
    N, hkv, d = k.shape
    if N == 0:
        return
    assert k.stride(-1) == 1 and v.stride(-1) == 1 and k_buffer.is_contiguous() and v_buffer.is_contiguous()
    block = triton.next_power_of_2(hkv * d)
    _store_kv_kernel[(N,)](k, v, k_buffer, v_buffer, loc, k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                           k_buffer.stride(0), hkv, D=d, BLOCK=block, num_warps=4 if block >= 512 else 1)


def rope_(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_cache: torch.Tensor,
          sin_cache: torch.Tensor, force_triton: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """对 q [N,H,D]、k [N,Hkv,D] 做 RoPE（GPU 上原地）。RoPE on q and k (in place on the GPU)."""
    if not (force_triton or _use_triton(q)):
        return rope_ref(q, k, positions, cos_cache, sin_cache)
    N, H, D = q.shape
    assert q.stride(-1) == 1 and k.stride(-1) == 1 and cos_cache.is_contiguous()
    _rope_kernel[(N,)](q, k, positions, cos_cache, sin_cache, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                       cos_cache.stride(0), H, k.shape[1], HALF=D // 2,
                       BLOCK_H=triton.next_power_of_2(max(H, k.shape[1])), num_warps=4)
    return q, k


def silu_and_mul(gate_up: torch.Tensor, force_triton: bool = False) -> torch.Tensor:
    """[N, 2I] → SiLU(gate)·up [N, I]。"""
    if not (force_triton or _use_triton(gate_up)):
        return silu_and_mul_ref(gate_up)
    x = gate_up.reshape(-1, gate_up.shape[-1])
    inter = x.shape[-1] // 2
    out = torch.empty(x.shape[0], inter, dtype=x.dtype, device=x.device)
    block = min(1024, triton.next_power_of_2(inter))
    _silu_mul_kernel[(x.shape[0], triton.cdiv(inter, block))](x, out, x.stride(0), out.stride(0), inter, BLOCK=block)
    return out.view(*gate_up.shape[:-1], inter)
