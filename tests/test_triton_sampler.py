"""融合采样内核（Gumbel-max）vs torch：贪心逐 token 相同、坏行、分布、何时走哪条路径。

The fused sampling kernel (minisgl/sampling/triton_sampler.py) against torch: greedy equals
torch.argmax (ties included), non-finite rows are flagged, sampled rows follow softmax(x / T)
(a chi-square test), and Sampler picks the fused path only for plain batches. CPU: under the
Triton interpreter (TRITON_INTERPRET=1, set in tests/conftest.py); the same tests run on a GPU.
"""
import math
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from minisgl.sampling import Sampler  # noqa: E402
from minisgl.sampling import triton_sampler  # noqa: E402
from minisgl.sampling.sampler import fused_temperatures  # noqa: E402
from minisgl.sampling.triton_sampler import sample_fused  # noqa: E402

from test_sampler import FakeReq  # noqa: E402

DEV = "cuda" if HAS_CUDA else "cpu"
if not HAS_CUDA and type(triton_sampler._sample_kernel).__name__ != "InterpretedFunction":
    pytest.skip("triton was imported before TRITON_INTERPRET=1 was set (see tests/conftest.py)",
                allow_module_level=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("vocab", [7, 100, 1000])
def test_greedy_equals_torch_argmax_with_ties(dtype, vocab):
    g = torch.Generator().manual_seed(vocab)
    logits = torch.randn(5, vocab, generator=g).to(dtype)
    # 并列：第 1 行最大值出现两次（不同段），第 2 行整行相同 → torch.argmax 取第一个。
    # Ties: row 1's max appears twice (different slices), row 2 is constant: the first index wins.
    logits[1, vocab // 3] = 9.0
    logits[1, vocab - 1] = 9.0
    logits[2] = 0.5
    logits = logits.to(DEV)
    ids, bad = sample_fused(logits, [0.0] * 5)
    assert ids.tolist() == logits.float().argmax(dim=-1).tolist()
    assert ids.dtype == torch.int64 and not bad.any()


def test_non_finite_rows_are_flagged_and_others_untouched():
    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(1))
    logits[1, 17] = float("nan")
    logits[2, 299] = float("inf")
    logits[3, 0] = float("-inf")
    expect = logits.argmax(dim=-1)
    ids, bad = sample_fused(logits.to(DEV), [0.0, 0.0, 0.7, 0.0])
    assert bad.tolist() == [False, True, True, True]
    assert ids[0].item() == expect[0].item() and ids[3].item() == expect[3].item()
    assert ((0 <= ids) & (ids < 300)).all()  # 坏行也给合法下标（调度器随后 abort）/ in range even for bad rows


def test_sampled_rows_follow_softmax_over_temperature():
    # 同一行 logits 复制 n 份，一次抽 n 个样本；卡方检验对 softmax(x / T)。
    # One row copied n times gives n draws in one call; chi-square against softmax(x / T).
    # 解释器里每个 program ~20 ms，所以 CPU 上 300 次抽样；若温度被忽略（T = 1），期望 χ² ≈ 89。
    # ~20 ms per program under the interpreter, hence 300 draws on CPU; ignoring T would give χ² ≈ 89.
    x = torch.tensor([1.0, 0.5, 0.0, -0.5])
    temp, n = 0.5, (3000 if HAS_CUDA else 300)
    ids, _ = sample_fused(x.repeat(n, 1).to(DEV), [temp] * n, seed=12345)
    counts = torch.bincount(ids.cpu(), minlength=len(x)).double()
    expected = torch.softmax(x.double() / temp, dim=0) * n
    chi2 = (((counts - expected) ** 2) / expected).sum().item()
    # 3 个自由度，p = 0.001 的临界值 16.3；种子固定，所以不会随机失败。3 dof, p = 0.001: 16.3.
    assert chi2 < 16.3, (counts.tolist(), expected.tolist())
    # 温度越低越尖：T → 0 的极限是贪心。Lower temperature is sharper; the limit is greedy.
    cold, _ = sample_fused(x.repeat(64, 1).to(DEV), [1e-3] * 64, seed=7)
    assert (cold == 0).all()


def test_mixed_batch_keeps_greedy_rows_exact_and_seed_reproducible():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 300, generator=g).to(DEV)
    temps = [0.0, 1.0, 0.0, 0.5, 0.0, 2.0]
    a, _ = sample_fused(logits, temps, seed=99)
    b, _ = sample_fused(logits, temps, seed=99)
    greedy = logits.argmax(dim=-1)
    assert [a[i].item() for i in (0, 2, 4)] == [greedy[i].item() for i in (0, 2, 4)]
    assert a.tolist() == b.tolist()  # 同一种子同一结果 / same seed, same draw
    many = torch.zeros(32, 50).to(DEV)  # 均匀分布：两个种子 32 行全同的概率 50^-32 / uniform rows
    x1, _ = sample_fused(many, [1.0] * 32, seed=1)
    x2, _ = sample_fused(many, [1.0] * 32, seed=2)
    assert x1.tolist() != x2.tolist()
    # 种子缺省时来自 torch 的 CPU 生成器：manual_seed 之后可复现。From torch's CPU generator.
    torch.manual_seed(5)
    y1, _ = sample_fused(many, [1.0] * 32)
    torch.manual_seed(5)
    y2, _ = sample_fused(many, [1.0] * 32)
    assert y1.tolist() == y2.tolist()


