"""utils 的两个快路径：host_tensor 必须与 torch.tensor 一模一样，check_token_ids 必须与逐个检查的规则一致。

The two fast paths of minisgl/utils.py: host_tensor must equal torch.tensor exactly (values, dtype,
shape, writable, independent of later list changes), and check_token_ids must agree with the
per-token rule it replaces (ints only, bool rejected, inside [0, vocab)).
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minisgl.utils import check_token_ids, host_tensor, to_device

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(INT64, max_size=300))
def test_host_tensor_int64_equals_torch_tensor(values):
    t = host_tensor(values)
    ref = torch.tensor(values, dtype=torch.int64)
    assert t.dtype == torch.int64 and t.shape == ref.shape and torch.equal(t, ref)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 4), cols=st.integers(1, 50), data=st.data())
def test_host_tensor_nested_and_int32(rows, cols, data):
    values = [data.draw(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=cols, max_size=cols)) for _ in range(rows)]
    t = host_tensor(values, torch.int32)
    assert t.dtype == torch.int32 and torch.equal(t, torch.tensor(values, dtype=torch.int32))


def test_host_tensor_edge_cases():
    assert host_tensor([]).shape == (0,) and host_tensor([]).dtype == torch.int64
    assert torch.equal(host_tensor([[0.5], [2.0]], torch.float32), torch.tensor([[0.5], [2.0]]))
    assert torch.equal(host_tensor([True, False], torch.bool), torch.tensor([True, False]))  # torch.tensor 兜底 / fallback
    src = [1, 2, 3]
    t = host_tensor(src)
    src[0] = 99  # 之后改列表不影响张量 / later list edits do not leak in
    t[1] = 7  # 张量可写 / the tensor is writable
    assert t.tolist() == [1, 7, 3]
    with pytest.raises(ValueError, match="rows of different lengths"):
        host_tensor([[1, 2], [3]])
    assert torch.equal(to_device([[1, 2], [3, 4]], torch.int64, "cpu"), torch.tensor([[1, 2], [3, 4]]))


def _reference(ids, vocab):
    """被替换掉的逐个检查。The per-token rule that check_token_ids replaces."""
    if any(type(t) is not int for t in ids):
        return "input_ids must be integers"
    bad = [t for t in ids if not 0 <= t < vocab]
    return None if not bad else "outside"


@settings(max_examples=100, deadline=None)
@given(ids=st.lists(st.one_of(st.integers(-3, 12), st.booleans(), st.floats(0, 5)), max_size=20))
def test_check_token_ids_matches_the_per_token_rule(ids):
    got, ref = check_token_ids(ids, 10), _reference(ids, 10)
    assert (got is None) == (ref is None), (ids, got)
    if ref == "outside":
        assert "outside the vocabulary [0, 10)" in got
    elif ref is not None:
        assert got == ref


def test_engine_freezes_the_gc_and_lets_go():
    # 启动后冻结（decode 步里的垃圾回收不再扫启动时的对象）；shutdown 或丢掉引擎都会解冻，
    # 否则引擎的循环引用（模型、KV 池）永远收不走。After start-up the GC is frozen; shutting the
    # engine down or dropping it unfreezes, or its reference cycles (model, KV pool) would never go.
    import gc
    import weakref

    from minisgl import Engine

    from minisgl.utils import restore_full_gc

    gc.unfreeze()
    restore_full_gc()  # 别的测试里活着的引擎可能已推迟 / an engine alive from another test may have deferred
    threshold = gc.get_threshold()
    e = Engine(device="cpu", max_total_tokens=256)
    assert gc.get_freeze_count() > 1000
    assert gc.get_threshold()[2] > 10**6  # 全量回收推迟到空闲 / full collections wait for idle
    e.shutdown()
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == threshold
    del e
    e = Engine(device="cpu", max_total_tokens=256)
    runner = weakref.ref(e.scheduler.model_runner)
    assert gc.get_freeze_count() > 1000
    del e  # 不调用 shutdown / no shutdown
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert runner() is None  # 模型与 KV 池真的释放了 / the model and KV pool are really gone
    # 换掉一个活着的引擎：新引擎先冻结，旧的被丢弃时解冻；新引擎下一次 generate 时重新冻结，旧的照样收走。
    # Replacing a live engine: the new one freezes, dropping the old one unfreezes; the new one's next
    # generate() freezes again, and the old one is still collected.
    e = Engine(device="cpu", max_total_tokens=256)
    old = weakref.ref(e.scheduler.model_runner)
    e = Engine(device="cpu", max_total_tokens=256)
    e.generate(input_ids=[1, 2, 3], sampling_params={"max_new_tokens": 2})
    assert gc.get_freeze_count() > 1000 and old() is None
    e.shutdown()


def test_full_collections_wait_for_idle(monkeypatch):
    """defer_full_gc：忙时不自动全量回收；到期后空闲时收，忙时等满 FULL_GC_MAX_DEFER_S；能恢复。

    Full collections do not run by themselves while deferred; a due one runs at idle, or while busy
    once FULL_GC_MAX_DEFER_S has passed; restore_full_gc puts the threshold back.
    """
    import gc

    from minisgl import utils

    utils.restore_full_gc()  # 从已知状态开始 / start from a known state
    before = gc.get_threshold()
    utils.defer_full_gc()
    try:
        assert gc.get_threshold()[2] > 10**6
        gc.collect()
        assert not utils.collect_deferred_gc(busy=False)  # 刚收过，不到期 / just collected: not due
        full = []
        cb = lambda phase, info: full.append(1) if phase == "stop" and info["generation"] == 2 else None  # noqa: E731
        gc.callbacks.append(cb)
        while gc.get_count()[2] < before[2]:  # 造循环垃圾，直到第 1 代回收够多 / cycles until enough gen-1 runs
            x = []
            x.append(x)
        gc.callbacks.remove(cb)
        assert full == []  # 自动的全量回收没有发生 / no automatic full collection
        assert not utils.collect_deferred_gc(busy=True)  # 忙着，且没推迟太久 / busy and not deferred too long
        monkeypatch.setattr(utils, "FULL_GC_MAX_DEFER_S", 0.0)
        assert utils.collect_deferred_gc(busy=True)  # 推迟太久：忙着也收 / deferred too long: collect anyway
        assert gc.get_count()[2] == 0
        while gc.get_count()[2] < before[2]:
            x = []
            x.append(x)
        monkeypatch.setattr(utils, "FULL_GC_MAX_DEFER_S", 60.0)
        assert utils.collect_deferred_gc(busy=False)  # 空闲：到期就收 / idle: collect when due
    finally:
        utils.restore_full_gc()
    assert gc.get_threshold() == before
    assert not utils.collect_deferred_gc(busy=False)  # 没在推迟 / not deferring
