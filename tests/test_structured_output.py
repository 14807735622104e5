"""结构化输出：json_schema / regex / response_format（第 11 章）。Structured output, end to end.

Every constrained output must parse and validate (jsonschema) or fully match (re.fullmatch), end
with finish_reason "stop", and leave the KV pool whole; a bad schema or regex is a clear 4xx and
the engine / server keeps serving. Runs on the bundled tiny model (minisgl.Engine() with no path).
"""
import json
import re

import httpx
import jsonschema
import pytest

import minisgl
from minisgl import SamplingParams
from minisgl.constrained import InvalidGrammarError, create_grammar_backend, grammar_key
from minisgl.io_struct import TokenizedGenerateReqInput
from minisgl.server_args import BUNDLED_MODEL
from tests.conftest import assert_pool_whole
from tests.test_reliability import assert_pool_whole as assert_server_pool_whole
from tests.test_server import ServerProc

# 有界的 schema：字符串有 maxLength、整数有范围、enum 有限，输出长度因此有上界。
# Bounded schemas (maxLength, integer ranges, enums), so every output has a bounded length.
SCHEMAS = [
    {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"enum": ["北京", "上海", "London"]}},
     "required": ["name", "age", "city"]},
    {"type": "object", "properties": {
        "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "minItems": 1, "maxItems": 3}},
     "required": ["ok", "tags"]},
    {"type": "array", "items": {"type": "integer", "minimum": -50, "maximum": 50}, "minItems": 2, "maxItems": 4},
    {"type": "object", "properties": {
        "poem": {"type": "object", "properties": {
            "title": {"type": "string", "minLength": 1, "maxLength": 6},
            "lines": {"type": "integer", "minimum": 4, "maximum": 8}},
            "required": ["title", "lines"]},
        "lang": {"enum": ["zh", "en"]}},
     "required": ["poem", "lang"]},
    {"enum": ["yes", "no", "maybe"]},
]
PROMPTS = ["用户资料：", "Shall I compare thee", "床前明月光", "JSON:"]
REGEXES = [r"[a-z]{3,8}@[a-z]{2,6}\.(com|org)", r"\d{3}-\d{4}", r"(red|green|blue) (cat|dog)s?",
           r"[A-Z][a-z]{1,6}, [0-9]{1,2} (January|May) 20[0-9]{2}"]


@pytest.fixture(scope="module")
def engine():
    e = minisgl.Engine()  # 自带的小模型 / the bundled tiny model
    yield e
    assert_pool_whole(e)
    e.shutdown()


def schema_params(i: int, **extra) -> dict:
    return {"max_new_tokens": 96, "temperature": 0.9, "seed": i, "json_schema": json.dumps(SCHEMAS[i % len(SCHEMAS)]),
            **extra}


# ======== 参数校验 / parameter checks ========
@pytest.mark.parametrize("params,match", [
    ({"json_schema": "{bad", "regex": None}, "json_schema is not valid JSON"),
    ({"json_schema": {"type": "object"}}, "json_schema must be a JSON string"),
    ({"json_schema": "[1, 2]"}, "json_schema must be a JSON object"),
    ({"regex": ""}, "regex must be a non-empty string"),
    ({"regex": 5}, "regex must be a non-empty string"),
    ({"json_schema": "{}", "regex": "a"}, "at most one"),
])
def test_verify_names_the_problem(params, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**params).verify(vocab_size=100)


def test_verify_accepts_and_keys():
    p = SamplingParams(json_schema='{"type": "integer"}').verify(100)
    assert grammar_key(p) == ("json", '{"type": "integer"}')
    assert grammar_key(SamplingParams(regex="a+").verify(100)) == ("regex", "a+")
    assert grammar_key(SamplingParams()) is None


