# ================================================================================
# 📈 输出 token 的对数概率（logprobs）
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   对要求 logprob 的请求（return_logprob=True），在采样那一步算出：抽中 token 的 logprob，
#   以及概率最高的 top_logprobs_num 个候选 (logprob, token_id)。不要求的请求一点额外开销都没有。
#   For requests that ask (return_logprob=True), compute at the sampling step the chosen token's
#   logprob and the top_logprobs_num best (logprob, token_id) candidates. Others pay nothing.
#
# 【生活比喻】Metaphor
#   决策轮盘转动之前先拍一张照片：每一格原来有多大。轮盘之后被温度、惩罚改成什么样，照片里都没有。
#   A photo of the roulette wheel taken before anyone reshapes it: the slices as the model drew them,
#   before temperature or penalties touch the wheel.
#
# 【核心架构】Architecture
#   Scheduler.step()
#     logits [bs, V] ──select_logprob_rows──► (rows, log_softmax [k, V])   ← 采样之前 / before sampling
#     Sampler(logits) ──► next_ids [bs]
#     gather_logprobs(rows, logprobs, next_ids, reqs) ──► 每行 (token_lp, top) 或 None
#                                        └─► Req.output_token_logprobs / output_top_logprobs
#                                            └─► BatchTokenIDOut → 反分词进程 → TokenizerManager
#
# 【工作流程】Workflow
#   1. 选出要 logprob 的行 rows（k 行）；一个都没有就直接返回 None（零开销）。
#   2. log_softmax(原始 logits[rows])：**采样之前**算，所以与温度、惩罚、top-k/p 截断无关。
#   3. 采样之后：gather 出抽中 token 的 logprob，topk 取前 K 个（K = 这批里最大的 top_logprobs_num），
#      一次 .tolist() 拷回主机，再按每个请求自己的 K 截短。
#
# 【关键概念】Key Concepts
#   - logprob_i = logits_i − logsumexp(logits)：模型**原始**分布的对数概率（SGLang 的默认语义）。
#     温度为 2、top_k=3 抽样时，返回的仍是原始分布下的值；所以贪心时抽中 token 的 logprob 等于
#     top-1 的 logprob。The model's raw distribution, as SGLang returns by default: temperature,
#     penalties and truncation do not change it.
#   - 形状沿用 SGLang：output_token_logprobs = [(logprob, token_id), ...]，
#     output_top_logprobs = [[(logprob, token_id) × K], ...]（每个输出 token 一项）。
#   - 开销：k 行的 log_softmax O(k·V) + topk；只在这批里有人要时多一次设备→主机拷贝（k·(1+2K) 个数）。
#     Cost only when someone in the batch asks: O(k·V) plus one small device-to-host copy.
#   - 上限 top_logprobs_num ≤ 20（OpenAI 的上限，MAX_TOP_LOGPROBS_NUM）。
#
# 【使用方式】Usage
#   >>> out = engine.generate("床前明月光", {"max_new_tokens": 4, "temperature": 0},
#   ...                       return_logprob=True, top_logprobs_num=3)
#   >>> out["meta_info"]["output_token_logprobs"]   # [(-0.12, 1234), ...]
#   >>> out["meta_info"]["output_top_logprobs"]     # [[(-0.12, 1234), (-2.5, 88), (-3.1, 7)], ...]
#
# 【对应章节】Chapter: docs/zh/11-advanced.md
# ================================================================================
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

MAX_TOP_LOGPROBS_NUM = 20  # OpenAI 的 top_logprobs 上限 / OpenAI's limit for top_logprobs

TokenLogprob = Tuple[float, int]  # (logprob, token_id)


def check_logprob_args(return_logprob, top_logprobs_num) -> None:
    """校验两个参数（错误信息写出参数名）。Validate the two arguments; the message names them."""
    if not isinstance(return_logprob, bool):
        raise ValueError(f"return_logprob must be a boolean, got {return_logprob!r}")
    if isinstance(top_logprobs_num, bool) or not isinstance(top_logprobs_num, int):
        raise ValueError(f"top_logprobs_num must be an integer, got {top_logprobs_num!r}")
    if not 0 <= top_logprobs_num <= MAX_TOP_LOGPROBS_NUM:
        raise ValueError(f"top_logprobs_num must be in [0, {MAX_TOP_LOGPROBS_NUM}], got {top_logprobs_num}")
    if top_logprobs_num and not return_logprob:
        raise ValueError("top_logprobs_num needs return_logprob=True")


def select_logprob_rows(logits: torch.Tensor, reqs: Sequence) -> Optional[Tuple[List[int], torch.Tensor]]:
    """采样之前：要 logprob 的行及其 log_softmax。Before sampling: the rows that ask, and their log_softmax.

    logits: [bs, V] raw model output. Returns (rows, logprobs [k, V] float32), or None when no
    request in the batch asks (the common case: nothing is computed).
    """
    # 分块 prefill 的中间块不产生 token，它的 logits 不用。A middle chunk yields no token: skip it.
    rows = [i for i, r in enumerate(reqs) if r.return_logprob and not r.is_chunked]
    if not rows:
        return None
    # logits[rows] 是一份拷贝：之后采样器怎么改 logits 都影响不到它。A copy: the sampler cannot touch it.
    return rows, torch.log_softmax(logits[rows].float(), dim=-1)


def gather_logprobs(selected: Optional[Tuple[List[int], torch.Tensor]], next_ids: torch.Tensor,
                    reqs: Sequence) -> List[Optional[Tuple[TokenLogprob, List[TokenLogprob]]]]:
    """采样之后：每行 (抽中 token 的 (logprob, id), top-K 列表)，不要的行为 None。

    After sampling: per batch row, ((logprob, id) of the chosen token, the top-K list), or None
    for rows that did not ask. next_ids: [bs] int64 (any device).
    """
    result: List[Optional[Tuple[TokenLogprob, List[TokenLogprob]]]] = [None] * len(reqs)
    if selected is None:
        return result
    rows, logprobs = selected  # logprobs: [k, V]
    chosen_ids = next_ids[rows].to(logprobs.device)  # [k]
    chosen = logprobs.gather(1, chosen_ids.unsqueeze(1)).squeeze(1)  # [k]
    k_max = max(reqs[i].top_logprobs_num for i in rows)
    top_vals, top_ids = logprobs.topk(k_max, dim=-1) if k_max else (logprobs[:, :0], logprobs[:, :0].long())
    # 拼成一张 float64 表，一次拷回主机（token id < 2^53，在 float64 里是精确的）。
    # One float64 table, one copy to the host (token ids below 2^53 are exact in float64).
    parts = [chosen.unsqueeze(1), chosen_ids.unsqueeze(1), top_vals, top_ids]
    table = torch.cat([t.double() for t in parts], dim=1).tolist()  # [k, 2 + 2·k_max]
    for j, i in enumerate(rows):
        row, k = table[j], reqs[i].top_logprobs_num
        top = [(row[2 + t], int(row[2 + k_max + t])) for t in range(k)]
        result[i] = ((row[0], int(row[1])), top)
    return result
