# ================================================================================
# 🔤 分词管理（TokenizerManager 的核心：规范化 + 分词 + 校验）
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   把用户的一次调用（一段文字、一批文字或 token ids，加上采样参数）变成一个个
#   TokenizedGenerateReqInput：展开批量和 n、分词、校验参数。离线 Engine 与 HTTP 服务器共用这段逻辑，
#   所以两边对坏输入的报错完全一致。
#   Turns one user call (a text, a batch, or token ids, plus sampling params) into
#   TokenizedGenerateReqInput records: expands batches and n, tokenizes, validates. The offline
#   Engine and the HTTP server share it, so both reject bad input with the same words.
#
# 【生活比喻】Metaphor
#   前台接待：把客人的口头点单写成厨房看得懂的标准单，写不清楚的当场问回去。
#   The front desk: turns a spoken order into the kitchen's standard slip, and asks back when unclear.
#
# 【核心架构】Architecture
#   GenerateReqInput ──normalize_requests──► List[TokenizedGenerateReqInput] ──► Scheduler
#        text | [text] | input_ids | [[ids]]      （每个 prompt × n 个 / each prompt × n）
#
# 【工作流程】Workflow
#   1. 判断单个还是批量；text 与 input_ids 二选一。Single or batch; text xor input_ids.
#   2. SamplingParams.from_dict + verify：未知字段、越界值 → ValueError（写明字段名）。
#   3. 分词（add_special_tokens=True，与 HF tokenizer(text) 一致）。
#   4. 检查长度：空 prompt、超过上下文 → ValueError。
#
# 【关键概念】Key Concepts
#   - n > 1（并行采样）：同一 prompt 生成 n 个请求，rid 为 "<rid>-<i>"；它们共享前缀缓存。
#     n > 1 makes n requests of one prompt; they share the prompt through the prefix cache.
#
# 【使用方式】Usage
#   >>> reqs = normalize_requests(tok, GenerateReqInput(text="你好", sampling_params={"n": 2}),
#   ...                           vocab_size=6000, context_len=1024)
#
# 【对应章节】Chapter: docs/zh/05-tokenization.md
# ================================================================================
from __future__ import annotations

from typing import List, Optional, Tuple

from minisgl.io_struct import GenerateReqInput, TokenizedGenerateReqInput, new_rid
from minisgl.sampling.sampling_params import SamplingParams


def _as_batch(req: GenerateReqInput) -> Tuple[bool, list]:
    if (req.text is None) == (req.input_ids is None):
        raise ValueError("exactly one of `text` (prompt) and `input_ids` must be given")
    if req.text is not None:
        if isinstance(req.text, str):
            return False, [req.text]
        if isinstance(req.text, list) and req.text and all(isinstance(t, str) for t in req.text):
            return True, list(req.text)
        raise ValueError("text must be a string or a non-empty list of strings")
    ids = req.input_ids
    if isinstance(ids, list) and ids and all(isinstance(x, list) for x in ids):
        return True, [list(x) for x in ids]
    if isinstance(ids, list):
        return False, [list(ids)]
    raise ValueError("input_ids must be a list of integers or a list of such lists")


def normalize_requests(
    tokenizer, req: GenerateReqInput, vocab_size: int, context_len: int
) -> Tuple[bool, List[TokenizedGenerateReqInput], List[int]]:
    """规范化、分词并校验一次调用。Normalize, tokenize and validate one call.

    Returns (is_batch, requests, prompt_index of each request). Raises ValueError naming the problem.
    """
    is_batch, items = _as_batch(req)
    params_list = req.sampling_params if isinstance(req.sampling_params, list) else [req.sampling_params] * len(items)
    if len(params_list) != len(items):
        raise ValueError(f"got {len(params_list)} sampling_params for {len(items)} prompts")
    rids = req.rid if isinstance(req.rid, list) else [req.rid] * len(items)
    if len(rids) != len(items):
        raise ValueError(f"got {len(rids)} rids for {len(items)} prompts")
    out: List[TokenizedGenerateReqInput] = []
    index: List[int] = []
    for i, (item, p, rid) in enumerate(zip(items, params_list, rids)):
        where = f"prompt {i}: " if is_batch else ""
        try:
            params = SamplingParams.from_dict(p).verify(vocab_size)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}{e}") from None
        if isinstance(item, str):
            text, ids = item, tokenizer.encode(item)
        else:
            text, ids = None, item
            if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
                raise ValueError(f"{where}input_ids must be integers")
            bad = [t for t in ids if not 0 <= t < vocab_size]
            if bad:
                raise ValueError(f"{where}token id {bad[0]} is outside the vocabulary [0, {vocab_size})")
        if len(ids) == 0:
            raise ValueError(f"{where}the prompt is empty")
        if len(ids) >= context_len:
            raise ValueError(f"{where}the prompt has {len(ids)} tokens, but the context length is {context_len}")
        base = rid or new_rid()
        for j in range(params.n):
            one = SamplingParams.from_dict(params)
            one.n = 1
            if params.seed is not None and params.n > 1:
                one.seed = params.seed + j  # n 个样本各不相同但可复现 / distinct yet reproducible
            out.append(TokenizedGenerateReqInput(base if params.n == 1 else f"{base}-{j}", text, ids, one, req.stream))
            index.append(i)
    return is_batch or (len(out) > 1), out, index
