# ================================================================================
# 🔍 参考注意力后端（纯 PyTorch，逐请求循环）
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   最直白的分页注意力：把新 token 的 K/V 写进 KV 池，然后对每个请求，按 req_to_token
#   取出它全部历史 K/V，做一次带因果掩码的 scaled-dot-product attention。
#   CPU 上的默认后端，也是 Triton 内核的正确性标准。
#   The plainest paged attention: store the new K/V, then for each request gather its whole
#   history through req_to_token and run causal scaled-dot-product attention. The default on
#   CPU and the yardstick for the Triton kernels.
#
# 【生活比喻】Metaphor
#   逐桌上菜：一次只服务一桌，最慢但最不会出错，用来检查“流水线”厨房（Triton）做得对不对。
#   Serving one table at a time: slowest, hardest to get wrong; used to check the fast kitchen.
#
# 【核心架构】Architecture
#   forward(q [N,H,D], k/v [N,Hkv,D])
#     ├─ token_to_kv_pool.set_kv_buffer(layer, out_cache_loc, k, v)
#     └─ for each request i:
#          slots = req_to_token[req_pool_idx_i, :seq_len_i]          # [L]
#          K, V  = k_buffer[slots], v_buffer[slots]                   # [L, Hkv, D]
#          o_i   = softmax(q_i Kᵀ · scale + causal_mask) V            # [ext_i, H, D]
#
# 【工作流程】Workflow
#   1. 写 KV。2. 逐请求 gather。3. GQA：KV 头重复 group 次对齐 query 头。4. SDPA。
#
# 【关键概念】Key Concepts
#   - 因果掩码带偏移：第 j 个新 token 的位置是 prefix_len + j，只能看 key 位置 <= prefix_len + j。
#     The causal mask is offset by the prefix: new token j sits at prefix_len + j.
#   - decode 是 extend 的特例：extend_len = 1、prefix_len = seq_len - 1，所以同一段代码。
#     Decode is extend with one new token, so the same loop serves both.
#   - 复杂度 O(Σ ext_i · L_i · H · D)，Python 循环 bs 次：适合学习与测试，不适合 GPU 上跑快。
#
# 【使用方式】Usage
#   >>> backend = TorchAttnBackend()
#   >>> o = backend.forward(q, k, v, layer_id, scaling, forward_batch)
#
# 【对应章节】Chapter: docs/zh/07-model-inference.md
# ================================================================================
from __future__ import annotations

import torch
import torch.nn.functional as F


class TorchAttnBackend:
    """参考实现（见文件头）。The reference backend; see the file header."""

    def init_forward_metadata(self, forward_batch) -> None:
        """逐请求循环不需要预先准备元数据。The per-request loop needs no metadata."""

    def forward(self, q, k, v, layer_id: int, scaling: float, forward_batch) -> torch.Tensor:
        pool = forward_batch.token_to_kv_pool
        pool.set_kv_buffer(layer_id, forward_batch.out_cache_loc, k, v)
        k_buf, v_buf = pool.k_buffer[layer_id], pool.v_buffer[layer_id]
        req_to_token = forward_batch.req_to_token_pool.req_to_token
        H, Hkv = q.shape[1], k.shape[1]
        o = torch.empty_like(q)
        start = 0
        for i in range(forward_batch.batch_size):
            ext, pre = forward_batch.extend_seq_lens[i], forward_batch.extend_prefix_lens[i]
            L = pre + ext
            slots = req_to_token[forward_batch.req_pool_indices[i], :L]  # [L]
            keys = k_buf[slots].to(q.dtype).transpose(0, 1)  # [Hkv, L, D]
            vals = v_buf[slots].to(q.dtype).transpose(0, 1)
            if H != Hkv:  # GQA：每个 KV 头服务 H/Hkv 个 query 头 / each KV head serves a group
                keys = keys.repeat_interleave(H // Hkv, dim=0)
                vals = vals.repeat_interleave(H // Hkv, dim=0)
            qi = q[start : start + ext].transpose(0, 1)  # [H, ext, D]
            if ext == 1:  # decode：能看全部历史，不需要掩码 / sees the whole history: no mask
                oi = F.scaled_dot_product_attention(qi, keys, vals, scale=scaling)
            elif pre == 0:  # 没有前缀：普通因果掩码 / no prefix: the plain causal mask
                oi = F.scaled_dot_product_attention(qi, keys, vals, is_causal=True, scale=scaling)
            else:
                # mask[j, t] = True 表示 query j 可以看 key t。True where query j may see key t.
                q_pos = torch.arange(pre, L, device=q.device).unsqueeze(1)  # [ext, 1]
                mask = torch.arange(L, device=q.device).unsqueeze(0) <= q_pos  # [ext, L]
                oi = F.scaled_dot_product_attention(qi, keys, vals, attn_mask=mask, scale=scaling)
            o[start : start + ext] = oi.transpose(0, 1)
            start += ext
        return o
