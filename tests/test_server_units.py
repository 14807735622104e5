"""服务器的零件，不起进程：反分词管理器、调度循环、OpenAI 适配。Server parts without processes."""
import pytest
import zmq

from minisgl import Engine
from minisgl.detokenizer import DetokenizerManager
from minisgl.io_struct import (
    BatchTokenIDOut, FlushCacheReq, FlushCacheReqOutput, GenerateReqInput, GetInfoReq, GetInfoReqOutput,
)
from minisgl.scheduler.scheduler_process import SchedulerLoop
from minisgl.server import openai_api
from minisgl.tokenizer_manager import RequestError, normalize_requests
from tests.conftest import assert_pool_whole


@pytest.fixture(scope="module")
def engine(checkpoint):
    e = Engine(checkpoint("qwen3"))
    yield e
    e.shutdown()


def tokenized(engine, prompt, params, stream=False, rid=None):
    obj = GenerateReqInput(text=prompt, sampling_params=params, stream=stream, rid=rid)
    return normalize_requests(engine.tokenizer, obj, engine.model_config.vocab_size, engine.model_config.context_len)[1]


@pytest.mark.parametrize("stream", [True, False])
def test_detokenizer_manager_equals_engine(engine, stream):
    prompts = ["床前明月光", "推理引擎🙂🚀", "Shall I compare thee", "To be, or not"]
    params = {"max_new_tokens": 16, "temperature": 0, "ignore_eos": True}
    refs = [engine.generate(p, params)["text"] for p in prompts]
    stop = next(refs[0][i:i + 2] for i in range(2, len(refs[0]) - 2) if refs[0][i:i + 2].strip())
    refs.append(engine.generate(prompts[0], {**params, "stop": stop})["text"])
    reqs = [r for i, p in enumerate(prompts) for r in tokenized(engine, p, params, stream, rid=f"r{i}")]
    reqs += tokenized(engine, prompts[0], {**params, "stop": stop}, stream, rid="stop")
    manager, texts, messages = DetokenizerManager(engine.tokenizer), {}, 0
    for r in reqs:
        engine.scheduler.add_request(r)
    while engine.scheduler.has_work():
        out = manager.handle(engine.scheduler.step().out)
        messages += len(out)
        for rid, text in zip(out.rids, out.texts):
            texts[rid] = texts.get(rid, "") + text
    assert [texts[f"r{i}"] for i in range(4)] + [texts["stop"]] == refs
    assert not manager.states and not manager.held  # 结束的请求不留状态 / nothing kept after the end
    if not stream:
        assert messages == 2 * len(reqs)  # 第一个 token + 结束 / first token + the end
    assert_pool_whole(engine)


def test_scheduler_loop_queue_limit_and_control(engine):
    ctx = zmq.Context()
    names = {n: f"inproc://{n}-{id(engine)}" for n in ("sched", "detok", "tok")}
    pulls = {n: ctx.socket(zmq.PULL) for n in names}
    for n, s in pulls.items():
        s.bind(names[n])
    pushes = {n: ctx.socket(zmq.PUSH) for n in names}
    for n, s in pushes.items():
        s.connect(names[n])
    loop = SchedulerLoop(engine.scheduler, pulls["sched"], pushes["detok"], pushes["tok"], max_queued=2)
    params = {"max_new_tokens": 4, "temperature": 0}
    for i in range(5):
        pushes["sched"].send_pyobj(tokenized(engine, "床前", params, rid=f"q{i}")[0])
    pushes["sched"].send_pyobj(GetInfoReq("info-1"))
    loop.run_once()
    info = pulls["tok"].recv_pyobj()
    assert isinstance(info, GetInfoReqOutput) and info.id == "info-1" and info.stats["num_queued_reqs"] == 2
    while engine.scheduler.has_work():
        loop.run_once()
    outs = []
    while pulls["detok"].poll(0):
        outs.append(pulls["detok"].recv_pyobj())
    reasons = {rid: r for o in outs for rid, r in zip(o.rids, o.finished_reasons) if r}
    rejected = sorted(rid for rid, r in reasons.items() if r.get("status_code") == 503)
    assert rejected == ["q2", "q3", "q4"] and all("overloaded" in reasons[r]["message"] for r in rejected)
    assert {reasons["q0"]["type"], reasons["q1"]["type"]} <= {"length", "stop"}
    pushes["sched"].send_pyobj(FlushCacheReq("flush-1"))
    loop.run_once()
    assert pulls["tok"].recv_pyobj() == FlushCacheReqOutput("flush-1", True)
    assert_pool_whole(engine)
    for s in list(pulls.values()) + list(pushes.values()):
        s.close(linger=0)
    ctx.term()


def test_rejected_output_is_well_formed():
    out = BatchTokenIDOut()
    out.add_rejected("x", "full", 3, 503)
    assert len(out) == 1 and all(len(getattr(out, f)) == 1 for f in out.__dataclass_fields__)


def test_usage_counts_each_prompt_once():
    def upd(p, c, cached):
        return {"meta_info": {"prompt_tokens": p, "completion_tokens": c, "cached_tokens": cached}}

    finals = [upd(5, 3, 0), upd(5, 4, 0), upd(7, 2, 6), upd(7, 2, 6)]
    u = openai_api.usage(finals, [0, 0, 1, 1])
    assert u == {"prompt_tokens": 12, "completion_tokens": 11, "total_tokens": 23,
                 "prompt_tokens_details": {"cached_tokens": 6}}


