"""logprobs：与 HF 的 log_softmax 逐 token 对比（1e-4），并经过真的 HTTP 服务器。

What these tests prove:
  - Engine (CPU, float32): every output token's logprob and the top-5 equal log_softmax of HF's
    logits for the same sequence (one teacher-forced HF forward over prompt + output) within 1e-4 —
    for Qwen3 and Llama, with paging + chunked prefill, and with a pool so small that requests are
    retracted and re-prefilled midway (their logprobs must still line up with their tokens).
  - The values are of the *raw* distribution: sampling at temperature 2 with top_k still returns
    HF's untempered log_softmax.
  - Requests that do not ask get no logprob keys (and cost nothing: gather_logprobs is not called).
  - Through `minisgl serve`: /generate returns the Engine's values; /v1/completions and
    /v1/chat/completions parse into the `openai` client's types with the same numbers, streaming too.
  - Bad values are a clear 400 / ValueError, and nothing leaks.
"""
import json

import httpx
import pytest
import torch

from minisgl import Engine as _Engine
from minisgl.io_struct import TokenizedGenerateReqInput
from minisgl.sampling import SamplingParams
from tests.conftest import assert_pool_whole
from tests.test_hf_equivalence import make_prompts
from tests.test_server import ServerProc, post, sse_events

K = 5
GREEDY = {"max_new_tokens": 12, "temperature": 0}


def Engine(path, **kw):
    return _Engine(path, device="cpu", dtype="float32", **kw)


_HF = {}


def hf_logprobs(path, ids):
    """HF 的 teacher-forced 前向：每个位置下一个 token 的 log_softmax [len(ids), V]。"""
    from transformers import AutoModelForCausalLM

    if path not in _HF:
        _HF[path] = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = _HF[path](torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


def check_against_hf(path, prompt_ids, out, k=K, tol=1e-4):
    out_ids, meta = out["output_ids"], out["meta_info"]
    lps, tops = meta["output_token_logprobs"], meta["output_top_logprobs"]
    assert len(lps) == len(tops) == len(out_ids) > 0
    ref = hf_logprobs(path, list(prompt_ids) + list(out_ids))
    for t, tid in enumerate(out_ids):
        row = ref[len(prompt_ids) - 1 + t]  # 预测第 t 个输出 token 的那一行 / the row that predicts output t
        lp, lid = lps[t]
        assert lid == tid and abs(lp - row[tid].item()) < tol, (t, lp, row[tid].item())
        ref_vals, ref_ids = row.topk(k)
        assert len(tops[t]) == k
        for (v, i), rv, ri in zip(tops[t], ref_vals.tolist(), ref_ids.tolist()):
            assert abs(v - rv) < tol
            assert i == ri or abs(row[i].item() - rv) < tol  # 近乎并列时顺序可以不同 / near-ties may swap


# ======== 离线 Engine 对 HF / the offline Engine against HF ========
VARIANTS = {
    "default": {},
    "page4-chunk16": {"page_size": 4, "chunked_prefill_size": 16},
    # 小 KV 池 + 激进接纳：必然 retraction，被退回的请求重新 prefill 后 logprob 仍要对齐。
    # A tiny pool and eager admission force retraction; re-prefilled requests must stay aligned.
    "tiny-pool": {"max_total_tokens": 192, "schedule_conservativeness": 0.05},
}


@pytest.mark.parametrize("name,variant", [("qwen3", v) for v in VARIANTS] + [("llama", "default")])
def test_greedy_logprobs_match_hf(checkpoint, name, variant):
    path = checkpoint(name)
    engine = Engine(path, **VARIANTS[variant])
    prompts = make_prompts(engine.tokenizer)  # 16 个 prompt / 16 prompts
    outs = engine.generate(input_ids=prompts, sampling_params={"max_new_tokens": 16, "temperature": 0},
                           return_logprob=True, top_logprobs_num=K)
    for ids, out in zip(prompts, outs):
        check_against_hf(path, ids, out)
        # 贪心：抽中的就是 top-1。Greedy: the chosen token is the top-1.
        assert out["meta_info"]["output_token_logprobs"][0] == out["meta_info"]["output_top_logprobs"][0][0]
    if variant == "tiny-pool":
        assert engine.scheduler.get_stats()["num_retractions"] > 0
    assert_pool_whole(engine)


@pytest.fixture(scope="module")
def engine(checkpoint):
    e = Engine(checkpoint("qwen3"))
    yield e
    e.shutdown()


def test_logprobs_are_of_the_raw_distribution(engine, checkpoint):
    """温度 2、top_k=3 抽样：返回的仍是 HF 未经温度的 log_softmax。Sampling does not change the values."""
    ids = engine.tokenizer.encode("床前明月光")
    out = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 10, "temperature": 2.0, "top_k": 3,
                                                           "seed": 1, "repetition_penalty": 1.3},
                          return_logprob=True, top_logprobs_num=3)
    check_against_hf(checkpoint("qwen3"), ids, out, k=3)


