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
#   - response_format：json_schema → SamplingParams.json_schema；json_object → schema {"type": "object"}；
#     text → 不约束。schema 编译不了 → 400（调度器里的 abort 带 status_code）。Structured output, chapter 11.
#   - logprobs（第 11 章）：completions 的 `logprobs: int`、chat 的 `logprobs: bool` + `top_logprobs: int`
#     （≤ 20）→ return_logprob / top_logprobs_num；值是原始 logits 的 log_softmax（温度、惩罚之前）。
#     Logprobs of the raw logits (before temperature and penalties), in OpenAI's choices[i].logprobs shapes.
#   - 函数调用（第 11 章）：tools 交给 chat 模板；输出里的 <tool_call> 由 function_call_parser 解析成
#     message.tool_calls / delta.tool_calls，finish_reason "tool_calls"。tool_choice 支持 auto / none。
#     Tools go to the chat template; <tool_call> output becomes tool_calls (auto / none).
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
import uuid
from functools import lru_cache
from typing import Any, AsyncIterator, Callable, Dict, List, Literal, Optional, Tuple, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from minisgl.function_call_parser import Qwen25Detector, StreamingParseResult, ToolCallItem, make_detector
from minisgl.io_struct import GenerateReqInput, new_rid
from minisgl.sampling.logprobs import MAX_TOP_LOGPROBS_NUM
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


# json.dumps(ensure_ascii=False) 不转义这三个字符，但 Python 的 splitlines（httpx 与 OpenAI 客户端的
# aiter_lines 用它）把它们当换行：一个事件会被切成两半。转义之后仍是同样的 JSON。
# json.dumps(ensure_ascii=False) leaves these three unescaped, yet Python's splitlines (behind the
# aiter_lines of httpx and the OpenAI client) breaks lines at them, cutting an event in two.
# Escaped, it is the same JSON.
_LINE_BREAKERS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def sse(obj: Any) -> str:
    text = json.dumps(obj, ensure_ascii=False)
    # 先查三个字符在不在（C 速度，约 0.3 µs）：str.translate 对非 ASCII 文字逐字查表，一个 1.4k 字符的事件要约
    # 170 µs，比 json.dumps 本身慢 5 倍，而流式时每个请求每个 token 都发一个事件。
    # Look for the three first (C speed, ~0.3 µs): str.translate looks every character up in a dict
    # for non-ASCII text, ~170 µs for a 1.4k-character event, 5x json.dumps itself, and a stream sends
    # one event per token per request.
    if "\x85" in text or "\u2028" in text or "\u2029" in text:
        text = text.translate(_LINE_BREAKERS)
    return f"data: {text}\n\n"


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


class JsonSchemaFormat(BaseModel):
    """response_format.json_schema：{"name", "schema", "strict", "description"}（OpenAI 的形状）。"""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: Optional[str] = None
    description: Optional[str] = None
    schema_: Optional[Dict[str, Any]] = Field(default=None, alias="schema")  # `schema` 与 BaseModel 的方法重名
    strict: Optional[bool] = None


class ResponseFormat(BaseModel):
    """OpenAI 的 response_format → 结构化输出（第 11 章）。OpenAI's response_format → structured output."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = None


class _SamplingRequest(BaseModel):
    """两个接口共有的字段（+ SGLang 的扩展）。Fields shared by both endpoints (+ SGLang's extras).

    未知字段是 400 而不是被悄悄忽略：拼错的 `temprature` 或不支持的 `logit_bias` 被忽略，用户会以为它生效了。
    Unknown fields are a 400, not silently ignored: a misspelt `temprature` or an unsupported
    `logit_bias` would make the user believe it took effect.
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
    user: Optional[str] = None
    response_format: Optional[ResponseFormat] = None
    # SGLang 扩展 / SGLang extensions
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    stop_token_ids: Optional[List[int]] = None
    regex: Optional[str] = None  # 输出必须整体匹配这个正则 / the output must fully match this regex
    rid: Optional[str] = None

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_SamplingRequest):
    prompt: Union[str, List[str], List[int], List[List[int]]]
    max_tokens: Optional[int] = 16  # OpenAI 的默认值 / OpenAI's default
    echo: bool = False
    logprobs: Optional[StrictInt] = None  # 每个位置返回前几个候选（0 = 只要抽中的）/ top candidates per position


