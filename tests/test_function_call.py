"""函数调用：<tool_call> 解析器、OpenAI 响应组装、真的服务器把 tools 交给 chat 模板。

What each part proves (and what it does not):
  1. Parser units: the Qwen-format parser finds calls in whole text and in streamed text cut at
     *every* kind of boundary (the same result for any chunking), handles several calls, and turns
     malformed JSON, unknown tools and unclosed tags back into plain text — never a crash.
  2. Response assembly, at the unit level: the real FastAPI app (`create_app`) and the real
     `chat_completions` code run behind the `openai` client, but the TokenizerManager is a stub whose
     "detokenized text" is a fixed string containing tool calls. This proves the request validation,
     the chat template with tools, the parsing and the OpenAI shapes (ChatCompletion,
     ChatCompletionMessageToolCall, streamed delta.tool_calls, finish_reason "tool_calls"). It does
     NOT prove a model emits tool calls: the tiny random model never will.
  3. A real `minisgl serve` with a tools-aware (Qwen-style) chat template: the server's prompt has
     exactly the tokens of the template rendered with the tools (so the tools reached the model), a
     multi-turn conversation with assistant `tool_calls` and `role: "tool"` messages reaches the
     template too, and whatever the model writes comes back as a valid ChatCompletion. Unsupported
     tool_choice values are a clear 400.
"""
import json
import random

import httpx
import pytest

from minisgl.function_call_parser import Qwen25Detector, ToolCallItem, make_detector
from minisgl.server import openai_api
from minisgl.testing import make_tiny_checkpoint
from tests.test_server import ServerProc, post

# 一个 Qwen2.5 格式的 chat 模板（自己写的精简版）：tools 写进系统提示，调用与工具结果按 Qwen 的标签渲染。
# A compact Qwen2.5-format chat template (written for this test): tools go into the system prompt,
# calls and tool results are rendered with Qwen's tags.
TOOLS_CHAT_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": <function-name>, "
    "\"arguments\": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' %}"
    "{%- elif message.role == 'assistant' and message.tool_calls %}"
    "{{- '<|im_start|>assistant' }}{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}{%- set f = tool_call.function %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + f.name + '\", \"arguments\": ' + (f.arguments | tojson) + '}\\n</tool_call>' }}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "查询天气 / current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
TOOLS = [WEATHER, TIME]
CALL_TEXT = ('好的，我查一下。\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>\n'
             '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')


# ======== 1. 解析器 / the parser ========
def feed(detector, pieces):
    text, calls = "", []
    for p in pieces:
        r = detector.parse_streaming_increment(p)
        text, calls = text + r.normal_text, calls + r.calls
    r = detector.flush()
    return text + r.normal_text, calls + r.calls


def random_pieces(text, rng):
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 12))))
    return [text[i:j] for i, j in zip([0] + cuts, cuts + [len(text)])]


