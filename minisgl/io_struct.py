# ================================================================================
# ✉️ 进程之间传递的消息（io_struct）
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   请求从 HTTP 进来、被分词、送进调度器、产出 token、再变回文字——每一段路上传递的
#   数据结构都定义在这里（名字与 SGLang 的 io_struct.py 相同）。都是可 pickle 的 dataclass。
#   Every message on the request path — HTTP input, tokenized request, token ids out, text out,
#   abort, flush — as plain picklable dataclasses named as in SGLang's io_struct.py.
#
# 【生活比喻】Metaphor
#   快递单：同一个包裹（请求 rid）在每个中转站换一张单子，但单号不变。
#   Shipping labels: each hub puts a new label on the parcel, the tracking number (rid) stays.
#
# 【核心架构】Architecture
#   GenerateReqInput ─TokenizerManager─► TokenizedGenerateReqInput ─ZMQ─► Scheduler
#   Scheduler ─ZMQ─► BatchTokenIDOut ─Detokenizer─► BatchStrOut ─ZMQ─► TokenizerManager
#   AbortReq / FlushCacheReq：控制消息 / control messages
#
# 【工作流程】Workflow
#   见 DESIGN.md §1 的请求路径图。See the request-path picture in DESIGN.md §1.
#
# 【关键概念】Key Concepts
#   - 批量消息（Batch*Out）一次带多个请求的结果：每个调度步只发一条，减少进程间开销。
#     One Batch*Out per scheduler step carries every request's progress: fewer IPC messages.
#   - finished_reason 是 dict：{"type": "stop", "matched": …} / {"type": "length", "length": N} /
#     {"type": "abort", "message": …}（DESIGN.md §3）。
#   - logprobs（第 11 章）随 token 走：Batch*Out 的每行带本步新增的 [(logprob, token_id)]，没要的请求为 None。
#     Logprobs travel with their tokens: each row carries this step's entries, None when not asked.
#
# 【使用方式】Usage
#   >>> GenerateReqInput(text="床前明月光", sampling_params={"max_new_tokens": 16})
#
# 【对应章节】Chapter: docs/zh/02-architecture.md
# ================================================================================
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

from minisgl.sampling.sampling_params import SamplingParams


PROMPT_TAIL_LEN = 5  # = detokenizer.INIT_INCREMENTAL_DETOKENIZATION_OFFSET


def new_rid() -> str:
    return uuid.uuid4().hex


@dataclass
class GenerateReqInput:
    """用户的一次生成请求（文本或 token ids，可以是一批）。One user generate call (text or ids, maybe a batch)."""

    text: Optional[Union[str, List[str]]] = None
    input_ids: Optional[Union[List[int], List[List[int]]]] = None
    sampling_params: Optional[Union[dict, List[dict]]] = None
    stream: bool = False
    rid: Optional[Union[str, List[str]]] = None
    # logprobs（SGLang 的名字；批量时可以每个 prompt 一个值）。Logprobs (SGLang's names; per prompt in a batch).
    return_logprob: Union[bool, List[bool]] = False
    top_logprobs_num: Union[int, List[int]] = 0
    # LoRA 适配器名（SGLang 的名字 lora_path；批量时可以每个 prompt 一个，None = 基座）。
    # The LoRA adapter's name (SGLang calls it lora_path; per prompt in a batch; None = the base model).
    lora_path: Optional[Union[str, List[Optional[str]]]] = None


@dataclass
class TokenizedGenerateReqInput:
    """分词后的单个请求，送往调度器。One tokenized request, on its way to the scheduler."""

    rid: str
    input_text: Optional[str]
    input_ids: List[int]
    sampling_params: SamplingParams
    stream: bool = False
    return_logprob: bool = False
    top_logprobs_num: int = 0
    lora_path: Optional[str] = None  # 适配器名 / the adapter's name (None = the base model)
    # normalize_requests 已对这些 input_ids 做过 check_token_ids：调度器不再查第二遍（1,024 个 2k token 的
    # prompt 要约 0.15 s，GPU 在这段时间里空等）。分词得到的 id 不算：分词器的词表可能比模型的大。
    # normalize_requests already ran check_token_ids on these input_ids, so the scheduler skips the
    # second pass (~0.15 s for 1,024 prompts of 2k tokens, with the GPU idle). Ids from the tokenizer
    # do not count: its vocabulary may be larger than the model's.
    ids_checked: bool = False


def unknown_lora_message(name: str, loaded) -> str:
    """未知适配器的错误信息（HTTP 400、Engine 的 ValueError、调度器的 abort 共用）。The unknown-adapter error."""
    if not loaded:
        return (f"unknown LoRA adapter {name!r}: no adapters are loaded "
                "(start with --lora-paths name=path; see GET /v1/models)")
    return f"unknown LoRA adapter {name!r}; loaded adapters: {', '.join(sorted(loaded))} (see GET /v1/models)"