class ChatMessage(BaseModel):
    """一条消息。未知字段（如客户端回传的 refusal）忽略；工具相关的字段都保留，交给 chat 模板。

    One message. Unknown fields (e.g. a `refusal` echoed back by a client) are ignored; the tool
    fields are kept and reach the chat template (multi-turn tool conversations).
    """

    model_config = ConfigDict(extra="ignore")

    role: str
    content: Optional[Union[str, List[Dict[str, Any]]]] = None
    name: Optional[str] = None
    tool_calls: Optional[List[Dict[str, Any]]] = None  # assistant：[{"id", "type", "function": {name, arguments}}]
    tool_call_id: Optional[str] = None  # role "tool"：回答的是哪个调用 / which call this answers


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: Optional[str] = None
    parameters: Optional[Dict[str, Any]] = None  # JSON Schema
    strict: Optional[bool] = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"] = "function"
    function: FunctionDefinition


class ToolChoiceFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"] = "function"
    function: ToolChoiceFunction


class ChatCompletionRequest(_SamplingRequest):
    messages: List[ChatMessage]
    max_completion_tokens: Optional[int] = None  # OpenAI 的新名字 / OpenAI's newer name
    logprobs: Optional[StrictBool] = None
    top_logprobs: Optional[StrictInt] = None
    tools: Optional[List[Tool]] = None
    tool_choice: Optional[Union[Literal["none", "auto", "required"], NamedToolChoice]] = None
    parallel_tool_calls: Optional[bool] = None  # False：只返回第一个调用 / only the first call is returned


# ======== 请求 → minisgl / Request → minisgl ========
def build_sampling_params(req: _SamplingRequest, max_tokens: Optional[int], context_len: int) -> Dict[str, Any]:
    """OpenAI 字段 → SamplingParams 字段（范围由 SamplingParams.verify 检查）。OpenAI → SamplingParams names."""
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
    params.update(structured_output_params(req))
    return params


def structured_output_params(req: _SamplingRequest) -> Dict[str, Any]:
    """response_format / regex → SamplingParams.json_schema / regex（同 SGLang）。

    json_object means "any JSON object": the schema {"type": "object"}; text means no constraint.
    """
    out: Dict[str, Any] = {}
    if req.regex is not None:
        out["regex"] = req.regex
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return out
    if fmt.type == "json_object":
        out["json_schema"] = json.dumps({"type": "object"})
    elif fmt.json_schema is None or fmt.json_schema.schema_ is None:
        raise RequestError("response_format.json_schema.schema is required when response_format.type is 'json_schema'")
    else:
        out["json_schema"] = json.dumps(fmt.json_schema.schema_, ensure_ascii=False)
    return out


def model_to_lora(name: Optional[str], known_models, lora_names, model_name: str) -> Optional[str]:
    """OpenAI 的 model 字段 → LoRA 适配器名（None = 基座）。The `model` field → a LoRA adapter (None = base).

    "base" (any accepted base name) or no model → None; "name" or "base:name" → the adapter `name`
    (SGLang's "base-model:adapter" form). An unknown model is a 404; "base:unknown" a 400 naming the adapter.
    """
    from minisgl.io_struct import unknown_lora_message

    if name is None or name in known_models:
        return None
    if name in lora_names:
        return name
    base, sep, adapter = name.partition(":")
    if sep and base in known_models:
        if adapter in lora_names:
            return adapter
        raise RequestError(unknown_lora_message(adapter, lora_names), 400)
    raise RequestError(f"the model {name!r} does not exist; this server serves {model_name!r}"
                       f"{' and the LoRA adapters ' + ', '.join(lora_names) if lora_names else ''} "
                       "(see GET /v1/models)", 404)


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