def test_only_requests_that_ask_get_logprobs(engine):
    prompts = ["床前明月光", "Shall I compare thee", "推理引擎", "To be"]
    outs = engine.generate(prompts, GREEDY, return_logprob=[True, False, True, True], top_logprobs_num=[2, 0, 0, 20])
    assert [len(o["meta_info"]["output_top_logprobs"][0]) for o in (outs[0], outs[3])] == [2, 20]
    assert "output_token_logprobs" not in outs[1]["meta_info"] and "output_top_logprobs" not in outs[1]["meta_info"]
    assert "output_top_logprobs" not in outs[2]["meta_info"]  # top_logprobs_num=0：只有抽中的 / only the chosen
    for o in (outs[0], outs[2], outs[3]):
        assert [t for _, t in o["meta_info"]["output_token_logprobs"]] == o["output_ids"]
    plain = engine.generate(prompts[1], GREEDY)  # 不要 logprob 的结果不受影响 / unchanged for the others
    assert plain["output_ids"] == outs[1]["output_ids"]
    # n > 1：每个样本都有自己的 logprobs。Every sample of n gets its own.
    many = engine.generate("床前", {"max_new_tokens": 6, "temperature": 1.0, "n": 3, "seed": 3}, return_logprob=True)
    for o in many:
        assert [t for _, t in o["meta_info"]["output_token_logprobs"]] == o["output_ids"]
    assert_pool_whole(engine)


def test_streaming_deltas_carry_their_logprobs(engine):
    ref = engine.generate("床前明月光", GREEDY, return_logprob=True, top_logprobs_num=3)
    lps, tops, ids = [], [], []
    for d in engine.generate("床前明月光", GREEDY, stream=True, return_logprob=True, top_logprobs_num=3):
        assert len(d["meta_info"]["output_token_logprobs"]) == len(d["output_ids"])  # 与增量对齐 / aligned
        ids += d["output_ids"]
        lps += d["meta_info"]["output_token_logprobs"]
        tops += d["meta_info"]["output_top_logprobs"]
    assert ids == ref["output_ids"]
    assert lps == pytest.approx(ref["meta_info"]["output_token_logprobs"])
    assert [[t for _, t in c] for c in tops] == [[t for _, t in c] for c in ref["meta_info"]["output_top_logprobs"]]


@pytest.mark.parametrize("kw,match", [
    ({"return_logprob": True, "top_logprobs_num": 21}, "top_logprobs_num must be in [0, 20]"),
    ({"return_logprob": True, "top_logprobs_num": -1}, "top_logprobs_num must be in [0, 20]"),
    ({"return_logprob": True, "top_logprobs_num": True}, "top_logprobs_num must be an integer"),
    ({"return_logprob": "yes"}, "return_logprob must be a boolean"),
    ({"top_logprobs_num": 3}, "top_logprobs_num needs return_logprob=True"),
    ({"return_logprob": [True, False, True]}, "3 values of return_logprob for 1 prompts"),
])
def test_bad_logprob_arguments(engine, kw, match):
    with pytest.raises(ValueError, match=match.replace("[", r"\[").replace("]", r"\]")):
        engine.generate("床前", GREEDY, **kw)


def test_scheduler_rejects_bad_top_logprobs_without_leaking(engine):
    """直接喂调度器（笔记本的用法）：坏值以 abort 结束，不抛异常、不泄漏。Straight into the scheduler."""
    sched = engine.scheduler
    req = sched.add_request(TokenizedGenerateReqInput("bad-lp", None, [5, 6, 7], SamplingParams(max_new_tokens=4),
                                                      return_logprob=True, top_logprobs_num=99))
    sched.run_until_idle()
    assert req.finished_reason.to_json()["type"] == "abort" and "top_logprobs_num" in req.finished_reason.message
    assert_pool_whole(engine)


