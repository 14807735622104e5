# ================================================================================
# 🔌 OpenAI 兼容接口：/v1/completions、/v1/chat/completions 的请求模型与适配
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   用 pydantic 定义 OpenAI 的请求体，把它们翻译成 minisgl 的 GenerateReqInput（采样参数改名：
#   max_tokens → max_new_tokens、min_tokens → min_new_tokens ……），再把 TokenizerManager 的累计更新
#   翻译回 OpenAI 的响应 / SSE 流（含 usage.prompt_tokens_details.cached_tokens）。也定义了
#   OpenAI 风格的错误体 {"error": {"message", "type", "code"}}，整个服务器共用。
#   Pydantic models of OpenAI's request bodies, translated into minisgl's GenerateReqInput (renaming
#   max_tokens → max_new_tokens, ...), and the TokenizerManager's cumulative updates translated back
#   into OpenAI responses / SSE streams (with usage.prompt_tokens_details.cached_tokens). Also the
#   OpenAI-style error body {"error": {"message", "type", "code"}} used by the whole server.
#
# 【生活比喻】Metaphor
#   翻译：外国客人（OpenAI 客户端）用他的菜单说法点菜，翻译换成厨房的说法；菜上来时再按客人
#   习惯的方式摆盘。
#   An interpreter: a foreign guest orders in his menu's words; the interpreter speaks the kitchen's
#   words, then plates the dishes the way the guest expects.
#
# 【核心架构】Architecture
#   CompletionRequest ──┐                               ┌─► JSON（choices, usage）
#   ChatCompletionRequest ─(chat 模板 / chat template)─┤
#                       ▼                               └─► SSE: data: {chunk} … data: [DONE]
#          GenerateReqInput ─► tm.normalize ─► tm.generate ─► 累计更新 / cumulative updates
#                                                               └─ ChoiceTracker：累计 → 增量 / deltas
#
# 【工作流程】Workflow
#   1. pydantic 校验类型（错 → 400，写明字段）；build_sampling_params 改名并检查 max_tokens。
#   2. chat：检查 role 与 content，用分词器自带的 chat_template 拼成 prompt。
#   3. normalize（分词、校验范围）；显式的 max_tokens 超出上下文 → 400（OpenAI 的措辞）。
#   4. 非流式：等全部结束，拼 choices 与 usage；流式：每个更新发一个 chunk，最后可选 usage chunk 与 [DONE]。
#
# 【关键概念】Key Concepts
#   - n 个 choice 的顺序：prompt 优先，再按样本序号（index = prompt_i * n + j），与 OpenAI 相同。
#   - usage.prompt_tokens 每个 prompt 只算一次（n 个样本共享同一个 prompt）；completion_tokens 全部相加。
#   - 请求被中止（服务器端）时，OpenAI 没有对应的 finish_reason：返回错误（流式时发一个 error 事件）。
#   - chat 默认 max_tokens = 剩余上下文（调度器会截到 context_len − prompt_len）。
#
# 【使用方式】Usage
#   >>> from openai import OpenAI
#   >>> client = OpenAI(base_url="http://127.0.0.1:30000/v1", api_key="EMPTY")
#   >>> client.chat.completions.create(model="x", messages=[{"role": "user", "content": "你好"}], max_tokens=16)
#
# 【对应章节】Chapter: docs/zh/04-request-journey.md
# ================================================================================
from __future__ import annotations

import json
import time
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Union

from pydantic import BaseModel, ConfigDict

from minisgl.io_struct import GenerateReqInput, new_rid
from minisgl.tokenizer_manager import RequestError, check_unicode

CHAT_ROLES = ("system", "user", "assistant", "tool", "developer")
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               413: "invalid_request_error", 503: "server_overloaded"}


# ======== 错误体与 SSE / Error bodies and SSE ========
def error_body(message: str, status_code: int) -> Dict[str, Any]:
    kind = ERROR_TYPES.get(status_code, "invalid_request_error" if status_code < 500 else "internal_error")
    return {"error": {"message": message, "type": kind, "code": status_code}}


