"""重叠调度（第 06 章）：先发射下一批、再处理上一批，结果必须与普通调度一模一样。

The overlap scheduler (chapter 06) launches batch N+1 before it processes batch N. On the GPU that
hides the host's work; on the CPU (forced with enable_overlap_schedule) it must give exactly the
tokens, finish reasons and logprobs of the normal scheduler, free every slot, and survive aborts
of requests whose step is still in flight. The HF-equivalence matrix (tests/test_hf_equivalence.py)
also runs it with chunked prefill, pages and retraction; tests/test_parallel.py with tp=2.
"""
import json

import pytest

from minisgl import Engine
from minisgl.io_struct import TokenizedGenerateReqInput
from minisgl.runner.forward_batch import ForwardMode
from minisgl.sampling import SamplingParams
from minisgl.server_args import ServerArgs
from tests.conftest import assert_pool_whole

PROMPTS = ["床前明月光，", "Shall I compare thee", "推理引擎把请求分批", "🙂", "To be, or not to be"]


@pytest.fixture(scope="module")
def engines():
    # 自带的小模型是训练过的：会出 EOS、会重复，惩罚真的改变输出。The bundled model is trained: it ends
    # with EOS and repeats itself, so penalties really change its output.
    normal, overlap = Engine(disable_overlap_schedule=True), Engine(enable_overlap_schedule=True)
    assert not normal.scheduler.enable_overlap and overlap.scheduler.enable_overlap
    yield normal, overlap
    for e in (normal, overlap):
        assert_pool_whole(e)
        e.shutdown()


def _both(engines, prompts, params):
    outs = [e.generate(prompts, params) for e in engines]
    for e in engines:
        assert_pool_whole(e)
    return outs


def _strip(outs):
    return [(o["output_ids"], o["meta_info"]["finish_reason"], o["text"]) for o in outs]


@pytest.mark.parametrize("params", [
    {"max_new_tokens": 20, "temperature": 0},
    {"max_new_tokens": 20, "temperature": 0, "ignore_eos": True},
    # 惩罚与 min_new_tokens 读请求自己的输出：重叠调度在这里先等上一步。Penalties read the request's own output.
    {"max_new_tokens": 20, "temperature": 0, "frequency_penalty": 2.0, "presence_penalty": 2.0},
    {"max_new_tokens": 20, "temperature": 0, "repetition_penalty": 2.0},
    {"max_new_tokens": 20, "temperature": 0, "min_new_tokens": 12},
    # 每个带 seed 的请求有自己的发生器：与批里的其他请求、与调度方式都无关。Seeded rows own their generator.
    {"max_new_tokens": 20, "temperature": 0.9, "top_p": 0.9, "seed": 7},
], ids=["greedy", "ignore-eos", "freq-presence", "repetition", "min-new-tokens", "seeded-top-p"])
def test_same_tokens_as_the_normal_scheduler(engines, params):
    normal, overlap = _both(engines, PROMPTS, params)
    assert _strip(overlap) == _strip(normal)
    assert all(o["meta_info"]["completion_tokens"] > 0 for o in overlap)


def test_min_new_tokens_releases_eos_on_time(engines):
    """min_new_tokens = k，而不加限制时正好在第 k 个位置出 EOS：两种调度都必须恰好在那里结束。

    With min_new_tokens = k where the unconstrained greedy run emits EOS at index k, both schedulers
    must stop right there (reading a stale output count would hide EOS one step too long).
    """
    free = engines[0].generate(PROMPTS, {"max_new_tokens": 40, "temperature": 0})
    cases = [(p, len(o["output_ids"]) - 1) for p, o in zip(PROMPTS, free)
             if o["meta_info"]["finish_reason"]["type"] == "stop" and len(o["output_ids"]) >= 3]
    assert cases, "the bundled model should end some prompts with EOS"
    for prompt, k in cases:
        outs = [e.generate(prompt, {"max_new_tokens": 40, "temperature": 0, "min_new_tokens": k}) for e in engines]
        assert [len(o["output_ids"]) for o in outs] == [k + 1, k + 1], prompt
        assert outs[0]["output_ids"] == outs[1]["output_ids"]


def test_stop_strings_and_stop_tokens(engines):
    ref = engines[0].generate(PROMPTS[0], {"max_new_tokens": 16, "temperature": 0, "ignore_eos": True})
    params = {"max_new_tokens": 16, "temperature": 0, "ignore_eos": True,
              "stop_token_ids": [ref["output_ids"][5]], "stop": [ref["text"][4:6] or "x"]}
    normal, overlap = _both(engines, PROMPTS, params)
    assert _strip(overlap) == _strip(normal)
    assert normal[0]["meta_info"]["finish_reason"]["type"] == "stop"


