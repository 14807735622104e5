# ================================================================================
# 🧍 请求对象（Req）与结束原因（finish reasons）
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   Req 是调度器眼中的一个请求：原始 token、已生成 token、它在 KV 池里的位置（req_pool_idx、
#   kv_len）、命中的前缀（prefix_indices、last_node）、本轮要算的 token（fill_ids）和结束原因。
#   A Req is one request as the scheduler sees it: prompt and output ids, where its KV lives
#   (req_pool_idx, kv_len), the matched prefix (prefix_indices, last_node), the tokens of this
#   round (fill_ids), and why it finished.
#
# 【生活比喻】Metaphor
#   领班手里的一张客人卡片：几位、点了什么、坐在哪张桌、上到第几道菜、为什么离开。
#   The host's card for one party: what they ordered, their table, which course, why they left.
#
# 【核心架构】Architecture
#   Req
#    ├─ origin_input_ids + output_ids = token_ids（全部 token / all tokens）
#    ├─ fill_ids = token_ids 中本轮要进入模型的前缀（分块时被截短）/ this round's target (cut when chunked)
#    ├─ prefix_indices / last_node：RadixCache 命中的部分（已锁）/ the matched, locked prefix
#    ├─ req_pool_idx, kv_len：req_to_token 的行与已写入 KV 的 token 数
#    └─ finished_reason: FINISH_MATCHED_TOKEN | FINISH_MATCHED_STR | FINISH_LENGTH | FINISH_ABORT
#
# 【工作流程】Workflow
#   1. init_next_round_input(): 匹配前缀，算出 extend_input_len。Match the prefix, count new tokens.
#   2. 每生成一个 token：check_finished() 依次检查长度、语法是否走完、EOS/stop_token_ids、stop 字符串。
#      After each token: length, then a terminated grammar, then EOS / stop ids, then stop strings.
#
# 【关键概念】Key Concepts
#   - 最后一个生成的 token 还没有 KV（它还没进过模型），所以 kv_len = len(token_ids) - 1（decode 中）。
#     The newest token has no KV yet: it has not been through the model.
#   - 至少留 1 个 token 给 extend：需要它的 logits 来采样下一个 token。
#     At least one token is always extended: its logits give the next token.
#
# 【使用方式】Usage
#   >>> req = Req("r1", [1, 2, 3], SamplingParams(max_new_tokens=8), eos_token_ids={2})
#
# 【对应章节】Chapter: docs/zh/06-scheduling.md
# ================================================================================
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Set, Tuple

import torch

from minisgl.sampling.sampling_params import SamplingParams


class BaseFinishReason:
    def to_json(self) -> Dict[str, Any]:
        raise NotImplementedError


class FINISH_MATCHED_TOKEN(BaseFinishReason):
    def __init__(self, matched: int):
        self.matched = matched

    def to_json(self):
        return {"type": "stop", "matched": self.matched}


class FINISH_MATCHED_STR(BaseFinishReason):
    def __init__(self, matched: str):
        self.matched = matched

    def to_json(self):
        return {"type": "stop", "matched": self.matched}


class FINISH_LENGTH(BaseFinishReason):
    def __init__(self, length: int):
        self.length = length

    def to_json(self):
        return {"type": "length", "length": self.length}


class FINISH_ABORT(BaseFinishReason):
    def __init__(self, message: str = "aborted", status_code: Optional[int] = None):
        self.message = message
        # 输入的错（如 schema 编译不了）带 400，HTTP 层据此回错误码。The input's fault carries a 400.
        self.status_code = status_code

    def to_json(self):
        out = {"type": "abort", "message": self.message}
        if self.status_code is not None:
            out["status_code"] = self.status_code
        return out