def error_response(message: str, status_code: int):
    from fastapi.responses import JSONResponse

    return JSONResponse(error_body(message, status_code), status_code=status_code)


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def abort_error(update: Dict[str, Any]) -> Optional[RequestError]:
    """更新若是被中止的结束，给出对应的错误。The error for an update that ended in an abort, else None.

    The status code comes with the abort (503: queue full, backend gone); otherwise an abort before
    any token is the input's fault (400, e.g. the prompt does not fit the KV pool), later ones 503.
    """
    reason = update["meta_info"].get("finish_reason") or {}
    if reason.get("type") != "abort":
        return None
    code = reason.get("status_code") or (400 if not update["meta_info"].get("completion_tokens") else 503)
    return RequestError(f"the request was aborted: {reason.get('message', 'aborted')}", code)


def refusal(update: Dict[str, Any]) -> Optional[RequestError]:
    """服务器拒绝（队列满、后端没了）：abort 带着状态码。A refusal: an abort that carries a status code."""
    reason = update["meta_info"].get("finish_reason") or {}
    return abort_error(update) if reason.get("status_code") else None


async def stream_events(updates: AsyncIterator[dict], to_events: Callable[[dict], List[str]],
                        final_events: Callable[[], List[str]], error_of=abort_error):
    """先等第一个更新（它若是错误就抛出 → 正常的 4xx/5xx），再返回 SSE 的 StreamingResponse。

    Await the first update first (if `error_of` finds an error in it, raise → a normal 4xx/5xx
    response), then return the SSE stream.
    """
    from fastapi.responses import StreamingResponse

    try:
        first = await updates.__anext__()
    except StopAsyncIteration:
        first = None
    if first is not None and first["finished"] and error_of(first):
        await updates.aclose()
        raise error_of(first)

    async def body():
        try:
            if first is not None:
                for ev in to_events(first):
                    yield ev
                async for upd in updates:
                    for ev in to_events(upd):
                        yield ev
            for ev in final_events():
                yield ev
        except RequestError as e:  # 流开始后才出错：发 error 事件 / an error after the stream began
            yield sse(error_body(e.message, e.status_code))
        finally:
            await updates.aclose()
        yield SSE_DONE

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def collect(updates: AsyncIterator[dict], count: int) -> List[dict]:
    """非流式：等全部结束，返回每个请求的最后一个更新。Non-streaming: the last update of every request."""
    finals: List[Optional[dict]] = [None] * count
    async for upd in updates:
        finals[upd["index"]] = upd
    return finals  # type: ignore[return-value]


# ======== 请求模型 / Request models ========
class StreamOptions(BaseModel):
    include_usage: bool = False


class _SamplingRequest(BaseModel):
    """两个接口共有的字段（+ SGLang 的扩展）。Fields shared by both endpoints (+ SGLang's extras).

    未知字段是 400 而不是被悄悄忽略：`response_format` 或拼错的 `temprature` 被忽略，用户会以为它生效了。
    Unknown fields are a 400, not silently ignored: an ignored `response_format` or a misspelt
    `temprature` would make the user believe it took effect.
    """

    model_config = ConfigDict(extra="forbid")

    model: Optional[str] = None
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    n: int = 1
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    stop: Optional[Union[str, List[str]]] = None
    seed: Optional[int] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    logprobs: Optional[Union[bool, int]] = None
    user: Optional[str] = None
    # SGLang 扩展 / SGLang extensions
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    stop_token_ids: Optional[List[int]] = None
    rid: Optional[str] = None

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_SamplingRequest):
    prompt: Union[str, List[str], List[int], List[List[int]]]
    max_tokens: Optional[int] = 16  # OpenAI 的默认值 / OpenAI's default
    echo: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: Optional[Union[str, List[Dict[str, Any]]]] = None
    name: Optional[str] = None


class ChatCompletionRequest(_SamplingRequest):
    messages: List[ChatMessage]
    max_completion_tokens: Optional[int] = None  # OpenAI 的新名字 / OpenAI's newer name


