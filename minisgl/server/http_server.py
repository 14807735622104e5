# ================================================================================
# 🌐 HTTP 接口（FastAPI app）：原生 /generate、OpenAI /v1/*、健康检查与管理
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   HTTP 进程里的 FastAPI 应用。每个路由都很薄：解析请求 → 交给 TokenizerManager（或 openai_api 的
#   适配函数）→ 把结果写成 JSON 或 SSE。这里还有两道“门卫”：API key 检查与请求体大小上限，
#   以及把所有错误统一成 OpenAI 风格错误体的异常处理器。
#   The FastAPI app of the HTTP process. Every route is thin: parse → hand to the TokenizerManager
#   (or an openai_api adapter) → write JSON or SSE. Two guards sit in front (API key, body size) and
#   exception handlers turn every error into the OpenAI-style error body.
#
# 【生活比喻】Metaphor
#   餐厅的前台：门口的保安看会员卡（API key）和包的大小（body 上限），前台把点单交给后厨，
#   菜好了按客人要的方式端上来（一次上齐 / 边做边上）。
#   The front of the restaurant: a doorman checks the card (API key) and the bag size (body limit);
#   the desk passes orders to the kitchen and serves dishes all at once or as they come.
#
# 【核心架构】Architecture
#   GuardMiddleware（API key → 401；body 上限 → 413）
#     └─ FastAPI
#         ├─ POST /generate               原生接口（SGLang）/ native: text | input_ids, batch, stream
#         ├─ POST /v1/completions         ─┐ openai_api.py
#         ├─ POST /v1/chat/completions    ─┘
#         ├─ GET  /v1/models, /get_model_info, /get_server_info
#         ├─ GET  /health                 1-token 生成（不需要 key）/ a 1-token generation (no key needed)
#         ├─ POST /flush_cache, /abort_request
#         └─ GET  /metrics                （--enable-metrics）
#   异常处理 / handlers: RequestError（自带状态码 / own status）· ValueError → 400 · HTTPException（404/413…）
#
# 【工作流程】Workflow
#   1. 请求过门卫；2. parse_body：JSON + pydantic（错 → 400，说明字段）；3. tm.normalize 分词与校验；
#   4. tm.generate 产出累计更新；5. 非流式拼 JSON，流式每个更新一个 SSE 事件，最后 `data: [DONE]`。
#
# 【关键概念】Key Concepts
#   - 原生流式的 text / output_ids 是累计值（同 SGLang），OpenAI 流式是增量。
#     Native streaming sends cumulative text (as SGLang); OpenAI streaming sends deltas.
#   - 客户端断开：非流式在等待中发现（每秒检查），流式由 StreamingResponse 取消生成器；两种都会 abort。
#   - 门卫用纯 ASGI 中间件写，不用 BaseHTTPMiddleware：后者会包住流式响应、影响断开检测。
#     The guard is plain ASGI middleware: BaseHTTPMiddleware wraps streams and disturbs disconnects.
#
# 【使用方式】Usage
#   $ curl -s localhost:30000/generate -d '{"text": "床前明月光", "sampling_params": {"max_new_tokens": 16}}'
#   $ curl -sN localhost:30000/generate -d '{"text": "床前", "stream": true}'
#
# 【对应章节】Chapter: docs/zh/04-request-journey.md
# ================================================================================
from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import os
import time
from typing import Any, Dict, List, Optional, Union

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt
from starlette.exceptions import HTTPException as StarletteHTTPException

from minisgl.io_struct import GenerateReqInput
from minisgl.server import openai_api
from minisgl.server.openai_api import error_body, error_response, refusal, sse
from minisgl.tokenizer_manager import ClientDisconnected, RequestError

HEALTH_TIMEOUT_S = 20.0
OPEN_PATHS = ("/health",)  # 不需要 API key 的路径 / paths that need no API key


# ======== 门卫 / The guard ========
class GuardMiddleware:
    """API key（401）与请求体上限（413）。API key (401) and body-size limit (413)."""

    def __init__(self, app, api_key: Optional[str], max_request_bytes: int):
        self.app, self.api_key, self.max_bytes = app, api_key, max_request_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.api_key and scope["path"] not in OPEN_PATHS:
            # 常数时间比较，不泄露 key 的前缀。Constant-time compare: no timing hints about the key.
            if not hmac.compare_digest(headers.get(b"authorization", b""), f"Bearer {self.api_key}".encode()):
                return await _send_error(send, "invalid or missing API key: send 'Authorization: Bearer <key>'", 401,
                                         [(b"www-authenticate", b"Bearer")])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _send_error(send, f"the request body is {int(length)} bytes; the limit is {self.max_bytes} "
                                           "(--max-request-bytes)", 413)
        received = 0

        async def limited_receive():
            # 没有 Content-Length（分块上传）时边收边数。Count as we go when there is no Content-Length.
            nonlocal received
            msg = await receive()
            received += len(msg.get("body", b""))
            if received > self.max_bytes:
                raise StarletteHTTPException(413, f"the request body exceeds {self.max_bytes} bytes "
                                                  "(--max-request-bytes)")
            return msg

        return await self.app(scope, limited_receive, send)


