"""三进程 HTTP 服务器：OpenAI 客户端、SSE、并发与断开、坏输入。The three-process HTTP server end to end.

Every test talks to a real `python -m minisgl serve` on a free localhost port.
"""
import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from minisgl import Engine
from minisgl.utils import get_free_port

GREEDY = {"max_new_tokens": 12, "temperature": 0}
READY_TIMEOUT_S = 120


class ServerProc:
    """一个 `minisgl serve` 子进程（日志写文件，避免管道写满卡住服务器）。

    A `minisgl serve` subprocess; its output goes to a file, so a full pipe can never block it.
    """

    def __init__(self, model_path: str, log_dir, *flags: str, new_session: bool = False):
        self.port = get_free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"server-{self.port}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "minisgl", "serve", "--model-path", model_path, "--port", str(self.port), *flags],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=new_session)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> "ServerProc":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=30).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        pytest.fail(f"server not healthy after {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def children(self):
        """直接子进程的 pid（读 /proc）。Direct children's pids, from /proc."""
        pids = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        stat = f.read()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                    pids.append(int(d))
        return pids

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    s = ServerProc(checkpoint("qwen3"), tmp_path_factory.mktemp("server"), "--enable-metrics", "--served-model-name", "m")
    try:
        yield s.wait_ready()
    finally:
        s.stop()


@pytest.fixture(scope="module")
def engine(checkpoint):
    e = Engine(checkpoint("qwen3"))
    yield e
    e.shutdown()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="EMPTY", max_retries=0, timeout=60)


def post(server, path, body=None, **kw):
    return httpx.post(server.url + path, json=body, timeout=60, **kw)


def sse_events(resp):
    """手工解析 SSE：返回每个 data: 行的内容。Parse SSE by hand: the payload of every `data:` line."""
    return [line[len("data: "):] for line in resp.iter_lines() if line.startswith("data: ")]


def chat_ids(engine, messages):
    text = engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return engine.tokenizer.encode(text, add_special_tokens=False)