# ======== 请求 → minisgl / Request → minisgl ========
def build_sampling_params(req: _SamplingRequest, max_tokens: Optional[int], context_len: int) -> Dict[str, Any]:
    """OpenAI 字段 → SamplingParams 字段（范围由 SamplingParams.verify 检查）。OpenAI → SamplingParams names."""
    if req.logprobs:
        raise RequestError("logprobs is not supported by minisgl")
    if max_tokens is not None and max_tokens < 0:
        raise RequestError(f"max_tokens must be >= 0, got {max_tokens}")
    params = {
        "max_new_tokens": max_tokens if max_tokens is not None else context_len,  # 调度器再截短 / clipped later
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "top_k": req.top_k, "min_p": req.min_p, "repetition_penalty": req.repetition_penalty,
        "presence_penalty": req.presence_penalty or 0.0, "frequency_penalty": req.frequency_penalty or 0.0,
        "min_new_tokens": req.min_tokens, "stop": req.stop, "stop_token_ids": req.stop_token_ids,
        "ignore_eos": req.ignore_eos, "skip_special_tokens": req.skip_special_tokens, "n": req.n, "seed": req.seed,
    }
    return params


def check_context(reqs, max_tokens: Optional[int], context_len: int) -> None:
    """显式给出的 max_tokens 不能让 prompt + 输出超出上下文。An explicit max_tokens must fit the context."""
    if max_tokens is None:
        return
    for r in reqs:
        if len(r.input_ids) + max_tokens > context_len:
            raise RequestError(
                f"This model's maximum context length is {context_len} tokens. However, you requested "
                f"{len(r.input_ids) + max_tokens} tokens ({len(r.input_ids)} in the prompt, {max_tokens} in the "
                f"completion). Please reduce the length of the prompt or max_tokens.")


def chat_prompt_ids(tokenizer, messages: List[ChatMessage]) -> List[int]:
    """检查消息并套用分词器的 chat 模板。Check the messages and apply the tokenizer's chat template."""
    if not messages:
        raise RequestError("messages must be a non-empty list")
    if not getattr(tokenizer, "chat_template", None):
        raise RequestError("this model's tokenizer has no chat template; use /v1/completions instead")
    msgs = []
    for i, m in enumerate(messages):
        if m.role not in CHAT_ROLES:
            raise RequestError(f"messages[{i}]: unknown role {m.role!r}; expected one of {', '.join(CHAT_ROLES)}")
        content = m.content
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            if any(p.get("type") != "text" or not isinstance(p.get("text"), str) for p in content):
                raise RequestError(f"messages[{i}]: only text content parts are supported")
            content = "".join(p["text"] for p in content)
        try:
            check_unicode(content or "", f"messages[{i}].content")
        except ValueError as e:
            raise RequestError(str(e)) from None
        msgs.append({"role": m.role, "content": content or ""})
    try:
        text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # 模板自己会拒绝一些顺序 / templates reject some orders themselves
        raise RequestError(f"the chat template failed on these messages: {e}") from None
    # 模板里已经写好了特殊 token（如 BOS），不要再加。The template already carries special tokens.
    return tokenizer.encode(text, add_special_tokens=False)


# ======== 响应 / Responses ========
def finish_reason(update: dict) -> Optional[str]:
    reason = update["meta_info"].get("finish_reason") if update["finished"] else None
    return None if reason is None else reason["type"]


def usage(finals: List[dict], prompt_index: List[int]) -> Dict[str, Any]:
    """prompt 与缓存每个 prompt 只算一次（n 个样本共享）。Prompt and cached tokens count once per prompt."""
    first: Dict[int, dict] = {}
    for upd, p in zip(finals, prompt_index):
        first.setdefault(p, upd)
    prompt = sum(u["meta_info"]["prompt_tokens"] for u in first.values())
    cached = sum(u["meta_info"]["cached_tokens"] for u in first.values())
    completion = sum(u["meta_info"]["completion_tokens"] for u in finals)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


class ChoiceTracker:
    """把累计更新变成每个 choice 的增量。Turn cumulative updates into per-choice deltas."""

    def __init__(self, count: int):
        self.sent = [0] * count
        self.started = [False] * count
        self.finals: List[Optional[dict]] = [None] * count

    def delta(self, upd: dict) -> str:
        i = upd["index"]
        d, self.sent[i] = upd["text"][self.sent[i]:], len(upd["text"])
        if upd["finished"]:
            self.finals[i] = upd
        return d