async def _send_error(send, message: str, status: int, extra_headers=()) -> None:
    body = json.dumps(error_body(message, status)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# ======== 原生请求体 / The native request body ========
class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: Optional[Union[str, List[str]]] = None
    input_ids: Optional[Union[List[int], List[List[int]]]] = None
    sampling_params: Optional[Union[Dict[str, Any], List[Dict[str, Any]]]] = None
    stream: bool = False
    rid: Optional[Union[str, List[str]]] = None
    lora_path: Optional[Union[str, List[Optional[str]]]] = None  # LoRA 适配器名（SGLang 的名字）/ adapter name
    # logprobs（SGLang 的名字，取值由 normalize 检查）。Logprobs (SGLang's names; values checked by normalize).
    return_logprob: Union[StrictBool, List[StrictBool]] = False
    top_logprobs_num: Union[StrictInt, List[StrictInt]] = 0


class AbortRequest(BaseModel):
    rid: str


def _validation_message(errors) -> str:
    parts = []
    for err in errors:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        if err.get("type") == "extra_forbidden":  # 拼错的字段不能被悄悄忽略 / a typo must not be ignored silently
            parts.append(f"{loc}: unknown field (not supported by minisgl)")
            continue
        parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return "invalid request: " + "; ".join(parts[:5])


async def parse_body(request: Request, model: type):
    """读 JSON 并按 pydantic 模型校验，不看 Content-Type（curl -d 也能用）。

    Read JSON and validate it with a pydantic model, whatever the Content-Type (so `curl -d` works).
    """
    from pydantic import ValidationError

    raw = await request.body()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(f"malformed JSON body: {e}") from None
    if not isinstance(data, dict):
        raise RequestError(f"the JSON body must be an object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise RequestError(_validation_message(e.errors())) from None


# ======== 应用 / The app ========
def create_app(tm, args, info: Dict[str, Any]) -> FastAPI:
    """组装 FastAPI 应用（见文件头）。Build the FastAPI app; see the file header."""
    app = FastAPI(title="minisgl", docs_url=None, redoc_url=None, openapi_url=None)
    model_name = args.served_model_name or args.model_path
    started = int(time.time())

    # ---- 错误 → OpenAI 风格 / errors → OpenAI style ----
    @app.exception_handler(RequestError)
    async def _request_error(request, exc: RequestError):
        return error_response(exc.message, exc.status_code)

    @app.exception_handler(ValueError)
    async def _value_error(request, exc: ValueError):
        return error_response(str(exc), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        return error_response(str(exc.detail), exc.status_code)

    @app.exception_handler(Exception)
    async def _internal_error(request, exc: Exception):
        # 兜底：一个没料到的错误也要回 OpenAI 风格的错误体并记下来，服务器继续服务。
        # Last resort: an unexpected error still gets an OpenAI-style body and a log line; serving goes on.
        logging.getLogger("minisgl.server").exception("internal error on %s", request.url.path)
        return error_response(f"internal server error: {type(exc).__name__}: {exc}", 500)

    @app.exception_handler(ClientDisconnected)
    async def _gone(request, exc):
        return Response(status_code=499)  # 客户端已走，没人看 / nobody is listening

    # ---- 生成 / generation ----
    @app.post("/generate")
    async def generate(request: Request):
        body = await parse_body(request, GenerateRequest)
        obj = GenerateReqInput(text=body.text, input_ids=body.input_ids, sampling_params=body.sampling_params,
                               stream=body.stream, rid=body.rid, return_logprob=body.return_logprob,
                               top_logprobs_num=body.top_logprobs_num, lora_path=body.lora_path)
        is_batch, reqs, _ = tm.normalize(obj)
        updates = tm.generate(reqs, request, stream=body.stream)

        def shape(upd):
            out = {"text": upd["text"], "output_ids": upd["output_ids"], "meta_info": upd["meta_info"]}
            if is_batch:
                out["index"] = upd["index"]
            return out

        # 服务器拒绝（队列满、后端没了，带状态码）是错误；其它 abort 照常放在 meta_info 里返回（同离线 Engine）。
        # A refusal (queue full, backend gone: it carries a status code) is an error; any other abort
        # is returned in meta_info, as the offline Engine does.
        if body.stream:
            return await openai_api.stream_events(updates, lambda upd: [sse(shape(upd))], lambda: [], refusal)
        finals = await openai_api.collect(updates, len(reqs))
        for upd in finals:
            if refusal(upd):
                raise refusal(upd)
        results = [{k: v for k, v in shape(u).items() if k != "index"} for u in finals]
        return JSONResponse(results if is_batch else results[0])

    # 认得的模型名：对外的名字、路径、目录名，以及很多客户端默认发的 "default"。
    # Accepted model names: the served name, the path, its folder name, and "default" (many clients send it).
    known_models = {model_name, args.model_path, os.path.basename(os.path.normpath(args.model_path)), "default"}

    def check_model(name: Optional[str]) -> Optional[str]:
        """model 字段 → LoRA 适配器名（"name" 或 "base:name"）或 None。The adapter the model names, or None."""
        return openai_api.model_to_lora(name, known_models, tm.lora_names, model_name)

    @app.post("/v1/completions")
    async def v1_completions(request: Request):
        body = await parse_body(request, openai_api.CompletionRequest)
        lora = check_model(body.model)
        return await openai_api.completions(tm, body, request, body.model if lora else model_name, lora_path=lora)

    @app.post("/v1/chat/completions")
    async def v1_chat_completions(request: Request):
        body = await parse_body(request, openai_api.ChatCompletionRequest)
        lora = check_model(body.model)
        return await openai_api.chat_completions(tm, body, request, body.model if lora else model_name,
                                                 lora_path=lora)

    # ---- 信息 / information ----
    @app.get("/v1/models")
    async def v1_models():
        base = {"id": model_name, "object": "model", "created": started, "owned_by": "minisgl",
                "root": args.model_path, "max_model_len": tm.context_len}
        # LoRA 适配器各占一行（"model": "name" 或 "base:name" 选用它）。One entry per LoRA adapter.
        loras = [{"id": name, "object": "model", "created": started, "owned_by": "minisgl", "root": path,
                  "parent": model_name, "max_model_len": tm.context_len}
                 for name, path in args.lora_adapters().items()]
        return {"object": "list", "data": [base, *loras]}

    @app.get("/get_model_info")
    async def get_model_info():
        return {"model_path": args.model_path, "tokenizer_path": args.tokenizer_path, "served_model_name": model_name,
                "is_generation": True, "context_length": tm.context_len, "vocab_size": tm.vocab_size}

    @app.get("/get_server_info")
    async def get_server_info():
        stats = await tm.get_scheduler_stats()
        server_args = dataclasses.asdict(args)
        server_args["api_key"] = "***" if args.api_key else None  # 不回显密钥 / never echo the key
        return {**stats, "model_path": args.model_path, "server_args": server_args, "version": _version(),
                "scheduler_pid": info.get("pid"), "scheduler_pids": info.get("scheduler_pids")}

    @app.get("/health")
    async def health():
        # 真正的存活检查：调度进程能生成一个 token 才算健康。Healthy only if the scheduler can generate.
        if await tm.health_generate(HEALTH_TIMEOUT_S):
            return Response(status_code=200)
        return error_response(tm.dead or "the scheduler did not generate a token in time", 503)

    # ---- 管理 / maintenance ----
    @app.api_route("/flush_cache", methods=["POST", "GET"])
    async def flush_cache():
        if await tm.flush_cache():
            return {"success": True, "message": "Cache flushed."}
        return error_response("the cache can be flushed only when no request is running or queued", 400)

    @app.post("/abort_request")
    async def abort_request(request: Request):
        body = await parse_body(request, AbortRequest)
        return {"success": True, "aborted": tm.abort_by_prefix(body.rid)}

    @app.get("/metrics")
    async def metrics():
        if tm.metrics is None:
            return error_response("metrics are off; start the server with --enable-metrics", 404)
        from prometheus_client import CONTENT_TYPE_LATEST

        await tm.get_scheduler_stats()  # 顺便更新 Gauge / refreshes the gauges
        return Response(tm.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(GuardMiddleware, api_key=args.api_key, max_request_bytes=args.max_request_bytes)
    return app


def _version() -> str:
    import minisgl

    return minisgl.__version__