def test_server_mode_deltas_slice_cumulative_logprobs():
    """Engine(mode="server") 的流式：服务器发累计值，客户端切成与 output_ids 对齐的增量。"""
    from minisgl.engine import _ServerHandle

    class Resp:
        def iter_lines(self):
            for n in (1, 3):
                lps = [[-0.5, 10 + j] for j in range(n)]
                yield ('data: {"text": "%s", "output_ids": %s, "meta_info": {"finish_reason": null, '
                       '"output_token_logprobs": %s}}' % ("x" * n, [10 + j for j in range(n)], lps))
            yield "data: [DONE]"

        def close(self):
            pass

    deltas = list(_ServerHandle._deltas(Resp()))
    assert [d["output_ids"] for d in deltas] == [[10], [11, 12]]
    assert [d["meta_info"]["output_token_logprobs"] for d in deltas] == [[[-0.5, 10]], [[-0.5, 11], [-0.5, 12]]]


# ======== 经过 HTTP 服务器 / through the HTTP server ========
@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    s = ServerProc(checkpoint("qwen3"), tmp_path_factory.mktemp("server-lp"), "--served-model-name", "m")
    try:
        yield s.wait_ready()
    finally:
        s.stop()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="EMPTY", max_retries=0, timeout=60)


def _chat_ids(tokenizer, messages):
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


def test_native_generate_equals_engine(server, engine):
    ref = engine.generate("床前明月光", GREEDY, return_logprob=True, top_logprobs_num=K)
    body = {"text": "床前明月光", "sampling_params": GREEDY, "return_logprob": True, "top_logprobs_num": K}
    out = post(server, "/generate", body).json()
    assert out["output_ids"] == ref["output_ids"]
    for (a, i), (b, j) in zip(out["meta_info"]["output_token_logprobs"], ref["meta_info"]["output_token_logprobs"]):
        assert i == j and abs(a - b) < 1e-5
    for got, want in zip(out["meta_info"]["output_top_logprobs"], ref["meta_info"]["output_top_logprobs"]):
        assert [t for _, t in got] == [t for _, t in want]
        assert [v for v, _ in got] == pytest.approx([v for v, _ in want], abs=1e-5)
    # 原生流式：meta_info 里是累计值，最后一条等于非流式。Native streaming: cumulative, the last equals non-stream.
    with httpx.stream("POST", server.url + "/generate", json={**body, "stream": True}, timeout=60) as r:
        events = [e for e in sse_events(r) if e != "[DONE]"]
    last = json.loads(events[-1])
    # 第二次请求命中前缀缓存，浮点求和顺序不同：差在 1e-6 量级。The rerun hits the prefix cache: ~1e-6 noise.
    assert [t for _, t in last["meta_info"]["output_token_logprobs"]] == out["output_ids"]
    assert [v for v, _ in last["meta_info"]["output_token_logprobs"]] == pytest.approx(
        [v for v, _ in out["meta_info"]["output_token_logprobs"]], abs=1e-5)
    assert len(last["meta_info"]["output_top_logprobs"]) == len(out["output_ids"])
    batch = post(server, "/generate", {"text": ["床前", "To be"], "sampling_params": GREEDY,
                                       "return_logprob": [False, True]}).json()
    assert "output_token_logprobs" not in batch[0]["meta_info"]
    assert len(batch[1]["meta_info"]["output_token_logprobs"]) == len(batch[1]["output_ids"])