async def completions(tm, body: CompletionRequest, request, model_name: str):
    """POST /v1/completions。"""
    from fastapi.responses import JSONResponse

    if body.echo:
        raise RequestError("echo is not supported by minisgl")
    params = build_sampling_params(body, body.max_tokens, tm.context_len)
    p = body.prompt
    is_ids = isinstance(p, list) and bool(p) and not isinstance(p[0], str)
    base = body.rid or new_rid()
    is_batch = isinstance(p, list) and bool(p) and isinstance(p[0], (str, list))
    rids = [f"{base}-p{i}" for i in range(len(p))] if is_batch else base  # 每个 prompt 一个 rid / one per prompt
    obj = GenerateReqInput(text=None if is_ids else p, input_ids=p if is_ids else None, sampling_params=params,
                           stream=body.stream, rid=rids)
    _, reqs, index = tm.normalize(obj)
    check_context(reqs, body.max_tokens, tm.context_len)
    rid, created = f"cmpl-{base}", int(time.time())
    updates = tm.generate(reqs, request, stream=body.stream)

    def chunk(choices, use=None):
        out = {"id": rid, "object": "text_completion", "created": created, "model": model_name, "choices": choices}
        if body.include_usage():
            out["usage"] = use
        return out

    if body.stream:
        track = ChoiceTracker(len(reqs))

        def to_events(upd):
            if abort_error(upd):
                raise abort_error(upd)
            d, fin = track.delta(upd), finish_reason(upd)
            if not d and fin is None:
                return []
            return [sse(chunk([{"index": upd["index"], "text": d, "logprobs": None, "finish_reason": fin}]))]

        def final_events():
            if not body.include_usage():
                return []
            return [sse(chunk([], usage(track.finals, index)))]

        return await stream_events(updates, to_events, final_events)

    finals = await collect(updates, len(reqs))
    for upd in finals:
        if abort_error(upd):
            raise abort_error(upd)
    choices = [{"index": i, "text": u["text"], "logprobs": None, "finish_reason": finish_reason(u)}
               for i, u in enumerate(finals)]
    return JSONResponse({"id": rid, "object": "text_completion", "created": created, "model": model_name,
                         "choices": choices, "usage": usage(finals, index)})


async def chat_completions(tm, body: ChatCompletionRequest, request, model_name: str):
    """POST /v1/chat/completions。"""
    from fastapi.responses import JSONResponse

    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    params = build_sampling_params(body, max_tokens, tm.context_len)
    ids = chat_prompt_ids(tm.tokenizer, body.messages)
    base = body.rid or new_rid()
    obj = GenerateReqInput(input_ids=ids, sampling_params=params, stream=body.stream, rid=base)
    _, reqs, index = tm.normalize(obj)
    check_context(reqs, max_tokens, tm.context_len)
    rid, created = f"chatcmpl-{base}", int(time.time())
    updates = tm.generate(reqs, request, stream=body.stream)

    def chunk(choices, use=None):
        out = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model_name,
               "choices": choices}
        if body.include_usage():
            out["usage"] = use
        return out

    if body.stream:
        track = ChoiceTracker(len(reqs))

        def to_events(upd):
            if abort_error(upd):
                raise abort_error(upd)
            i, d, fin = upd["index"], track.delta(upd), finish_reason(upd)
            if not d and fin is None and track.started[i]:
                return []
            delta = {"content": d} if track.started[i] else {"role": "assistant", "content": d}
            track.started[i] = True
            return [sse(chunk([{"index": i, "delta": delta, "logprobs": None, "finish_reason": fin}]))]

        def final_events():
            if not body.include_usage():
                return []
            return [sse(chunk([], usage(track.finals, index)))]

        return await stream_events(updates, to_events, final_events)

    finals = await collect(updates, len(reqs))
    for upd in finals:
        if abort_error(upd):
            raise abort_error(upd)
    choices = [{"index": i, "message": {"role": "assistant", "content": u["text"]}, "logprobs": None,
                "finish_reason": finish_reason(u)} for i, u in enumerate(finals)]
    return JSONResponse({"id": rid, "object": "chat.completion", "created": created, "model": model_name,
                         "choices": choices, "usage": usage(finals, index)})