def test_chat_messages_checked(engine):
    Msg = openai_api.ChatMessage
    with pytest.raises(RequestError, match="unknown role 'robot'"):
        openai_api.chat_prompt_ids(engine.tokenizer, [Msg(role="robot", content="hi")])
    with pytest.raises(RequestError, match="only text"):
        openai_api.chat_prompt_ids(engine.tokenizer, [Msg(role="user", content=[{"type": "image_url"}])])
    parts = openai_api.chat_prompt_ids(engine.tokenizer, [Msg(role="user", content=[{"type": "text", "text": "hi"}])])
    assert parts == openai_api.chat_prompt_ids(engine.tokenizer, [Msg(role="user", content="hi")])


def test_abort_error_codes():
    def upd(reason, tokens):
        return {"meta_info": {"finish_reason": reason, "completion_tokens": tokens}}

    assert openai_api.abort_error(upd({"type": "length", "length": 3}, 3)) is None
    assert openai_api.abort_error(upd({"type": "abort", "message": "m", "status_code": 503}, 0)).status_code == 503
    assert openai_api.abort_error(upd({"type": "abort", "message": "too big"}, 0)).status_code == 400
    assert openai_api.abort_error(upd({"type": "abort", "message": "oom"}, 5)).status_code == 503


# ======== TokenizerManager（不起调度进程：测试自己扮演调度器）/ the test plays the scheduler ========
class FakeRequest:
    def __init__(self):
        self.gone = False
        self.checks = 0

    async def is_disconnected(self):
        self.checks += 1
        return self.gone


def test_tokenizer_manager_disconnect_aborts_and_dead_backend_fails(engine, tmp_path):
    import asyncio

    from minisgl.io_struct import AbortReq, BatchStrOut
    from minisgl.server.launch import IpcNames
    from minisgl.tokenizer_manager import ClientDisconnected, TokenizerManager

    ipc = IpcNames.create()
    ctx = zmq.Context()
    sched = ctx.socket(zmq.PULL)
    sched.bind(ipc.scheduler)
    to_tm = ctx.socket(zmq.PUSH)
    to_tm.connect(ipc.tokenizer)

    async def main():
        tm = TokenizerManager(None, ipc, engine.tokenizer, 512, engine.model_config.vocab_size)
        tm.start()
        try:
            await scenario(tm)
        finally:
            tm.close()

    async def scenario(tm):
        # 1) 非流式请求等待中客户端走了 → ClientDisconnected + AbortReq。A client leaves while waiting.
        req = tokenized(engine, "床前", {"max_new_tokens": 4}, rid="gone")[0]
        fake = FakeRequest()
        fake.gone = True
        with pytest.raises(ClientDisconnected):
            async for _ in tm.generate([req], fake):
                pass
        assert sched.recv_pyobj().rid == "gone" and isinstance(sched.recv_pyobj(), AbortReq)
        assert tm.rid_to_state == {}
        # 2) 更新按累计值送达；流式开始后不再查断开。Cumulative updates; no disconnect checks once streaming.
        req = tokenized(engine, "床前", {"max_new_tokens": 4}, stream=True, rid="s")[0]
        fake = FakeRequest()
        gen = tm.generate([req], fake, stream=True)
        to_tm.send_pyobj(BatchStrOut(["s"], ["床"], [[1]], [{"completion_tokens": 1}], [False]))
        first = await gen.__anext__()
        assert first["text"] == "床" and not first["finished"]
        checks = fake.checks
        to_tm.send_pyobj(BatchStrOut(["s"], ["前"], [[2]], [{"completion_tokens": 2}], [False]))
        second = await asyncio.wait_for(gen.__anext__(), 5)
        assert second["text"] == "床前" and second["output_ids"] == [1, 2] and fake.checks == checks
        # 3) 后端死了：等待方立刻拿到 abort(503)。The backend died: the waiter gets an abort (503) at once.
        tm.fail_all("the scheduler process died")
        last = await asyncio.wait_for(gen.__anext__(), 5)
        assert last["finished"] and last["meta_info"]["finish_reason"]["status_code"] == 503
        assert not await tm.health_generate(1)

    try:
        asyncio.run(main())
    finally:
        sched.close(linger=0)
        to_tm.close(linger=0)
        ctx.term()
        ipc.cleanup()


def test_sse_event_survives_python_line_splitting():
    """生成的文字里可能有 U+2028、U+2029、NEL：httpx / OpenAI 客户端按 splitlines 切行，事件不能被切开。

    Generated text can hold U+2028, U+2029 or NEL (a random model emits any byte). httpx and the
    OpenAI client split SSE lines with str.splitlines semantics, so these must be escaped, or one
    event arrives as two broken lines (the soak test's rare JSONDecodeError).
    """
    import json

    from httpx._decoders import LineDecoder

    from minisgl.server.openai_api import sse

    text = "床前\u2028明月\x85光\u2029，\x1c\x0b 🙂"
    lines = [line for line in LineDecoder().decode(sse({"text": text})) if line]
    assert len(lines) == 1 and lines[0].startswith("data: ")
    assert json.loads(lines[0][len("data: "):]) == {"text": text}