CASES = {
    "two calls": (CALL_TEXT, "好的，我查一下。",
                  [ToolCallItem(0, "get_weather", '{"city": "北京"}'), ToolCallItem(1, "get_time", "{}")]),
    "no call": ("床前明月光 <b>疑是</b> a < b", "床前明月光 <b>疑是</b> a < b", []),
    "text after": ('<tool_call>{"name": "get_time", "arguments": {}}</tool_call>\n\n好了', "好了",
                   [ToolCallItem(0, "get_time", "{}")]),
    "bad json": ("hi <tool_call>{not json}</tool_call> bye", "hi <tool_call>{not json}</tool_call> bye", []),
    "unknown tool": ('<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',
                     '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>', []),
    "no name": ('<tool_call>{"arguments": {}}</tool_call>', '<tool_call>{"arguments": {}}</tool_call>', []),
    "args not an object": ('<tool_call>{"name": "get_time", "arguments": [1]}</tool_call>',
                           '<tool_call>{"name": "get_time", "arguments": [1]}</tool_call>', []),
    "args as a json string": ('<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"上海\\"}"}</tool_call>',
                              "", [ToolCallItem(0, "get_weather", '{"city": "上海"}')]),
    "unclosed": ('先说一句 <tool_call>\n{"name": "get_time", "arg', '先说一句 <tool_call>\n{"name": "get_time", "arg', []),
    "half a tag at the end": ("结尾 <tool_ca", "结尾 <tool_ca", []),
    "bad then good": ('<tool_call>{x}</tool_call>\n<tool_call>{"name": "get_time"}</tool_call>',
                      "<tool_call>{x}</tool_call>", [ToolCallItem(0, "get_time", "{}")]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_parse_whole_and_streamed_at_any_boundary(case):
    text, want_text, want_calls = CASES[case]
    names = ["get_weather", "get_time"]
    res = Qwen25Detector(names).detect_and_parse(text)
    assert (res.normal_text, res.calls) == (want_text, want_calls)
    rng = random.Random(case)
    chunkings = [[text], list(text)] + [random_pieces(text, rng) for _ in range(100)]  # 含逐字符 / one char each too
    for pieces in chunkings:
        assert feed(Qwen25Detector(names), pieces) == (want_text, want_calls), pieces


def test_streaming_releases_text_early_and_calls_once_closed():
    d = Qwen25Detector(["get_weather"])
    assert d.parse_streaming_increment("好的 <tool").normal_text == "好的"  # "<tool" 与空白先扣住 / held back
    r = d.parse_streaming_increment('_call>\n{"name": "get_weather", ')
    assert r.normal_text == "" and r.calls == []  # 标签内：等闭合 / inside: wait for the end tag
    r = d.parse_streaming_increment('"arguments": {"city": "北京"}}\n</tool_call>')
    assert r.calls == [ToolCallItem(0, "get_weather", '{"city": "北京"}')]
    assert d.flush().normal_text == ""
    assert d.has_tool_call("x <tool_call>") and not d.has_tool_call("x <tool")


def test_without_tool_names_any_name_is_accepted_and_unknown_parser_is_refused():
    assert Qwen25Detector().detect_and_parse('<tool_call>{"name": "x", "arguments": {}}</tool_call>').calls
    assert isinstance(make_detector(["a"], "qwen3"), Qwen25Detector)
    with pytest.raises(ValueError, match="unknown tool-call parser"):
        make_detector(["a"], "llama9")


# ======== 2. 响应组装（桩 TokenizerManager）/ response assembly with a stub TokenizerManager ========
@pytest.fixture(scope="module")
def tools_checkpoint(tmp_path_factory):
    from transformers import AutoTokenizer

    # 工具说明很长（512 词的小分词器把英文切得很碎）：上下文放到 2048。Tool prompts are long: a 2048 context.
    path = make_tiny_checkpoint(str(tmp_path_factory.mktemp("qwen3-tools")), arch="qwen3",
                                max_position_embeddings=2048)
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = TOOLS_CHAT_TEMPLATE
    tok.save_pretrained(path)
    return path


class StubTM:
    """TokenizerManager 的替身：真的分词器与 normalize，但“反分词出来的文字”是给定的字符串。

    A stand-in for the TokenizerManager: the real tokenizer and normalize(), but the "detokenized
    text" is a given string, streamed in pieces of `piece` characters (cumulative, as the real one).
    """

    def __init__(self, path, text, piece=3):
        from minisgl.utils import load_tokenizer

        self.tokenizer = load_tokenizer(path)
        self.context_len, self.vocab_size = 2048, len(self.tokenizer)
        self.text, self.piece = text, piece
        self.prompts = []  # 收到的 prompt（token ids）/ the prompts received
        self.metrics = None
        self.lora_names = []  # 没有 LoRA 适配器 / no LoRA adapters

    def normalize(self, obj):
        from minisgl.tokenizer_manager import normalize_requests

        return normalize_requests(self.tokenizer, obj, self.vocab_size, self.context_len)

    async def generate(self, reqs, request=None, stream=False):
        for i, r in enumerate(reqs):
            self.prompts.append(r.input_ids)
            cuts = list(range(self.piece, len(self.text), self.piece)) + [len(self.text)]
            for n, end in enumerate(cuts):
                last = end == len(self.text)
                meta = {"id": r.rid, "finish_reason": {"type": "stop", "matched": 0} if last else None,
                        "prompt_tokens": len(r.input_ids), "completion_tokens": n + 1, "cached_tokens": 0}
                yield {"index": i, "rid": r.rid, "text": self.text[:end], "output_ids": list(range(n + 1)),
                       "meta_info": meta, "finished": last}


def stub_client(path, text, piece=3):
    from fastapi.testclient import TestClient
    from openai import OpenAI

    from minisgl.server.http_server import create_app
    from minisgl.server_args import ServerArgs

    tm = StubTM(path, text, piece)
    app = create_app(tm, ServerArgs(model_path=path, served_model_name="m"), {})
    http = TestClient(app)
    return tm, OpenAI(base_url="http://testserver/v1", api_key="EMPTY", http_client=http, max_retries=0), http


def test_tool_calls_come_back_as_openai_types(tools_checkpoint):
    from openai.types.chat import ChatCompletion, ChatCompletionMessageToolCall

    tm, client, _ = stub_client(tools_checkpoint, CALL_TEXT)
    messages = [{"role": "user", "content": "北京天气怎么样？"}]
    out = client.chat.completions.create(model="m", messages=messages, tools=TOOLS)
    assert isinstance(out, ChatCompletion)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "好的，我查一下。"
    calls = choice.message.tool_calls
    assert all(isinstance(c, ChatCompletionMessageToolCall) for c in calls)
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "北京"}), ("get_time", {})]
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("call_") and c.type == "function" for c in calls)
    # 模板确实收到了 tools：prompt 就是带 tools 渲染出来的那串 token。The template did receive the tools.
    want = tm.tokenizer.apply_chat_template(messages, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert tm.prompts[-1] == tm.tokenizer.encode(want, add_special_tokens=False)
    assert "get_weather" in tm.tokenizer.decode(tm.prompts[-1])
    # parallel_tool_calls=False：只返回第一个。Only the first call.
    one = client.chat.completions.create(model="m", messages=messages, tools=TOOLS, parallel_tool_calls=False)
    assert [c.function.name for c in one.choices[0].message.tool_calls] == ["get_weather"]
    # tool_choice="none"：模板看不到 tools，输出原样是 content。"none": no tools in the prompt, text as is.
    none = client.chat.completions.create(model="m", messages=messages, tools=TOOLS, tool_choice="none")
    assert none.choices[0].message.content == CALL_TEXT and not none.choices[0].message.tool_calls
    assert none.choices[0].finish_reason == "stop" and "get_weather" not in tm.tokenizer.decode(tm.prompts[-1])


@pytest.mark.parametrize("piece", [1, 2, 5, 7, 100])
def test_streamed_tool_calls_assemble_into_the_same_message(tools_checkpoint, piece):
    from openai.types.chat import ChatCompletionChunk

    _, client, _ = stub_client(tools_checkpoint, CALL_TEXT, piece)
    messages = [{"role": "user", "content": "北京天气怎么样？"}]
    chunks = list(client.chat.completions.create(model="m", messages=messages, tools=TOOLS, stream=True))
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    calls = {}  # 客户端的标准拼法：按 index 累加 / how clients assemble deltas: by index
    for c in chunks:
        for tc in c.choices[0].delta.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            slot["id"] = slot["id"] or tc.id
            slot["name"] += tc.function.name or ""
            slot["arguments"] += tc.function.arguments or ""
    assert content == "好的，我查一下。"
    assert [(calls[i]["name"], json.loads(calls[i]["arguments"])) for i in sorted(calls)] == [
        ("get_weather", {"city": "北京"}), ("get_time", {})]
    assert all(calls[i]["id"].startswith("call_") for i in calls)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)