# ======== 启动 / start-up ========
def test_ready_line_and_private_ipc_dir(server):
    # /health 可能比预热后打印的那一行先成功：等这一行出现（最多 30 s）。
    # /health can succeed before the line printed after the warm-up: wait for it (up to 30 s).
    ready = f"minisgl server is ready: http://127.0.0.1:{server.port}"
    deadline = time.monotonic() + 30
    while ready not in (out := server.output()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready in out
    ipc_dir = out.split("ZMQ sockets in ")[1].split()[0]
    assert os.stat(ipc_dir).st_mode & 0o777 == 0o700
    assert sorted(os.listdir(ipc_dir)) == ["detokenizer", "scheduler", "tokenizer"]


def test_info_endpoints(server):
    models = httpx.get(server.url + "/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["max_model_len"] == 512
    info = httpx.get(server.url + "/get_model_info").json()
    assert info["context_length"] == 512 and info["is_generation"]
    stats = httpx.get(server.url + "/get_server_info").json()
    for key in ("num_running_reqs", "num_queued_reqs", "max_total_num_tokens", "used_kv_tokens", "token_usage",
                "evictable_kv_tokens"):
        assert key in stats
    assert stats["server_args"]["api_key"] is None
    assert httpx.get(server.url + "/nope").json()["error"]["code"] == 404


# ======== OpenAI 客户端 / the official openai client ========
def test_openai_completion_equals_offline_engine(server, client, engine):
    ref = engine.generate("床前明月光", GREEDY)
    out = client.completions.create(model="m", prompt="床前明月光", max_tokens=12, temperature=0)
    assert out.choices[0].text == ref["text"]
    assert out.usage.prompt_tokens == ref["meta_info"]["prompt_tokens"]
    assert out.usage.completion_tokens == ref["meta_info"]["completion_tokens"]
    again = client.completions.create(model="m", prompt="床前明月光", max_tokens=12, temperature=0)
    assert again.usage.prompt_tokens_details.cached_tokens > 0  # 前缀缓存命中 / a prefix-cache hit


def test_openai_chat_equals_offline_engine(server, client, engine):
    messages = [{"role": "system", "content": "你是诗人"}, {"role": "user", "content": "床前明月光"}]
    ref = engine.generate(input_ids=chat_ids(engine, messages), sampling_params=GREEDY)
    out = client.chat.completions.create(model="m", messages=messages, max_tokens=12, temperature=0)
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == ref["text"]
    assert out.choices[0].finish_reason in ("stop", "length")
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_openai_streaming(server, client, engine):
    ref = engine.generate("Shall I compare thee", GREEDY)["text"]
    chunks = list(client.completions.create(model="m", prompt="Shall I compare thee", max_tokens=12, temperature=0,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == ref
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    messages = [{"role": "user", "content": "Shall I compare thee"}]
    ref = engine.generate(input_ids=chat_ids(engine, messages), sampling_params=GREEDY)
    chunks = list(client.chat.completions.create(model="m", messages=messages, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ref["text"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == ref["meta_info"]["completion_tokens"]


def test_openai_n_and_seed(server, client, engine):
    out = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=8,
                                         temperature=0, n=2)
    assert [c.index for c in out.choices] == [0, 1]
    assert out.choices[0].message.content == out.choices[1].message.content  # 贪心 / greedy
    kw = dict(model="m", prompt="床前明月光", max_tokens=10, temperature=1.0, n=3, seed=7)
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert len({c.text for c in a.choices}) > 1
    assert a.usage.prompt_tokens == engine.generate("床前明月光", GREEDY)["meta_info"]["prompt_tokens"]  # 只算一次


def test_openai_stop_list(server, client, engine):
    text = engine.generate("床前", {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True})["text"]
    stop = next(text[i:i + 2] for i in range(3, len(text) - 2) if text[i:i + 2].strip())
    out = client.completions.create(model="m", prompt="床前", max_tokens=12, temperature=0, stop=[stop, "never§"],
                                    extra_body={"ignore_eos": True})
    assert out.choices[0].text == text[:text.index(stop)] and out.choices[0].finish_reason == "stop"
    chunks = list(client.completions.create(model="m", prompt="床前", max_tokens=12, temperature=0, stop=stop,
                                            stream=True, extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in chunks) == text[:text.index(stop)]


# ======== 原生接口与手工 SSE / native endpoint and SSE by hand ========
def test_native_generate_shapes(server, engine):
    ref = engine.generate("床前明月光", GREEDY)
    out = post(server, "/generate", {"text": "床前明月光", "sampling_params": GREEDY}).json()
    assert out["text"] == ref["text"] and out["output_ids"] == ref["output_ids"]
    for k in ("id", "finish_reason", "prompt_tokens", "completion_tokens", "cached_tokens"):
        assert k in out["meta_info"]
    ids = engine.tokenizer.encode("Shall I")
    batch = post(server, "/generate", {"input_ids": [ids, ids], "sampling_params": GREEDY}).json()
    assert isinstance(batch, list) and batch[0]["output_ids"] == engine.generate(input_ids=ids,
                                                                                 sampling_params=GREEDY)["output_ids"]


def test_native_stream_by_hand(server, engine):
    ref = engine.generate("床前明月光", GREEDY)
    with httpx.stream("POST", server.url + "/generate", timeout=60,
                      json={"text": "床前明月光", "sampling_params": GREEDY, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    texts = [c["text"] for c in chunks]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))  # 累计文字 / cumulative text
    assert texts[-1] == ref["text"] and chunks[-1]["meta_info"]["finish_reason"] == ref["meta_info"]["finish_reason"]


def test_chat_stream_by_hand(server):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "temperature": 0, "stream": True,
            "n": 2, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    finished = [ch["index"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert sorted(finished) == [0, 1]
    assert chunks[-1]["usage"]["completion_tokens"] == 10


def test_abort_request_endpoint(server):
    body = {"text": "床前", "rid": "to-abort", "stream": True,
            "sampling_params": {"max_new_tokens": 400, "temperature": 0, "ignore_eos": True}}
    with httpx.stream("POST", server.url + "/generate", json=body, timeout=60) as r:
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        assert post(server, "/abort_request", {"rid": "to-abort"}).json()["aborted"] == ["to-abort"]
        events = [line[6:] for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])["meta_info"]
    assert last["finish_reason"]["type"] == "abort" and last["completion_tokens"] < 400


# ======== 坏输入 / bad input ========
LONG_IDS = [5] * 600  # 超过 512 的上下文 / beyond the 512-token context
BAD = [
    ("/v1/chat/completions", b'{"messages": [', 400, "malformed JSON"),
    ("/v1/completions", {"max_tokens": 4}, 400, "prompt"),
    ("/v1/chat/completions", {"max_tokens": 4}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "unknown role 'wizard'"),
    ("/v1/chat/completions", {"messages": []}, 400, "non-empty"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": -1}, 400, "max_tokens must be >= 0"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 100000}, 400, "maximum context length is 512"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 600}, 400,
     "maximum context length"),
    ("/v1/completions", {"prompt": "hi", "temperature": -0.5}, 400, "temperature"),
    ("/v1/completions", {"prompt": "hi", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {"prompt": "hi", "top_p": 1.5}, 400, "top_p"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 0}, 400, "n must be"),
    ("/v1/completions", {"prompt": LONG_IDS}, 400, "context length is 512"),
    ("/v1/completions", {"prompt": "床前明月光" * 200, "max_tokens": 1}, 400, "context length is 512"),
    ("/generate", {"input_ids": LONG_IDS}, 400, "context length is 512"),
    ("/generate", {"text": "hi", "sampling_params": {"temprature": 1}}, 400, "temprature"),
    ("/generate", {}, 400, "exactly one"),
    ("/v1/completions", {"prompt": "hi", "temperature": "hot"}, 400, "temperature"),
    ("/v1/completions", "x" * (2 << 20), 413, "--max-request-bytes"),
    # ---- 类型、空值、编码 / types, empties, encodings ----
    ("/v1/completions", [1, 2], 400, "must be an object"),
    ("/v1/completions", "null", 400, "must be an object"),
    ("/v1/completions", {"prompt": ""}, 400, "the prompt is empty"),
    ("/v1/completions", {"prompt": []}, 400, "non-empty list"),
    ("/generate", {"input_ids": []}, 400, "the prompt is empty"),
    ("/generate", {"text": "a", "input_ids": [1]}, 400, "exactly one"),
    ("/v1/completions", b'{"prompt": "\xff\xfe"}', 400, "malformed JSON"),
    ("/v1/completions", '{"prompt": "\\ud800 lone"}', 400, "lone UTF-16 surrogate"),
    ("/generate", '{"text": "\\udfff"}', 400, "lone UTF-16 surrogate"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "\\ud83d"}]}', 400, "lone UTF-16 surrogate"),
    ("/v1/completions", '{"prompt": "hi", "stop": ["\\ud800"]}', 400, "lone UTF-16 surrogate"),
    ("/v1/chat/completions", {"messages": "hi"}, 400, "messages: Input should be a valid list"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, "messages.0.content"),
    ("/v1/chat/completions", {"messages": [{"content": "hi"}]}, 400, "messages.0.role: Field required"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
     "only text content parts"),
    ("/generate", {"input_ids": ["a"]}, 400, "input_ids"),
    ("/v1/completions", {"prompt": [[1, 2], "a"]}, 400, "prompt"),
    ("/generate", {"text": "hi", "rid": 5}, 400, "rid"),
    ("/generate", {"text": "hi", "stream": 3}, 400, "stream"),
    ("/v1/completions", {"prompt": "hi", "stream_options": {"include_usage": "maybe"}}, 400, "include_usage"),
    # ---- 数值范围 / numeric ranges ----
    ("/v1/completions", {"prompt": "hi", "max_tokens": 1.5}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": "ten"}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 10 ** 30}, 400, "maximum context length"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": -2}, 400,
     "max_tokens must be >= 0"),
    ("/generate", {"text": "hi", "sampling_params": {"max_new_tokens": -3}}, 400, "max_new_tokens"),
    ("/generate", {"text": "hi", "sampling_params": {"top_k": -5}}, 400, "top_k"),
    ("/generate", {"text": "hi", "sampling_params": {"top_k": 0}}, 400, "top_k"),
    ("/generate", {"text": "hi", "sampling_params": {"min_p": 1.5}}, 400, "min_p"),
    ("/generate", {"text": "hi", "sampling_params": {"repetition_penalty": 0}}, 400, "repetition_penalty"),
    ("/v1/completions", {"prompt": "hi", "frequency_penalty": 5}, 400, "frequency_penalty"),
    ("/v1/completions", {"prompt": "hi", "presence_penalty": -5}, 400, "presence_penalty"),
    ("/v1/completions", {"prompt": "hi", "temperature": 1e9}, 400, "temperature"),
    ("/v1/completions", '{"prompt": "hi", "temperature": NaN}', 400, "temperature"),
    ("/v1/completions", '{"prompt": "hi", "top_p": Infinity}', 400, "top_p"),
    ("/v1/completions", {"prompt": "hi", "seed": -1}, 400, "seed"),
    ("/v1/completions", {"prompt": "hi", "seed": 2 ** 70}, 400, "seed"),
    ("/v1/completions", {"prompt": "hi", "n": 1000}, 400, "n must be in [1, 128]"),
    # ---- 列表、词表、未知字段与模型 / lists, vocabulary, unknown fields and models ----
    ("/v1/completions", {"prompt": "hi", "stop": ["x"] * 100}, 400, "at most 32"),
    ("/generate", {"text": "hi", "sampling_params": {"stop": ["a"] * 1000}}, 400, "at most 32"),
    ("/v1/completions", {"prompt": "hi", "stop": 5}, 400, "stop"),
    ("/v1/completions", {"prompt": "hi", "stop": [""]}, 400, "must not be empty"),
    ("/v1/completions", {"prompt": [999999]}, 400, "outside the vocabulary"),
    ("/v1/completions", {"prompt": [-1]}, 400, "outside the vocabulary"),
    ("/generate", {"input_ids": [999999]}, 400, "outside the vocabulary"),
    ("/v1/completions", {"prompt": "hi", "stop_token_ids": [10 ** 9]}, 400, "stop_token_ids out of vocabulary"),
    ("/generate", {"text": ["a", "b"], "sampling_params": [{}, {}, {}]}, 400, "3 sampling_params for 2 prompts"),
    ("/v1/completions", {"prompt": "hi", "foo": 1}, 400, "foo: unknown field"),
    ("/generate", {"text": "hi", "foo": 1}, 400, "foo: unknown field"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json"}},
     400, "response_format.type: Input should be 'text', 'json_object' or 'json_schema'"),
    ("/v1/completions", {"prompt": "hi", "model": "gpt-99"}, 404, "'gpt-99' does not exist"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "model": "gpt-99"}, 404,
     "does not exist"),
    ("/v1/completions", {"prompt": "hi", "logprobs": 21}, 400, "logprobs must be in [0, 20]"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "does not render tools"),
    ("/abort_request", {}, 400, "rid: Field required"),
    ("/nonexistent", {}, 404, "Not Found"),
]
assert len(BAD) >= 40


@pytest.mark.parametrize("path,body,status,match", BAD, ids=[f"{b[0]}:{b[3]}" for b in BAD])
def test_bad_input(server, path, body, status, match):
    if isinstance(body, (bytes, str)):
        r = httpx.post(server.url + path, content=body, timeout=60)
    else:
        r = post(server, path, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "code"} and match in err["message"], err
    good = post(server, "/v1/completions", {"prompt": "床前", "max_tokens": 2})
    assert good.status_code == 200 and good.json()["usage"]["completion_tokens"] == 2  # 仍在服务 / still serving


# ======== 并发与断开 / concurrency and disconnects ========
async def _stream_client(http: httpx.AsyncClient, url: str, i: int, leave_early: bool):
    params = {"temperature": 0, "ignore_eos": True, "max_new_tokens": 400 if leave_early else 16}
    body = {"text": f"请求 {i} 床前明月光", "stream": True, "sampling_params": params}
    events = []
    async with http.stream("POST", url + "/generate", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if leave_early and len(events) == 3:
                    return None  # 离开 with：连接关闭 / leaving `with` closes the connection
    return events


def test_many_streams_with_disconnects_leave_no_leak(server):
    url = server.url
    before = httpx.get(url + "/get_server_info").json()["forward_ct"]

    async def main():
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=100)) as http:
            return await asyncio.gather(*[_stream_client(http, url, i, i % 4 == 0) for i in range(64)])

    results = asyncio.run(main())
    done = [r for r in results if r is not None]
    assert len(done) == 48
    for events in done:
        assert events[-1] == "[DONE]"
        meta = json.loads(events[-2])["meta_info"]
        assert meta["finish_reason"] == {"type": "length", "length": 16}
    deadline = time.monotonic() + 30
    while True:
        stats = httpx.get(url + "/get_server_info").json()
        if stats["num_running_reqs"] == 0 and stats["num_queued_reqs"] == 0:
            break
        assert time.monotonic() < deadline, stats
        time.sleep(0.05)
    # 断开的请求被中止了：远没有跑完 400 步。The leavers were aborted: far fewer than 400 steps ran.
    assert stats["forward_ct"] - before < 200, stats
    assert stats["protected_kv_tokens"] == 0
    assert stats["used_kv_tokens"] == stats["evictable_kv_tokens"]  # 只剩可驱逐的缓存 / only evictable cache
    assert post(server, "/flush_cache").json()["success"]
    stats = httpx.get(url + "/get_server_info").json()
    assert stats["available_kv_tokens"] == stats["max_total_num_tokens"]


def test_metrics(server):
    post(server, "/generate", {"text": "床前", "sampling_params": {"max_new_tokens": 4}})
    text = httpx.get(server.url + "/metrics").text
    for name in ("minisgl:num_running_reqs", "minisgl:num_queue_reqs", "minisgl:token_usage",
                 "minisgl:cache_hit_rate", "minisgl:prompt_tokens_total", "minisgl:generation_tokens_total",
                 "minisgl:time_to_first_token_seconds_bucket", "minisgl:inter_token_latency_seconds_bucket",
                 "minisgl:e2e_request_latency_seconds_bucket"):
        assert name in text, name