# ======== 后端 / the backend ========
def test_backend_cache_padding_and_errors(engine):
    """缓存命中返回同一个 Future；模型词表比分词器大时，多出来的 id 永远被遮住；错误也缓存。

    A cache hit returns the same Future; ids beyond the tokenizer are always masked; errors are cached.
    """
    tok = engine.tokenizer
    vocab = len(tok) + 40  # 像 lm_head 为对齐补了行 / as if lm_head were padded for alignment
    backend = create_grammar_backend("xgrammar", tok, vocab, {tok.eos_token_id})
    try:
        fut = backend.get_cached_or_future_value(("regex", r"[0-9]+"))
        assert backend.get_cached_or_future_value(("regex", r"[0-9]+")) is fut
        g = fut.result(timeout=60).copy()
        mask = g.allocate_vocab_mask(vocab, 1, "cpu")
        g.fill_vocab_mask(mask, 0)
        allowed = [t for t in range(vocab) if (int(mask[0, t // 32]) >> (t % 32)) & 1]
        assert allowed and all(t < len(tok) for t in allowed)
        assert all(tok.decode([t]).strip("0123456789") == "" for t in allowed)
        assert g.accept_token(allowed[0]) and not g.is_terminated()
        bad = backend.get_cached_or_future_value(("regex", "(abc"))
        with pytest.raises(InvalidGrammarError, match="regex could not be compiled.*parenthesis"):
            bad.result(timeout=60)
        assert backend.get_cached_or_future_value(("regex", "(abc")) is bad
    finally:
        backend.shutdown()


# ======== Engine：JSON Schema ========
def test_fifty_schema_outputs_all_validate(engine):
    n = 50
    outs = engine.generate([PROMPTS[i % len(PROMPTS)] for i in range(n)], [schema_params(i) for i in range(n)])
    texts = set()
    for i, out in enumerate(outs):
        assert out["meta_info"]["finish_reason"]["type"] == "stop", (i, out)
        value = json.loads(out["text"])
        jsonschema.validate(value, SCHEMAS[i % len(SCHEMAS)])
        texts.add(out["text"])
    assert len(texts) >= 30, texts  # 不是 50 个一样的输出 / not fifty copies of one output
    assert_pool_whole(engine)


def test_greedy_and_mixed_batch(engine):
    """无约束的请求与有约束的同批：它的输出与单独跑时完全一样（掩码只动自己的行）。

    An unconstrained request batched with constrained ones gives exactly its solo output.
    """
    plain = {"max_new_tokens": 16, "temperature": 0}
    alone = engine.generate("床前明月光", plain)
    greedy = {"max_new_tokens": 96, "temperature": 0, "json_schema": json.dumps(SCHEMAS[0])}
    outs = engine.generate(["床前明月光", "用户资料：", "床前明月光"], [greedy, plain, greedy])
    jsonschema.validate(json.loads(outs[0]["text"]), SCHEMAS[0])
    assert outs[0]["text"] == outs[2]["text"]  # 贪心可复现 / greedy is reproducible
    again = engine.generate(["用户资料：", "床前明月光"], [plain, plain])
    assert outs[1]["output_ids"] == again[0]["output_ids"]
    assert again[1]["output_ids"] == alone["output_ids"]


def test_stream_ignore_eos_and_min_new_tokens(engine):
    schema = json.dumps({"enum": ["a", "b"]})
    chunks = list(engine.generate("JSON:", {"max_new_tokens": 40, "json_schema": schema, "seed": 3}, stream=True))
    assert json.loads("".join(c["text"] for c in chunks)) in ("a", "b")
    assert chunks[-1]["meta_info"]["finish_reason"]["type"] == "stop"
    # 语法走完就结束，ignore_eos 也一样；min_new_tokens 让不了语法。The grammar's end wins over both.
    for extra in ({"ignore_eos": True}, {"min_new_tokens": 30}):
        out = engine.generate("JSON:", {"max_new_tokens": 40, "json_schema": schema, **extra})
        assert json.loads(out["text"]) in ("a", "b") and out["meta_info"]["finish_reason"]["type"] == "stop", out


def test_retraction_keeps_the_grammar():
    """KV 池很小：被 retraction 的请求带着匹配器状态回到队列，输出照样合法。Retracted requests keep their matcher."""
    with minisgl.Engine(max_total_tokens=192, schedule_conservativeness=0.05) as e:
        outs = e.generate(["用户资料：" * 3] * 8, [schema_params(5 * i) for i in range(8)])
        for out in outs:
            assert out["meta_info"]["finish_reason"]["type"] == "stop", out
            jsonschema.validate(json.loads(out["text"]), SCHEMAS[0])
        assert e.scheduler.get_stats()["num_retractions"] > 0, "the tiny pool was meant to force retraction"
        assert_pool_whole(e)


# ======== Engine：正则 / regex ========
def test_regex_outputs_fullmatch(engine):
    n = 24
    params = [{"max_new_tokens": 48, "temperature": 1.0, "seed": i, "regex": REGEXES[i % len(REGEXES)]} for i in range(n)]
    outs = engine.generate([PROMPTS[i % len(PROMPTS)] for i in range(n)], params)
    for i, out in enumerate(outs):
        assert out["meta_info"]["finish_reason"]["type"] == "stop", (i, out)
        assert re.fullmatch(REGEXES[i % len(REGEXES)], out["text"]), (i, out["text"])
    assert len({o["text"] for o in outs}) >= n // 2


# ======== 坏输入 / bad input ========
@pytest.mark.parametrize("params,match", [
    ({"json_schema": json.dumps({"type": "foo"})}, 'json_schema could not be compiled: Unsupported type "foo"'),
    ({"regex": "(abc"}, "regex could not be compiled: .*parenthesis is not closed"),
    ({"regex": "[z-a]"}, "regex could not be compiled"),
])
def test_bad_grammar_aborts_with_400_and_engine_goes_on(engine, params, match):
    out = engine.generate("床前", {"max_new_tokens": 8, **params})
    reason = out["meta_info"]["finish_reason"]
    assert reason["type"] == "abort" and reason["status_code"] == 400 and re.search(match, reason["message"]), reason
    assert out["output_ids"] == []
    assert_pool_whole(engine)
    ok = engine.generate("床前", {"max_new_tokens": 8, "regex": "[0-9]{2}"})
    assert re.fullmatch("[0-9]{2}", ok["text"])


def test_malformed_schema_is_a_value_error(engine):
    with pytest.raises(ValueError, match="json_schema is not valid JSON"):
        engine.generate("床前", {"json_schema": "{not json"})


def test_abort_while_compiling_leaks_nothing(engine):
    sched = engine.scheduler
    ids = engine.tokenizer.encode("床前")
    params = SamplingParams(max_new_tokens=8, json_schema=json.dumps({"type": "string", "maxLength": 77}))
    sched.add_request(TokenizedGenerateReqInput("grammar-abort", None, ids, params))
    assert [r.rid for r, _ in sched.grammar_queue] == ["grammar-abort"]
    sched.abort_request("grammar-abort")
    outs = sched.run_until_idle()
    reasons = [f for o in outs for rid, f in zip(o.out.rids, o.out.finished_reasons) if rid == "grammar-abort"]
    assert reasons and reasons[-1]["type"] == "abort"
    assert not sched.grammar_queue
    sched.check_pool_whole()


# ======== HTTP：response_format ========
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ServerProc(BUNDLED_MODEL, tmp_path_factory.mktemp("structured"), "--served-model-name", "m")
    try:
        yield s.wait_ready()
    finally:
        s.stop()


def chat(server, **body):
    body = {"messages": [{"role": "user", "content": "给我一个 JSON"}], "max_tokens": 96, **body}
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)


def test_openai_response_format(server):
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="EMPTY", max_retries=0, timeout=60)
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMAS[0], "strict": True}}
    r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "介绍一个人"}],
                                       max_tokens=96, temperature=0.8, seed=1, n=3, response_format=fmt)
    for c in r.choices:
        assert c.finish_reason == "stop"
        jsonschema.validate(json.loads(c.message.content), SCHEMAS[0])
    obj = chat(server, response_format={"type": "json_object"}, seed=2, temperature=0.7).json()
    assert obj["choices"][0]["finish_reason"] == "stop"
    assert isinstance(json.loads(obj["choices"][0]["message"]["content"]), dict)
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMAS[2]}}
    comp = client.completions.create(model="m", prompt="Numbers:", max_tokens=48, temperature=0.9, seed=4,
                                     stream=True, extra_body={"response_format": fmt})
    text = "".join(ch.choices[0].text for ch in comp if ch.choices)
    jsonschema.validate(json.loads(text), SCHEMAS[2])
    native = httpx.post(server.url + "/generate", timeout=60, json={
        "text": "Email:", "sampling_params": {"max_new_tokens": 32, "regex": REGEXES[0], "temperature": 0}}).json()
    assert re.fullmatch(REGEXES[0], native["text"]) and native["meta_info"]["finish_reason"]["type"] == "stop"
    regex = chat(server, regex=REGEXES[1]).json()
    assert re.fullmatch(REGEXES[1], regex["choices"][0]["message"]["content"])
    assert chat(server, response_format={"type": "text"}, max_tokens=4).status_code == 200