def test_malformed_call_stays_content(tools_checkpoint):
    text = "我来调用 <tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": </tool_call>"
    _, client, _ = stub_client(tools_checkpoint, text)
    out = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], tools=TOOLS)
    assert out.choices[0].message.content == text and not out.choices[0].message.tool_calls
    assert out.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                 tools=TOOLS, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert not any(c.choices[0].delta.tool_calls for c in chunks)


def test_multi_turn_tool_messages_reach_the_template(tools_checkpoint):
    tm, client, _ = stub_client(tools_checkpoint, "北京今天晴。")
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}}
    messages = [{"role": "user", "content": "北京天气？"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": '{"weather": "晴"}'}]
    out = client.chat.completions.create(model="m", messages=messages, tools=TOOLS)
    assert out.choices[0].message.content == "北京今天晴。" and out.choices[0].finish_reason == "stop"
    prompt = tm.tokenizer.decode(tm.prompts[-1])
    # arguments 从 JSON 字符串变回对象再渲染：模板里是 {"city": "北京"}，不是加了引号的字符串。
    # arguments are parsed back into an object before rendering: no doubly quoted string.
    assert '{"name": "get_weather", "arguments": {"city": "北京"}}' in prompt
    assert '<tool_response>\n{"weather": "晴"}\n</tool_response>' in prompt


@pytest.mark.parametrize("body,match", [
    ({"tools": TOOLS, "tool_choice": "required"}, "tool_choice 'required' is not supported"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
     "tool_choice a named function ('get_time') is not supported"),
    ({"tool_choice": "auto"}, "tool_choice needs tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "strict": True}}]}, "strict function calling"),
    ({"tools": [{"type": "retrieval"}]}, "tools.0.type"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
     "messages[1].tool_calls[0].function.arguments is not valid JSON"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {}}]}]}, "function.name is required"),
])
def test_bad_tool_requests_are_400(tools_checkpoint, body, match):
    _, _, http = stub_client(tools_checkpoint, "x")
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], **body})
    assert r.status_code == 400 and match in r.json()["error"]["message"], r.text