@dataclass
class BatchTokenIDOut:
    """调度器一步的产出：每个有进展的请求的新 token。One scheduler step's new tokens per request."""

    rids: List[str] = field(default_factory=list)
    output_ids: List[List[int]] = field(default_factory=list)  # 本步新增 / new this step
    finished_reasons: List[Optional[Dict[str, Any]]] = field(default_factory=list)
    prompt_tokens: List[int] = field(default_factory=list)
    completion_tokens: List[int] = field(default_factory=list)
    cached_tokens: List[int] = field(default_factory=list)
    skip_special_tokens: List[bool] = field(default_factory=list)
    stop_strs: List[List[str]] = field(default_factory=list)
    # prompt 末尾几个 token：反分词进程用它作第一个输出 token 的解码上下文（与离线 Engine 一致）。
    # The prompt's last tokens: decoding context for the detokenizer process (as the offline Engine).
    prompt_tails: List[List[int]] = field(default_factory=list)
    streams: List[bool] = field(default_factory=list)  # 非流式请求只在结束时解码 / non-stream: decode at the end
    # 本步新增 token 的 logprob（与 output_ids 对齐）；不要 logprob 的请求为 None。
    # Logprobs of this step's new tokens (aligned with output_ids); None for requests that did not ask.
    output_token_logprobs: List[Optional[List[Tuple[float, int]]]] = field(default_factory=list)
    output_top_logprobs: List[Optional[List[List[Tuple[float, int]]]]] = field(default_factory=list)

    def add(self, req, new_ids: List[int]) -> None:
        self.add_many([req], [new_ids])

    def add_many(self, reqs: List[Any], new_ids: List[List[int]]) -> None:
        """一次加很多行（每步 decode 的 256 行）：按列推导，比逐行 append 快。Many rows at once, column by column.

        One list comprehension per column instead of twelve appends per row: at bs 256 this is the
        difference between ~0.6 and ~0.2 ms of host time per step.
        """
        self.rids += [r.rid for r in reqs]
        self.output_ids += new_ids
        self.finished_reasons += [r.finished_reason.to_json() if r.finished_reason else None for r in reqs]
        self.prompt_tokens += [len(r.origin_input_ids) for r in reqs]
        self.completion_tokens += [len(r.output_ids) for r in reqs]
        self.cached_tokens += [r.cached_tokens or 0 for r in reqs]
        params = [r.sampling_params for r in reqs]
        self.skip_special_tokens += [p.skip_special_tokens for p in params]
        self.stop_strs += [p.stop_strs for p in params]
        self.prompt_tails += [r.origin_input_ids[-PROMPT_TAIL_LEN:] for r in reqs]
        self.streams += [r.stream for r in reqs]
        self.output_token_logprobs += [
            r.output_token_logprobs[len(r.output_token_logprobs) - len(ids):] if r.return_logprob else None
            for r, ids in zip(reqs, new_ids)]
        self.output_top_logprobs += [
            r.output_top_logprobs[len(r.output_top_logprobs) - len(ids):] if r.top_logprobs_num else None
            for r, ids in zip(reqs, new_ids)]

    def add_rejected(self, rid: str, message: str, prompt_tokens: int, status_code: int) -> None:
        """一个没进调度器就被拒绝的请求（如队列已满）。A request refused before scheduling (e.g. queue full)."""
        self.rids.append(rid)
        self.output_ids.append([])
        self.finished_reasons.append({"type": "abort", "message": message, "status_code": status_code})
        self.prompt_tokens.append(prompt_tokens)
        self.completion_tokens.append(0)
        self.cached_tokens.append(0)
        self.skip_special_tokens.append(True)
        self.stop_strs.append([])
        self.prompt_tails.append([])
        self.streams.append(False)
        self.output_token_logprobs.append(None)
        self.output_top_logprobs.append(None)

    def __len__(self) -> int:
        return len(self.rids)

    def logprobs(self, i: int):
        """第 i 行的 (token logprobs, top logprobs)；手工构造、没带这两列的消息也行。Row i's logprobs."""
        return _logprobs_at(self, i)


def _logprobs_at(msg, i: int):
    """(output_token_logprobs[i], output_top_logprobs[i])，列不存在时 (None, None)。

    Tolerates messages built without the logprob columns (tests, notebooks, older callers).
    """
    lps, tops = msg.output_token_logprobs, msg.output_top_logprobs
    return (lps[i] if i < len(lps) else None), (tops[i] if i < len(tops) else None)


@dataclass
class BatchStrOut:
    """反分词之后：每个请求新增的文字。After detokenization: new text per request."""

    rids: List[str] = field(default_factory=list)
    texts: List[str] = field(default_factory=list)  # 本步新增文字 / new text this step
    output_ids: List[List[int]] = field(default_factory=list)
    meta_info: List[Dict[str, Any]] = field(default_factory=list)
    finished: List[bool] = field(default_factory=list)
    # 与本条 output_ids 对齐的 logprobs（见 BatchTokenIDOut）。Logprobs aligned with this message's output_ids.
    output_token_logprobs: List[Optional[List[Tuple[float, int]]]] = field(default_factory=list)
    output_top_logprobs: List[Optional[List[List[Tuple[float, int]]]]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rids)

    def logprobs(self, i: int):
        return _logprobs_at(self, i)


@dataclass
class AbortReq:
    rid: str


# ---- 控制消息：请求带一个 id，调度器的回复带同一个 id（直接发回 TokenizerManager）----
# ---- Control messages: the reply carries the request's id (sent straight back to the TokenizerManager) ----
@dataclass
class FlushCacheReq:
    id: str = ""


@dataclass
class FlushCacheReqOutput:
    id: str
    success: bool


@dataclass
class GetInfoReq:
    """向调度器询问内存/队列状态（/get_server_info、/metrics 用）。Ask the scheduler for its state."""

    id: str = ""


@dataclass
class GetInfoReqOutput:
    id: str
    stats: Dict[str, Any]