def test_logprobs_line_up(engines):
    """logprob 在发射时算好，随那一批一起交回：与普通调度完全相同。Logprobs travel with their batch."""
    params = {"max_new_tokens": 10, "temperature": 0}
    outs = [e.generate(PROMPTS[:3], params, return_logprob=True, top_logprobs_num=3) for e in engines]
    for a, b in zip(*outs):
        assert a["output_ids"] == b["output_ids"]
        ma, mb = a["meta_info"], b["meta_info"]
        assert len(mb["output_token_logprobs"]) == len(b["output_ids"]) == len(mb["output_top_logprobs"])
        for (lp_a, id_a), (lp_b, id_b) in zip(ma["output_token_logprobs"], mb["output_token_logprobs"]):
            assert id_a == id_b and lp_a == pytest.approx(lp_b, abs=1e-5)
        for top_a, top_b in zip(ma["output_top_logprobs"], mb["output_top_logprobs"]):
            assert [t for _, t in top_a] == [t for _, t in top_b]
            assert [v for v, _ in top_a] == pytest.approx([v for v, _ in top_b], abs=1e-5)


def test_structured_output(engines):
    pytest.importorskip("xgrammar")
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    params = {"max_new_tokens": 40, "temperature": 0.9, "seed": 3, "json_schema": json.dumps(schema)}
    normal, overlap = _both(engines, PROMPTS[:3], params)
    assert _strip(overlap) == _strip(normal)
    # 语法每步都要读上一个 token：重叠调度先等上一步，所以结果仍是合法的 JSON。The grammar needs the last token.
    for o in overlap:
        if o["meta_info"]["finish_reason"]["type"] == "stop":
            assert isinstance(json.loads(o["text"])["n"], int)


def _scheduler(checkpoint, overlap=True, **kw):
    from minisgl.scheduler.scheduler import Scheduler

    # 明确指定两种调度（GPU 上缺省是重叠）。Both explicit: on a GPU the default is overlap.
    flags = {"enable_overlap_schedule": True} if overlap else {"disable_overlap_schedule": True}
    return Scheduler(ServerArgs(model_path=checkpoint("qwen3"), **flags, **kw).resolve())


def _add(sched, rid, ids, **params):
    sched.add_request(TokenizedGenerateReqInput(rid, None, ids, SamplingParams(temperature=0, **params)))


def test_results_lag_one_step_and_no_step_is_wasted_on_length(checkpoint):
    """第 1 步只发射 prefill；之后每步交回上一步的 token。按长度结束的请求不会多算一步。

    Step 1 only launches the prefill; from then on each step returns the previous step's token.
    A request that ends by length costs no extra step: its last in-flight token is known to be its last.
    """
    sched = _scheduler(checkpoint)
    _add(sched, "a", [5, 6, 7, 8], max_new_tokens=4, ignore_eos=True)
    steps = sched.run_until_idle()
    assert steps[0].forward_mode == ForwardMode.EXTEND and len(steps[0].out) == 0
    assert sched.inflight is None
    tokens = [ids for s in steps for ids in s.out.output_ids]
    assert sum(len(t) for t in tokens) == 4
    assert sched.forward_ct == 4  # 1 次 prefill + 3 次 decode，与普通调度相同 / as the normal scheduler
    assert steps[-1].forward_mode is None  # 最后一步只处理在路上的那一批 / the last step only processes
    sched.check_pool_whole()


def test_eos_finish_costs_at_most_one_extra_row(checkpoint):
    ref = _scheduler(checkpoint, overlap=False)
    _add(ref, "a", [5, 6, 7, 8], max_new_tokens=12, ignore_eos=True)
    out = [t for s in ref.run_until_idle() for ids in s.out.output_ids for t in ids]
    stop = out[4]
    for overlap in (False, True):
        sched = _scheduler(checkpoint, overlap)
        assert sched.enable_overlap is overlap
        _add(sched, "a", [5, 6, 7, 8], max_new_tokens=12, ignore_eos=True, stop_token_ids=[stop])
        got = [t for s in sched.run_until_idle() for ids in s.out.output_ids for t in ids]
        assert got == out[: out.index(stop) + 1]
        # 重叠时，结束的那一步之后已经发射了一步：它的 token 被丢弃，槽位照样还回来。
        # With overlap one more step was already launched; its token is dropped and its slot returned.
        assert sched.forward_ct == len(got) + (1 if overlap else 0)
        sched.check_pool_whole()