def test_chat_message_without_tools_is_unchanged():
    assert openai_api.chat_message(CALL_TEXT, None) == ({"role": "assistant", "content": CALL_TEXT}, False)


# ======== 3. 真的服务器 / a real server ========
@pytest.fixture(scope="module")
def server(tools_checkpoint, tmp_path_factory):
    s = ServerProc(tools_checkpoint, tmp_path_factory.mktemp("server-tools"), "--served-model-name", "m")
    try:
        yield s.wait_ready()
    finally:
        s.stop()


def test_real_server_renders_tools_and_answers_a_valid_chat_completion(server, tools_checkpoint):
    from openai import OpenAI
    from openai.types.chat import ChatCompletion, ChatCompletionChunk
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tools_checkpoint)
    client = OpenAI(base_url=server.url + "/v1", api_key="EMPTY", max_retries=0, timeout=60)
    messages = [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "北京天气怎么样？"}]
    kw = dict(model="m", messages=messages, max_tokens=12, temperature=0)
    out = client.chat.completions.create(**kw, tools=TOOLS)
    assert isinstance(out, ChatCompletion) and out.choices[0].message.role == "assistant"
    # prompt 的 token 数正好是“带 tools 渲染”的结果：tools 确实进了提示词。The tools did reach the prompt.
    with_tools = tok.apply_chat_template(messages, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    without = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert out.usage.prompt_tokens == len(tok.encode(with_tools, add_special_tokens=False))
    assert out.usage.prompt_tokens > len(tok.encode(without, add_special_tokens=False))
    # 随机小模型不会写 <tool_call>：它的文字原样是 content，与原生 /generate 逐字相同。
    # The random model writes no <tool_call>: its text is the content, equal to native /generate.
    native = post(server, "/generate", {"input_ids": tok.encode(with_tools, add_special_tokens=False),
                                        "sampling_params": {"max_new_tokens": 12, "temperature": 0}}).json()
    assert out.choices[0].message.content == native["text"] and not out.choices[0].message.tool_calls
    assert out.choices[0].finish_reason in ("stop", "length")
    chunks = list(client.chat.completions.create(**kw, tools=TOOLS, stream=True))
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == native["text"]
    # 多轮：assistant 的 tool_calls 与 role "tool" 的结果都进了模板。Multi-turn history reaches the template.
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}}
    history = messages + [{"role": "assistant", "content": None, "tool_calls": [call]},
                          {"role": "tool", "tool_call_id": "call_1", "content": '{"weather": "晴"}'}]
    again = client.chat.completions.create(**{**kw, "messages": history}, tools=TOOLS)
    rendered = [dict(m) for m in history]
    rendered[2] = {"role": "assistant", "content": "",
                   "tool_calls": [{**call, "function": {"name": "get_weather", "arguments": {"city": "北京"}}}]}
    text = tok.apply_chat_template(rendered, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert "<tool_response>" in text
    assert again.usage.prompt_tokens == len(tok.encode(text, add_special_tokens=False))
    r = post(server, "/v1/chat/completions", {"messages": messages, "tools": TOOLS, "tool_choice": "required"})
    assert r.status_code == 400 and "tool_choice 'required'" in r.json()["error"]["message"]
    stats = httpx.get(server.url + "/get_server_info").json()
    assert stats["num_running_reqs"] == 0 and stats["protected_kv_tokens"] == 0
