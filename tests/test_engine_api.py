"""Engine 的公开接口（DESIGN.md §3）与坏输入。The Engine's public shape and bad input."""
import pytest
import torch

import minisgl
from minisgl import Engine, SamplingParams
from tests.conftest import assert_pool_whole, hf_greedy


@pytest.fixture(scope="module")
def engine(checkpoint):
    e = Engine(checkpoint("qwen3"))
    yield e
    assert_pool_whole(e)
    e.shutdown()


GREEDY = {"max_new_tokens": 12, "temperature": 0}


def test_shape_single_and_batch(engine):
    out = engine.generate("床前明月光", GREEDY)
    assert set(out) == {"text", "output_ids", "meta_info"}
    meta = out["meta_info"]
    for k in ("id", "finish_reason", "prompt_tokens", "completion_tokens", "cached_tokens"):
        assert k in meta
    assert meta["completion_tokens"] == len(out["output_ids"])
    assert out["text"] == engine.tokenizer.decode(out["output_ids"], skip_special_tokens=True)
    outs = engine.generate(["床前明月光", "Shall I"], GREEDY)
    assert isinstance(outs, list) and len(outs) == 2 and outs[0]["output_ids"] == out["output_ids"]
    assert isinstance(engine.generate("a", SamplingParams(max_new_tokens=2)), dict)


def test_stream_deltas_add_up(engine):
    full = engine.generate("Shall I compare thee", GREEDY)
    chunks = list(engine.generate("Shall I compare thee", GREEDY, stream=True))
    assert "".join(c["text"] for c in chunks) == full["text"]
    assert sum((c["output_ids"] for c in chunks), []) == full["output_ids"]
    assert chunks[-1]["meta_info"]["finish_reason"] == full["meta_info"]["finish_reason"]


def test_abandoned_stream_frees_everything(engine):
    it = engine.generate(["床前明月光", "Shall I"], {"max_new_tokens": 50, "temperature": 0}, stream=True)
    next(it)
    it.close()  # 像客户端断开一样 / like a client that disconnects
    assert_pool_whole(engine)