BAD_HTTP = [
    ("/v1/chat/completions", {"response_format": {"type": "json_schema", "json_schema": {"name": "x",
                                                                                        "schema": {"type": "foo"}}}},
     400, 'json_schema could not be compiled: Unsupported type "foo"'),
    ("/v1/completions", {"regex": "(abc"}, 400, "regex could not be compiled"),
    ("/generate", {"sampling_params": {"regex": "a{3,1}"}}, 400, "regex could not be compiled"),
    ("/generate", {"sampling_params": {"json_schema": "{oops"}}, 400, "json_schema is not valid JSON"),
    ("/v1/chat/completions", {"response_format": {"type": "json_schema"}}, 400, "response_format.json_schema.schema"),
    ("/v1/chat/completions", {"response_format": {"type": "json"}}, 400, "response_format.type"),
    ("/v1/chat/completions", {"response_format": {"type": "json_object"}, "regex": "a"}, 400, "at most one"),
]


@pytest.mark.parametrize("path,body,status,match", BAD_HTTP, ids=[b[3] for b in BAD_HTTP])
def test_bad_grammar_over_http(server, path, body, status, match):
    base = {"/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
            "/v1/completions": {"prompt": "hi", "max_tokens": 8}, "/generate": {"text": "hi"}}[path]
    r = httpx.post(server.url + path, json={**base, **body}, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert match in err["message"] and err["code"] == status, err
    good = httpx.post(server.url + "/v1/completions", json={"prompt": "床前", "max_tokens": 2}, timeout=60)
    assert good.status_code == 200  # 仍在服务 / still serving


def test_server_pool_whole_after_grammars(server):
    assert_server_pool_whole(server.url)