def test_abort_while_the_step_is_in_flight(checkpoint):
    ref = _scheduler(checkpoint, overlap=False)
    sched = _scheduler(checkpoint)
    for s in (ref, sched):
        for i in range(3):
            _add(s, f"r{i}", [5 + i, 6, 7, 8, 9], max_new_tokens=16, ignore_eos=True)
    expected = _tokens(ref.run_until_idle())
    for _ in range(4):
        sched.step()
    assert sched.inflight is not None and sched.inflight.mode == ForwardMode.DECODE
    sched.abort_request("r1")  # r1 的这一步还在路上 / r1's step is still in flight
    got, reasons = _collect(sched.run_until_idle())
    assert reasons["r1"]["type"] == "abort"
    assert got["r0"] == expected["r0"][3:] and got["r2"] == expected["r2"][3:]  # 前 3 个 token 在前 4 步里 / in the first 4 steps
    sched.check_pool_whole()


def _launch_log(sched):
    """记下发射与处理的先后：[("run", batch), ("process", batch), ...]。Log launches and processing in order."""
    log, run, process = [], sched.run_batch, sched._process_launched

    def spy_run(batch, mode):
        launched = run(batch, mode)
        log.append(("run", launched))
        return launched

    def spy_process(launched, out):
        log.append(("process", launched))
        return process(launched, out)

    sched.run_batch, sched._process_launched = spy_run, spy_process
    return log


def _collect(steps):
    """每个请求的 token 与结束原因。Each request's tokens and finish reason over the steps."""
    got, reasons = {}, {}
    for step in steps:
        for rid, ids, reason in zip(step.out.rids, step.out.output_ids, step.out.finished_reasons):
            got.setdefault(rid, []).extend(ids)
            if reason:
                reasons[rid] = reason
    return got, reasons


def _tokens(steps):
    return _collect(steps)[0]


def test_a_prefill_does_not_stop_the_pipeline(checkpoint):
    """prefill（整段或分块的一块）之后，下一批在处理它之前就发射：prefill 的账在发射时记（_admit_extend）。

    After a prefill, whole or one chunk, the next batch is launched before the prefill is processed:
    its bookkeeping happens at launch (_admit_extend). The chunks of one prompt follow each other
    without a wait, and the tokens are those of the normal scheduler.
    """
    kw = dict(chunked_prefill_size=16, max_prefill_tokens=16)
    ref, sched = _scheduler(checkpoint, overlap=False, **kw), _scheduler(checkpoint, **kw)
    log = _launch_log(sched)
    for s in (ref, sched):
        _add(s, "long", list(range(5, 45)), max_new_tokens=6, ignore_eos=True)  # 16 + 16 + 8 个 token / three chunks
        _add(s, "short", [7, 8, 9], max_new_tokens=5, ignore_eos=True)
    expected, got = _tokens(ref.run_until_idle()), _tokens(sched.run_until_idle())
    assert got == expected and len(got["long"]) == 6 and len(got["short"]) == 5
    launched = [b for kind, b in log if kind == "run"]
    modes = [b.mode for b in launched]
    assert modes[:3] == [ForwardMode.EXTEND] * 3 and ForwardMode.DECODE in modes
    assert launched[0].chunked == [True] and launched[1].chunked == [True]
    def at(kind, batch):
        return next(i for i, (k, b) in enumerate(log) if k == kind and b is batch)

    for k, batch in enumerate(launched[:-1]):
        # 第 k+1 批的发射排在第 k 批的处理之前 / batch k+1 is launched before batch k is processed
        assert at("run", launched[k + 1]) < at("process", batch), (k, batch.mode)
    sched.check_pool_whole()


def test_requests_that_end_at_their_first_token(checkpoint):
    """第一个 token 就结束（max_new_tokens=1，或第一个 token 是 stop token）：prefill 在发射时已加入运行批，
    结束时照样交回全部槽位，输出与普通调度相同。

    A request may end at its first token (max_new_tokens=1, or the first token is a stop token)
    although it joined the running batch at launch: the same tokens as the normal scheduler, every
    slot returned, and no decode row for the max_new_tokens=1 request.
    """
    probe = _scheduler(checkpoint, overlap=False)
    _add(probe, "b", [9, 10, 11, 12], max_new_tokens=1)
    first_b = _tokens(probe.run_until_idle())["b"][0]
    ref, sched = _scheduler(checkpoint, overlap=False), _scheduler(checkpoint)
    log = _launch_log(sched)
    for s in (ref, sched):
        _add(s, "a", [5, 6, 7, 8], max_new_tokens=1)
        _add(s, "b", [9, 10, 11, 12], max_new_tokens=8, stop_token_ids=[first_b])
        _add(s, "c", [13, 14, 15], max_new_tokens=5, ignore_eos=True)
    expected, got = _tokens(ref.run_until_idle()), _tokens(sched.run_until_idle())
    assert got == expected and len(got["a"]) == 1 and got["b"] == [first_b] and len(got["c"]) == 5
    decode_rids = {r.rid for kind, b in log if kind == "run" and b.mode == ForwardMode.DECODE for r in b.reqs}
    assert "a" not in decode_rids and "c" in decode_rids
    sched.check_pool_whole()