def test_finish_reasons(engine):
    length = engine.generate("床前", {"max_new_tokens": 3, "temperature": 0})
    assert length["meta_info"]["finish_reason"] == {"type": "length", "length": 3}
    ref = engine.generate("床前", {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True})["output_ids"]
    stop_id = ref[2]
    by_id = engine.generate("床前", {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True,
                                    "stop_token_ids": [stop_id]})
    assert by_id["output_ids"] == ref[: ref.index(stop_id) + 1]
    assert by_id["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop_id}
    text = engine.generate("床前", {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True})["text"]
    stop = text[3:5]
    if stop.strip():
        by_str = engine.generate("床前", {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True, "stop": stop})
        assert by_str["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
        assert by_str["text"] == text[: text.index(stop)] and stop not in by_str["text"]


def test_n_and_seed(engine):
    outs = engine.generate("床前明月光", {"max_new_tokens": 10, "temperature": 1.0, "n": 3, "seed": 5})
    assert len(outs) == 3
    again = engine.generate("床前明月光", {"max_new_tokens": 10, "temperature": 1.0, "n": 3, "seed": 5})
    assert [o["output_ids"] for o in outs] == [o["output_ids"] for o in again]
    assert len({tuple(o["output_ids"]) for o in outs}) > 1  # n 个样本不全相同 / the samples differ


def test_min_new_tokens_and_ignore_eos(engine):
    out = engine.generate("床前", {"max_new_tokens": 20, "min_new_tokens": 20, "temperature": 0})
    assert len(out["output_ids"]) == 20


def test_input_ids_and_hf(engine, checkpoint):
    ids = engine.tokenizer.encode("推理引擎")
    out = engine.generate(input_ids=ids, sampling_params=GREEDY)
    assert out["output_ids"] == hf_greedy(checkpoint("qwen3"), ids, 12)


@pytest.mark.parametrize("kwargs,match", [
    (dict(prompt=""), "empty"),
    (dict(prompt="x" * 4000), "context length"),
    (dict(prompt="hi", sampling_params={"temprature": 1}), "temprature"),
    (dict(prompt="hi", sampling_params={"top_p": 2}), "top_p"),
    (dict(prompt="hi", sampling_params={"max_new_tokens": -1}), "max_new_tokens"),
    (dict(input_ids=[1, 2, 10**9]), "vocabulary"),
    (dict(input_ids=[]), "empty"),
    (dict(), "exactly one"),
    (dict(prompt="a", input_ids=[1]), "exactly one"),
    (dict(prompt=["ok", ""]), "prompt 1"),
])
def test_bad_input_clear_error(engine, kwargs, match):
    with pytest.raises(ValueError, match=match):
        engine.generate(**kwargs)
    assert engine.generate("床前", GREEDY)["meta_info"]["completion_tokens"] > 0  # 仍然可用 / still serves


def test_nan_logits_abort_not_crash(checkpoint):
    engine = Engine(checkpoint("qwen3"))
    model = engine.scheduler.model_runner.model
    real = model.compute_logits
    model.compute_logits = lambda h: torch.full((h.shape[0], engine.model_config.vocab_size), float("nan"))
    out = engine.generate("床前", GREEDY)
    assert out["meta_info"]["finish_reason"]["type"] == "abort"
    assert "NaN" in out["meta_info"]["finish_reason"]["message"]
    assert_pool_whole(engine)
    model.compute_logits = real
    assert engine.generate("床前", GREEDY)["meta_info"]["finish_reason"]["type"] in ("length", "stop")


def test_unknown_engine_arg_and_missing_model(tmp_path):
    with pytest.raises(TypeError, match="page_sise"):
        Engine(None, page_sise=4)
    with pytest.raises(FileNotFoundError, match="config.json"):
        Engine(str(tmp_path))
    (tmp_path / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}')
    with pytest.raises(ValueError, match="unsupported architecture"):
        Engine(str(tmp_path))


def test_context_manager_and_lazy_import(checkpoint):
    with minisgl.Engine(checkpoint("qwen3")) as e:
        assert e.generate("hi", {"max_new_tokens": 1})["meta_info"]["completion_tokens"] == 1


def test_step_api_for_notebooks(checkpoint):
    from minisgl.io_struct import TokenizedGenerateReqInput
    from minisgl.runner.forward_batch import ForwardMode

    engine = Engine(checkpoint("qwen3"))
    sched = engine.scheduler
    ids = engine.tokenizer.encode("床前明月光，疑是地上霜。")
    sched.add_request(TokenizedGenerateReqInput("a", None, ids, SamplingParams(max_new_tokens=3, temperature=0)))
    first = sched.step()
    assert first.forward_mode == ForwardMode.EXTEND and first.num_tokens == len(ids)
    sched.add_request(TokenizedGenerateReqInput("b", None, ids, SamplingParams(max_new_tokens=3, temperature=0)))
    second = sched.step()  # 新请求优先 prefill，并命中 a 的前缀 / b prefills, reusing a's prompt
    assert second.forward_mode == ForwardMode.EXTEND and second.num_tokens == 1
    assert second.out.cached_tokens == [len(ids) - 1]
    third = sched.step()
    assert third.forward_mode == ForwardMode.DECODE and len(third.rids) == 2
    sched.run_until_idle()
    sched.check_pool_whole()


def test_token_ids_are_checked_once(engine, monkeypatch):
    """normalize_requests 检查过的 id 调度器不再查；直接交给调度器的照样查。Checked once, never zero times."""
    from minisgl.io_struct import GenerateReqInput, TokenizedGenerateReqInput
    from minisgl.scheduler import scheduler as sched_mod
    from minisgl.tokenizer_manager import normalize_requests

    sched = engine.scheduler
    bad = [1, 2, 10**9]
    req = sched.add_request(TokenizedGenerateReqInput("direct", None, bad, SamplingParams(max_new_tokens=2)))
    assert req.finished_reason is not None and "vocabulary" in req.finished_reason.to_json()["message"]
    sched.run_until_idle()
    calls = []
    real = sched_mod.check_token_ids
    monkeypatch.setattr(sched_mod, "check_token_ids", lambda ids, v: calls.append(len(ids)) or real(ids, v))
    _, reqs, _ = normalize_requests(engine.tokenizer, GenerateReqInput(input_ids=[[5, 6, 7]], sampling_params=GREEDY),
                                    engine.model_config.vocab_size, engine.model_config.context_len)
    text_reqs = normalize_requests(engine.tokenizer, GenerateReqInput(text="床前", sampling_params=GREEDY),
                                   engine.model_config.vocab_size, engine.model_config.context_len)[1]
    assert reqs[0].ids_checked and not text_reqs[0].ids_checked  # 分词器的 id 还要查 / tokenizer ids still checked
    sched.add_request(reqs[0])
    assert calls == []
    sched.add_request(text_reqs[0])
    assert calls == [len(text_reqs[0].input_ids)]
    sched.run_until_idle()
    sched.check_pool_whole()