def chat_prompt_ids(tokenizer, messages: List[ChatMessage], tools: Optional[List[dict]] = None) -> List[int]:
    """检查消息并套用分词器的 chat 模板（有 tools 时一并交给模板）。

    Check the messages and apply the tokenizer's chat template, with `tools` when given (the
    template writes them into the prompt; a template that ignores tools is refused, since the
    model would never see them).
    """
    if not messages:
        raise RequestError("messages must be a non-empty list")
    if not getattr(tokenizer, "chat_template", None):
        raise RequestError("this model's tokenizer has no chat template; use /v1/completions instead")
    if tools and "tools" not in str(tokenizer.chat_template):
        raise RequestError("this model's chat template does not render tools, so the model would never see them; "
                           "use a model whose template supports tools (e.g. Qwen2.5 / Qwen3)")
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
        msg = {"role": m.role, "content": content or ""}
        if m.name is not None:
            msg["name"] = m.name
        if m.tool_calls is not None:
            msg["tool_calls"] = _template_tool_calls(m.tool_calls, i)
        if m.tool_call_id is not None:
            msg["tool_call_id"] = m.tool_call_id
        msgs.append(msg)
    try:
        text = tokenizer.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # 模板自己会拒绝一些顺序 / templates reject some orders themselves
        raise RequestError(f"the chat template failed on these messages: {e}") from None
    try:  # 工具的参数、名字也可能带孤立代理项 / tool arguments and names may carry lone surrogates too
        check_unicode(text, "the chat prompt")
    except ValueError as e:
        raise RequestError(str(e)) from None
    # 模板里已经写好了特殊 token（如 BOS），不要再加。The template already carries special tokens.
    return tokenizer.encode(text, add_special_tokens=False)


def _template_tool_calls(calls: List[Dict[str, Any]], i: int) -> List[Dict[str, Any]]:
    """assistant 消息里的 tool_calls：arguments 从 JSON 字符串变回对象（同 SGLang），模板用 tojson 渲染它。

    OpenAI sends function.arguments as a JSON string; templates (Qwen2.5's) render it with `tojson`,
    which would quote the string once more — so it is parsed back into an object first, as SGLang does.
    """
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise RequestError(f"messages[{i}].tool_calls[{j}]: function.name is required")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as e:
                raise RequestError(f"messages[{i}].tool_calls[{j}].function.arguments is not valid JSON: {e}") from None
        out.append({**call, "function": {**fn, "arguments": args}})
    return out


# ======== logprobs 与工具调用：请求参数与响应形状 / logprobs and tool calls: arguments and shapes ========
def logprob_args(body: _SamplingRequest) -> Tuple[bool, int]:
    """OpenAI 的 logprobs / top_logprobs → (return_logprob, top_logprobs_num)。

    /v1/completions: `logprobs: int` (the number of top candidates; 0 = only the chosen token's).
    /v1/chat/completions: `logprobs: bool` + `top_logprobs: int`. Both at most 20 (OpenAI's limit).
    """
    if isinstance(body, CompletionRequest):
        name, want, num = "logprobs", body.logprobs is not None, body.logprobs or 0
    else:
        name, want, num = "top_logprobs", bool(body.logprobs), body.top_logprobs or 0
        if num and not want:
            raise RequestError("top_logprobs requires logprobs=true")
    if not 0 <= num <= MAX_TOP_LOGPROBS_NUM:
        raise RequestError(f"{name} must be in [0, {MAX_TOP_LOGPROBS_NUM}], got {num}")
    return want, num