def test_abort_while_a_prefill_is_in_flight(checkpoint):
    """prefill 已在发射时加入运行批、插进前缀树；它还在路上时被中止：照样以 abort 结束、槽位全部还回，别人不受影响。

    A prefill joined the running batch and the prefix tree at launch; aborting its request while the
    prefill is still in flight ends it with an abort, returns every slot, and leaves the others alone.
    Covers a whole prompt and a middle chunk.
    """
    kw = dict(chunked_prefill_size=16, max_prefill_tokens=16)
    ref = _scheduler(checkpoint, overlap=False, **kw)
    _add(ref, "keep", [7, 8, 9], max_new_tokens=5, ignore_eos=True)
    expected = _tokens(ref.run_until_idle())
    for victim_len in (4, 40):  # 整段 / whole prompt; 40 个 token 的第一块 / the first chunk of 40
        sched = _scheduler(checkpoint, **kw)
        _add(sched, "victim", list(range(5, 5 + victim_len)), max_new_tokens=6, ignore_eos=True)
        step = sched.step()
        assert step.forward_mode == ForwardMode.EXTEND and sched.inflight is not None
        assert [r.rid for r in sched.inflight.reqs] == ["victim"]
        sched.abort_request("victim")  # 它的 prefill 还在路上 / its prefill is still in flight
        _add(sched, "keep", [7, 8, 9], max_new_tokens=5, ignore_eos=True)
        got, reasons = _collect(sched.run_until_idle())
        assert reasons["victim"]["type"] == "abort", victim_len
        assert got["keep"] == expected["keep"], victim_len
        sched.check_pool_whole()


def test_decode_reads_the_device_token_buffer(checkpoint, monkeypatch):
    """decode 的输入来自设备上的 last_token_ids，它每步都必须等于主机上的最后一个输出 token。

    Decode inputs come from last_token_ids on the device; with the normal scheduler (host state
    current) it must equal each request's last output token at every decode step.
    """
    from minisgl.scheduler.scheduler import Scheduler

    sched = _scheduler(checkpoint, overlap=False)
    seen = []
    real = Scheduler._prepare_decode

    def spy(self, reqs):
        fb = real(self, reqs)
        assert fb.input_ids.tolist() == [r.output_ids[-1] for r in reqs]
        seen.append(len(reqs))
        return fb

    monkeypatch.setattr(Scheduler, "_prepare_decode", spy)
    for i in range(3):
        _add(sched, f"r{i}", [9, 8, 7, i + 1], max_new_tokens=6 + i)
    sched.run_until_idle()
    assert seen and max(seen) == 3
    sched.check_pool_whole()


def test_flags():
    assert ServerArgs(device="cpu").resolve().enable_overlap_schedule is False
    assert ServerArgs(device="cpu", enable_overlap_schedule=True).resolve().enable_overlap_schedule is True
    with pytest.raises(ValueError, match="contradict"):
        ServerArgs(device="cpu", enable_overlap_schedule=True, disable_overlap_schedule=True).resolve()
    import argparse

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    ns = parser.parse_args(["--disable-overlap-schedule"])
    assert ns.disable_overlap_schedule is True and ns.enable_overlap_schedule is False


def test_host_copy_of_req_to_token_stays_equal(checkpoint):
    """前缀缓存读主机上的 req_to_token_cpu（GPU 上它与设备表是两份）；每一步两份都必须相同。

    The prefix cache reads the host copy req_to_token_cpu (a separate tensor on GPU machines). Make
    it separate here too, run chunked prefill, pages, prefix hits and overlap, and compare the two
    copies on every row in use after every step; the tokens must not change either.
    """
    kw = dict(page_size=4, chunked_prefill_size=16)
    ref = _scheduler(checkpoint, overlap=False, **kw)
    sched = _scheduler(checkpoint, **kw)
    pool = sched.req_to_token_pool
    if pool.req_to_token_cpu is pool.req_to_token:
        pool.req_to_token_cpu = pool.req_to_token.clone()  # 像 GPU 上一样是两份 / two copies, as on a GPU
    shared = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23]
    for s in (ref, sched):
        for i in range(4):
            _add(s, f"r{i}", shared * 2 + [30 + i] * (i + 1), max_new_tokens=10, ignore_eos=True)
    expected = _tokens(ref.run_until_idle())
    got, checked = {}, 0
    while sched.has_work():
        step = sched.step()
        for rid, ids in zip(step.out.rids, step.out.output_ids):
            got.setdefault(rid, []).extend(ids)
        for req in sched.running_reqs:
            assert pool.req_to_token_cpu[req.req_pool_idx, : req.kv_len].tolist() == \
                pool.req_to_token[req.req_pool_idx, : req.kv_len].cpu().tolist()
            checked += 1
    assert checked > 0 and got == expected
    sched.check_pool_whole()