class Req:
    """调度器里的一个请求（见文件头）。One request inside the scheduler; see the file header."""

    def __init__(
        self,
        rid: str,
        origin_input_ids: List[int],
        sampling_params: SamplingParams,
        eos_token_ids: Optional[Set[int]] = None,
        origin_input_text: Optional[str] = None,
        stream: bool = False,
        lora_id: Optional[str] = None,
    ):
        self.rid = rid
        self.origin_input_text = origin_input_text
        self.origin_input_ids: List[int] = list(origin_input_ids)
        self.output_ids: List[int] = []
        self.sampling_params = sampling_params
        self.eos_token_ids: Set[int] = set(eos_token_ids or ())
        self.stream = stream
        # 每个带 seed 的请求有自己的随机数发生器。A seeded request owns its generator.
        self.generator: Optional[torch.Generator] = None
        if sampling_params.seed is not None:
            self.generator = torch.Generator().manual_seed(sampling_params.seed)
        # 结构化输出的语法匹配器（minisgl/constrained/，第 11 章）；编译好之前为 None。
        # The structured-output matcher (BaseGrammarObject, chapter 11); None until compiled.
        self.grammar: Any = None
        # 多 LoRA：适配器名（None = 基座）；也是前缀缓存的命名空间（不同适配器的 K/V 不同）。
        # Multi-LoRA: the adapter name (None = the base model), also the prefix cache's namespace.
        self.lora_id = lora_id

        # ---- 内存 / memory ----
        self.req_pool_idx: Optional[int] = None
        self.kv_len = 0  # 已有（或已排进设备队列的）KV 的 token 数 / tokens whose KV is in the pool (or queued)
        self.last_loc = -1  # 位置 kv_len-1 的槽位，主机上记着（decode 续页用）/ slot of position kv_len-1, on the host
        self.prefix_indices: torch.Tensor = torch.empty(0, dtype=torch.int64)
        # 拿到 req_to_token 行时匹配到的前缀：(最后一个槽位, 长度)；decode 时按它分组读共享前缀
        # （forward_batch.plan_prefix_groups）。The prefix matched when the row was given:
        # (its last slot, its length); decode groups requests by it (cascade attention).
        self.shared_prefix: Optional[Tuple[int, int]] = None
        self.last_node: Any = None
        # ---- 本轮 / this round ----
        self.fill_ids: List[int] = []
        self.extend_input_len = 0
        self.is_chunked = False  # 还有后续块 / more chunks follow
        self.is_retracted = False
        # ---- 结果与统计 / results and stats ----
        self.finished_reason: Optional[BaseFinishReason] = None
        self.to_abort: Optional[str] = None
        self.cached_tokens: Optional[int] = None
        self.created_time = time.perf_counter()
        self.first_token_time: Optional[float] = None
        # ---- logprobs（只有 return_logprob 的请求才填；与 output_ids 一一对应）----
        # ---- logprobs (filled only when return_logprob; one entry per output id) ----
        self.return_logprob = False
        self.top_logprobs_num = 0
        self.output_token_logprobs: List[Tuple[float, int]] = []  # (logprob, token_id)
        self.output_top_logprobs: List[List[Tuple[float, int]]] = []

    @property
    def token_ids(self) -> List[int]:
        return self.origin_input_ids + self.output_ids

    def finished(self) -> bool:
        return self.finished_reason is not None

    def init_next_round_input(self, tree_cache) -> None:
        """匹配最长已缓存前缀，准备本轮输入。Match the longest cached prefix; prepare this round.

        At most len-1 tokens may come from the cache: the last one must go through the model.
        """
        self.fill_ids = self.token_ids
        self.prefix_indices, self.last_node = tree_cache.match_prefix(self.fill_ids[:-1], namespace=self.lora_id)
        self.extend_input_len = len(self.fill_ids) - len(self.prefix_indices)

    def check_finished(self, tokenizer=None) -> None:
        """检查是否该结束（顺序与 SGLang 相同）。Decide whether to stop (same order as SGLang)."""
        if self.finished_reason is not None:
            return
        p = self.sampling_params
        if self.to_abort is not None:
            self.finished_reason = FINISH_ABORT(self.to_abort)
            return
        if len(self.output_ids) >= p.max_new_tokens:
            self.finished_reason = FINISH_LENGTH(p.max_new_tokens)
            return
        if not self.output_ids:
            return
        if self.grammar is not None and self.grammar.is_terminated():
            # 语法走完（已接受 EOS）：正常结束，即使 ignore_eos。The grammar is done: a normal stop.
            self.finished_reason = FINISH_MATCHED_TOKEN(self.output_ids[-1])
            return
        last = self.output_ids[-1]
        if (not p.ignore_eos and last in self.eos_token_ids) or last in (p.stop_token_ids or ()):
            self.finished_reason = FINISH_MATCHED_TOKEN(last)
            return
        stops = p.stop_strs
        if stops and tokenizer is not None and len(self.output_ids) >= p.min_new_tokens:
            # 只解码末尾几个 token：stop 串只可能在最新的文字里出现。Decode just the tail.
            window = 4 * max(len(s) for s in stops) + 4
            tail = tokenizer.decode(self.output_ids[-window:], skip_special_tokens=p.skip_special_tokens)
            for s in stops:
                if s in tail:
                    self.finished_reason = FINISH_MATCHED_STR(s)
                    return

    def __repr__(self) -> str:
        return (f"Req(rid={self.rid[:8]}, input={len(self.origin_input_ids)}, output={len(self.output_ids)}, "
                f"kv_len={self.kv_len}, prefix={len(self.prefix_indices)}, "
                f"finished={self.finished_reason.to_json() if self.finished_reason else None})")