def test_fused_temperatures_picks_only_plain_batches():
    v = 100
    assert fused_temperatures([FakeReq(temperature=0), FakeReq(temperature=0.8)], v) == [0.0, 0.8]
    assert fused_temperatures([FakeReq(top_k=1, temperature=1.0)], v) == [0.0]  # top_k=1 是贪心 / greedy
    for params in [dict(temperature=0.8, top_p=0.9), dict(temperature=0.8, top_k=5), dict(temperature=0.8, min_p=0.1),
                   dict(temperature=0.8, seed=3), dict(temperature=0, frequency_penalty=0.5),
                   dict(temperature=0, presence_penalty=0.5), dict(temperature=0, repetition_penalty=1.2),
                   dict(temperature=0, min_new_tokens=4)]:
        assert fused_temperatures([FakeReq(temperature=0), FakeReq(**params)], v) is None, params
    # 已经达到 min_new_tokens 的请求又是普通的了 / past min_new_tokens it is plain again
    assert fused_temperatures([FakeReq(output_ids=[1, 2, 3, 4], temperature=0, min_new_tokens=4)], v) == [0.0]


def test_sampler_uses_fused_path_and_falls_back(monkeypatch):
    calls = []
    real = triton_sampler.sample_fused

    def spy(logits, temps, seed=None):
        calls.append(list(temps))
        return real(logits, temps, seed)

    import minisgl.sampling.sampler as sampler_mod

    monkeypatch.setattr(sampler_mod, "sample_fused", spy)
    logits = torch.randn(2, 100, generator=torch.Generator().manual_seed(0)).to(DEV)
    fused = Sampler(use_fused=True)
    ids, bad = fused.sample(logits.clone(), [FakeReq(temperature=0), FakeReq(temperature=0)])
    assert calls == [[0.0, 0.0]] and ids.tolist() == logits.argmax(-1).tolist() and not bad.any()
    # 重复惩罚改变 argmax：必须走 torch 路径，结果与 torch 路径相同。A penalty needs the torch path.
    logits[0, :2] = torch.tensor([3.0, 2.0])  # 惩罚后 3 / 2 = 1.5 < 2：argmax 从 0 变成 1 / moves to 1
    logits[0, 2:] = 0.0
    top = 0
    reqs = [FakeReq(output_ids=[top], temperature=0, repetition_penalty=2.0), FakeReq(temperature=0)]
    a, _ = fused.sample(logits.clone(), reqs)
    b, _ = Sampler(use_fused=False).sample(logits.clone(), reqs)
    assert len(calls) == 1 and a.tolist() == b.tolist() and a[0].item() != top
    # use_fused=False 从不走融合内核 / never fused when disabled
    Sampler(use_fused=False).sample(logits.clone(), [FakeReq(temperature=0)] * 2)
    assert len(calls) == 1