@lru_cache(maxsize=1)
def _byte_decoder() -> Dict[str, int]:
    """GPT-2 byte-level 表的逆：token 串里的可见字符 → 原始字节。The inverse of GPT-2's bytes→unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:  # 不可见字节依次映射到 256 之后 / unprintable bytes map to 256, 257, ...
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class TokenText:
    """token id → (文字, 字节)，每个响应一个缓存。token id → (text, UTF-8 bytes), cached per response.

    A token holding half a character (byte-level BPE splits 汉字 and emoji) decodes to "\ufffd";
    its real bytes come from the byte-level token string, so a client can join `bytes` back into text.
    """

    def __init__(self, tokenizer):
        self.tokenizer, self.cache = tokenizer, {}

    def __call__(self, token_id: int) -> Tuple[str, List[int]]:
        if token_id not in self.cache:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False)
            raw = text.encode("utf-8")
            if "\ufffd" in text:
                piece, table = self.tokenizer.convert_ids_to_tokens(token_id), _byte_decoder()
                if isinstance(piece, str) and piece and all(ch in table for ch in piece):
                    raw = bytes(table[ch] for ch in piece)
            self.cache[token_id] = (text, list(raw))
        return self.cache[token_id]


def completion_logprobs(tt: TokenText, token_lps: list, top_lps: Optional[list], offset: int = 0) -> Dict[str, Any]:
    """/v1/completions 的 choices[i].logprobs：tokens、token_logprobs、top_logprobs、text_offset。"""
    tokens, offsets = [], []
    for _, tid in token_lps:
        offsets.append(offset)
        tokens.append(tt(tid)[0])
        offset += len(tokens[-1])
    tops = None
    if top_lps is not None:
        tops = []
        for cands in top_lps:  # 两个 token 解码成同一个字符串时保留概率大的 / keep the likelier on a name clash
            d: Dict[str, float] = {}
            for lp, tid in cands:
                d.setdefault(tt(tid)[0], lp)
            tops.append(d)
    return {"tokens": tokens, "token_logprobs": [lp for lp, _ in token_lps], "top_logprobs": tops,
            "text_offset": offsets}


def chat_logprobs(tt: TokenText, token_lps: list, top_lps: Optional[list]) -> Dict[str, Any]:
    """/v1/chat/completions 的 choices[i].logprobs：{"content": [{token, logprob, bytes, top_logprobs}]}。"""
    def entry(lp, tid):
        text, raw = tt(tid)
        return {"token": text, "logprob": lp, "bytes": raw}

    tops = top_lps if top_lps is not None else [[] for _ in token_lps]
    return {"content": [{**entry(lp, tid), "top_logprobs": [entry(l2, t2) for l2, t2 in cands]}
                        for (lp, tid), cands in zip(token_lps, tops)], "refusal": None}


def resolve_tools(body: "ChatCompletionRequest") -> Tuple[Optional[List[dict]], Optional[List[str]]]:
    """tools + tool_choice → (交给 chat 模板的 tools, 解析时认的工具名)；(None, None) = 不用工具。

    "auto" (the default with tools): the template sees the tools, the output is parsed.
    "none": neither (as SGLang). "required" and a named function need constrained decoding to be
    guaranteed: refused with a 400 rather than served by a hope.
    """
    choice = body.tool_choice
    if not body.tools:
        if choice not in (None, "none"):
            raise RequestError("tool_choice needs tools: give the list of tools the model may call")
        return None, None
    if choice == "none":
        return None, None
    if choice == "required" or isinstance(choice, NamedToolChoice):
        what = "'required'" if choice == "required" else f"a named function ({choice.function.name!r})"
        raise RequestError(f"tool_choice {what} is not supported by minisgl: it needs constrained decoding to be "
                           "guaranteed; use tool_choice 'auto' (or 'none')")
    for t in body.tools:
        if t.function.strict:
            raise RequestError(f"tools: strict function calling ({t.function.name!r}) needs constrained decoding, "
                               "which minisgl does not do for tools; leave strict unset")
    return [t.model_dump(exclude_none=True) for t in body.tools], [t.function.name for t in body.tools]


def tool_call_json(call: ToolCallItem) -> Dict[str, Any]:
    """一个解析出的调用 → OpenAI 的 tool_calls 项（id 由服务器生成）。A parsed call → an OpenAI tool_calls item."""
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": call.name, "arguments": call.parameters}}


def chat_message(text: str, detector: Optional[Qwen25Detector], parallel: bool = True) -> Tuple[Dict[str, Any], bool]:
    """完整输出 → OpenAI 的 message；第二个值：是否有工具调用。The whole output → (message, has tool calls).

    No detector (no tools, or tool_choice "none") or no valid call: the text is the content, unchanged.
    """
    if detector is not None:
        res = detector.detect_and_parse(text)
        calls = res.calls if parallel else res.calls[:1]
        if calls:
            return {"role": "assistant", "content": res.normal_text or None,
                    "tool_calls": [tool_call_json(c) for c in calls]}, True
    return {"role": "assistant", "content": text}, False


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
        self.lp_sent = [0] * count  # 已发出 logprob 的 token 数 / tokens whose logprobs were sent
        self.text_offset = [0] * count  # completions 的 text_offset 累计 / running text_offset
        self.called = [False] * count  # 这个 choice 发出过工具调用 / this choice made a tool call

    def delta(self, upd: dict) -> str:
        i = upd["index"]
        d, self.sent[i] = upd["text"][self.sent[i]:], len(upd["text"])
        if upd["finished"]:
            self.finals[i] = upd
        return d

    def new_logprobs(self, upd: dict) -> Tuple[Optional[list], Optional[list]]:
        """上次之后新到的 (token logprobs, top logprobs)；没要 logprob 时为 (None, None)。"""
        i, meta = upd["index"], upd["meta_info"]
        lps, tops = meta.get("output_token_logprobs"), meta.get("output_top_logprobs")
        if lps is None:
            return None, None
        start, self.lp_sent[i] = self.lp_sent[i], len(lps)
        return lps[start:], (tops[start:] if tops is not None else None)


def final_logprobs(upd: dict) -> Tuple[list, Optional[list]]:
    meta = upd["meta_info"]
    return meta.get("output_token_logprobs") or [], meta.get("output_top_logprobs")


async def completions(tm, body: CompletionRequest, request, model_name: str, lora_path: Optional[str] = None):
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
    want_lp, top_n = logprob_args(body)
    obj = GenerateReqInput(text=None if is_ids else p, input_ids=p if is_ids else None, sampling_params=params,
                           stream=body.stream, rid=rids, return_logprob=want_lp, top_logprobs_num=top_n,
                           lora_path=lora_path)
    _, reqs, index = tm.normalize(obj)
    check_context(reqs, body.max_tokens, tm.context_len)
    rid, created = f"cmpl-{base}", int(time.time())
    tt = TokenText(tm.tokenizer)
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
            i, d, fin = upd["index"], track.delta(upd), finish_reason(upd)
            lps, tops = track.new_logprobs(upd)
            if not d and fin is None and not lps:
                return []
            logprobs = None
            if lps is not None:
                logprobs = completion_logprobs(tt, lps, tops, track.text_offset[i])
                track.text_offset[i] += sum(len(t) for t in logprobs["tokens"])
            return [sse(chunk([{"index": i, "text": d, "logprobs": logprobs, "finish_reason": fin}]))]

        def final_events():
            if not body.include_usage():
                return []
            return [sse(chunk([], usage(track.finals, index)))]

        return await stream_events(updates, to_events, final_events)

    finals = await collect(updates, len(reqs))
    for upd in finals:
        if abort_error(upd):
            raise abort_error(upd)
    choices = [{"index": i, "text": u["text"],
                "logprobs": completion_logprobs(tt, *final_logprobs(u)) if want_lp else None,
                "finish_reason": finish_reason(u)} for i, u in enumerate(finals)]
    return JSONResponse({"id": rid, "object": "text_completion", "created": created, "model": model_name,
                         "choices": choices, "usage": usage(finals, index)})


async def chat_completions(tm, body: ChatCompletionRequest, request, model_name: str,
                           lora_path: Optional[str] = None):
    """POST /v1/chat/completions。"""
    from fastapi.responses import JSONResponse

    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    params = build_sampling_params(body, max_tokens, tm.context_len)
    want_lp, top_n = logprob_args(body)
    tools, tool_names = resolve_tools(body)
    ids = chat_prompt_ids(tm.tokenizer, body.messages, tools)
    base = body.rid or new_rid()
    obj = GenerateReqInput(input_ids=ids, sampling_params=params, stream=body.stream, rid=base,
                           return_logprob=want_lp, top_logprobs_num=top_n, lora_path=lora_path)
    _, reqs, index = tm.normalize(obj)
    check_context(reqs, max_tokens, tm.context_len)
    rid, created = f"chatcmpl-{base}", int(time.time())
    tt = TokenText(tm.tokenizer)
    parallel = body.parallel_tool_calls is not False
    updates = tm.generate(reqs, request, stream=body.stream)

    def chunk(choices, use=None):
        out = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model_name,
               "choices": choices}
        if body.include_usage():
            out["usage"] = use
        return out

    if body.stream:
        track = ChoiceTracker(len(reqs))
        # 每个 choice 一个有状态的解析器：标签之前的文字照常流出，调用闭合后整体发出。
        # One stateful parser per choice: text before a tag streams on, a call goes out once closed.
        detectors = [make_detector(tool_names) for _ in reqs] if tools else None

        def to_events(upd):
            if abort_error(upd):
                raise abort_error(upd)
            i, d, fin = upd["index"], track.delta(upd), finish_reason(upd)
            calls: List[ToolCallItem] = []
            if detectors is not None:
                res = detectors[i].parse_streaming_increment(d)
                if upd["finished"]:
                    end = detectors[i].flush()
                    res = StreamingParseResult(res.normal_text + end.normal_text, res.calls + end.calls)
                d, calls = res.normal_text, [c for c in res.calls if parallel or c.tool_index == 0]
                track.called[i] = track.called[i] or bool(calls)
                if fin == "stop" and track.called[i]:
                    fin = "tool_calls"
            lps, tops = track.new_logprobs(upd)
            if not d and not calls and not lps and fin is None and track.started[i]:
                return []
            delta: Dict[str, Any] = {} if track.started[i] else {"role": "assistant"}
            if d or not calls:
                delta["content"] = d
            if calls:
                delta["tool_calls"] = [{"index": c.tool_index, **tool_call_json(c)} for c in calls]
            track.started[i] = True
            logprobs = chat_logprobs(tt, lps, tops) if lps is not None else None
            return [sse(chunk([{"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": fin}]))]

        def final_events():
            if not body.include_usage():
                return []
            return [sse(chunk([], usage(track.finals, index)))]

        return await stream_events(updates, to_events, final_events)

    finals = await collect(updates, len(reqs))
    for upd in finals:
        if abort_error(upd):
            raise abort_error(upd)
    choices = []
    for i, u in enumerate(finals):
        message, called = chat_message(u["text"], make_detector(tool_names) if tools else None, parallel)
        fin = finish_reason(u)
        choices.append({"index": i, "message": message,
                        "logprobs": chat_logprobs(tt, *final_logprobs(u)) if want_lp else None,
                        "finish_reason": "tool_calls" if called and fin == "stop" else fin})
    return JSONResponse({"id": rid, "object": "chat.completion", "created": created, "model": model_name,
                         "choices": choices, "usage": usage(finals, index)})