def test_openai_completions_logprobs(server, client):
    # 同一段 prompt 请求多次：后面几次命中前缀缓存，数值差在 1e-6 量级（所以容差 1e-5）。
    # Repeated prompts hit the prefix cache: values differ by ~1e-6 (hence the 1e-5 tolerance).
    from openai.types import Completion

    native = post(server, "/generate", {"text": "Shall I compare thee", "sampling_params": GREEDY,
                                        "return_logprob": True, "top_logprobs_num": 3}).json()
    out = client.completions.create(model="m", prompt="Shall I compare thee", max_tokens=12, temperature=0, logprobs=3)
    assert isinstance(out, Completion)
    lp = out.choices[0].logprobs
    want = [v for v, _ in native["meta_info"]["output_token_logprobs"]]
    assert lp.token_logprobs == pytest.approx(want, abs=1e-5) and len(lp.tokens) == len(want)
    assert all(len(d) <= 3 for d in lp.top_logprobs)
    assert all(max(d.values()) == pytest.approx(native_top[0][0], abs=1e-5)
               for d, native_top in zip(lp.top_logprobs, native["meta_info"]["output_top_logprobs"]))
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    chunks = list(client.completions.create(model="m", prompt="Shall I compare thee", max_tokens=12, temperature=0,
                                            logprobs=3, stream=True))
    streamed = [c.choices[0].logprobs for c in chunks if c.choices[0].logprobs is not None]
    assert sum((s.token_logprobs for s in streamed), []) == pytest.approx(lp.token_logprobs, abs=1e-5)
    assert sum((s.text_offset for s in streamed), []) == lp.text_offset
    assert "".join(c.choices[0].text for c in chunks) == out.choices[0].text
    none = client.completions.create(model="m", prompt="hi", max_tokens=3)
    assert none.choices[0].logprobs is None
    zero = client.completions.create(model="m", prompt="hi", max_tokens=3, logprobs=0)
    assert len(zero.choices[0].logprobs.token_logprobs) == 3 and zero.choices[0].logprobs.top_logprobs is None


def test_openai_chat_logprobs(server, client, engine):
    from openai.types.chat import ChatCompletion

    messages = [{"role": "user", "content": "床前明月光"}]
    params = {**GREEDY, "ignore_eos": True}
    ids = _chat_ids(engine.tokenizer, messages)
    native = post(server, "/generate", {"input_ids": ids, "sampling_params": params, "return_logprob": True,
                                        "top_logprobs_num": 2}).json()
    kw = dict(model="m", messages=messages, max_tokens=12, temperature=0, logprobs=True, top_logprobs=2,
              extra_body={"ignore_eos": True})
    out = client.chat.completions.create(**kw)
    assert isinstance(out, ChatCompletion)
    content = out.choices[0].logprobs.content
    assert [c.logprob for c in content] == pytest.approx([v for v, _ in native["meta_info"]["output_token_logprobs"]],
                                                         abs=1e-5)
    assert all(len(c.top_logprobs) == 2 and c.top_logprobs[0].logprob == pytest.approx(c.logprob, abs=1e-5)
               for c in content)  # 贪心：抽中的就是 top-1 / greedy: chosen = top-1
    # bytes 是每个 token 真正的字节：拼起来就是整段输出（半个汉字的 token 也一样）。
    # `bytes` are each token's real bytes: joined, they are the whole output (half-character tokens too).
    joined = bytes(b for c in content for b in c.bytes).decode("utf-8", errors="replace")
    assert joined == engine.tokenizer.decode(native["output_ids"], skip_special_tokens=False)
    chunks = list(client.chat.completions.create(**kw, stream=True))
    streamed = [x for c in chunks if c.choices and c.choices[0].logprobs for x in c.choices[0].logprobs.content]
    assert [x.logprob for x in streamed] == pytest.approx([c.logprob for c in content], abs=1e-5)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == out.choices[0].message.content
    plain = client.chat.completions.create(model="m", messages=messages, max_tokens=3)
    assert plain.choices[0].logprobs is None


@pytest.mark.parametrize("path,body,match", [
    ("/v1/completions", {"prompt": "hi", "logprobs": 21}, "logprobs must be in [0, 20]"),
    ("/v1/completions", {"prompt": "hi", "logprobs": -1}, "logprobs must be in [0, 20]"),
    ("/v1/completions", {"prompt": "hi", "logprobs": True}, "logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 3},
     "top_logprobs requires logprobs=true"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 21},
     "top_logprobs must be in [0, 20]"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "logprobs": 3}, "logprobs"),
    ("/generate", {"text": "hi", "return_logprob": True, "top_logprobs_num": 21}, "top_logprobs_num must be in [0, 20]"),
    ("/generate", {"text": "hi", "return_logprob": "yes"}, "return_logprob"),
    ("/generate", {"text": "hi", "logprob_start_len": 0}, "logprob_start_len: unknown field"),
])
def test_bad_logprob_requests_are_400(server, path, body, match):
    r = post(server, path, body)
    assert r.status_code == 400 and match in r.json()["error"]["message"], r.text


def test_server_leaks_nothing(server):
    stats = httpx.get(server.url + "/get_server_info").json()
    assert stats["num_running_reqs"] == 0 and stats["protected_kv_tokens"] == 0
    assert stats["used_kv_tokens"] == stats["evictable_kv_tokens"]
