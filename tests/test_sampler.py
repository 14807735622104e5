"""Sampler 与 SamplingParams：对照手算分布。Checked against hand-computed distributions."""
import math

import pytest
import torch

from minisgl.sampling import Sampler, SamplingParams
from minisgl.sampling.sampler import SamplingBatchInfo, apply_penalties, top_k_top_p_min_p_filter


class FakeReq:
    def __init__(self, output_ids=(), input_ids=(), eos=(), **params):
        self.sampling_params = SamplingParams(**params).verify(100)
        self.output_ids = list(output_ids)
        self.origin_input_ids = list(input_ids)
        self.eos_token_ids = set(eos)
        self.generator = torch.Generator().manual_seed(params["seed"]) if "seed" in params else None


def filtered(probs, **params):
    req = FakeReq(**params)
    info = SamplingBatchInfo.from_reqs([req], probs.shape[-1], probs.device)
    return top_k_top_p_min_p_filter(probs.unsqueeze(0), info)[0]


P = torch.tensor([0.4, 0.3, 0.2, 0.1])


def test_top_k_by_hand():
    assert torch.allclose(filtered(P, top_k=2), torch.tensor([0.4, 0.3, 0, 0]) / 0.7)


def test_top_p_by_hand():
    # 累计 0.4, 0.7 ≥ 0.6 → 保留前两个。Cumulative 0.4, 0.7 reaches 0.6 → keep two.
    assert torch.allclose(filtered(P, top_p=0.6), torch.tensor([0.4, 0.3, 0, 0]) / 0.7)
    assert torch.allclose(filtered(P, top_p=0.75), torch.tensor([0.4, 0.3, 0.2, 0]) / 0.9)
    assert torch.allclose(filtered(P, top_p=0.1), torch.tensor([1.0, 0, 0, 0]))


def test_min_p_by_hand():
    # 阈值 0.5 × 0.4 = 0.2：0.2 保留，0.1 丢弃。Threshold 0.2 keeps 0.2, drops 0.1.
    assert torch.allclose(filtered(P, min_p=0.5), torch.tensor([0.4, 0.3, 0.2, 0]) / 0.9)


def test_temperature_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    req = FakeReq(temperature=0.5, seed=0)
    counts = torch.zeros(4)
    for _ in range(4000):
        tok, _ = Sampler()(logits.clone(), [req])
        counts[tok[0]] += 1
    expected = torch.softmax(logits[0] / 0.5, dim=-1)
    assert torch.allclose(counts / counts.sum(), expected, atol=0.03)


def test_penalties_by_hand():
    logits = torch.tensor([[1.0, 2.0, -1.0, 0.5]])
    req = FakeReq(output_ids=[1, 1, 2], input_ids=[3], frequency_penalty=0.5, presence_penalty=0.25,
                  repetition_penalty=2.0)
    out = apply_penalties(logits.clone(), [req])[0]
    # token1: 2 - 0.5*2 - 0.25 = 0.75 → /2 = 0.375；token2: -1 - 0.5 - 0.25 = -1.75 → *2 = -3.5
    # token3（只在 prompt 里）: 0.5 / 2 = 0.25；token0 不变 / unchanged
    assert torch.allclose(out, torch.tensor([1.0, 0.375, -3.5, 0.25]))


def test_min_new_tokens_hides_eos():
    logits = torch.tensor([[0.0, 10.0, 0.0]])
    req = FakeReq(output_ids=[0], eos=[1], min_new_tokens=3, temperature=0)
    tok, _ = Sampler()(logits, [req])
    assert tok.item() != 1


def test_greedy_and_seed_reproducible():
    logits = torch.randn(3, 50)
    greedy = FakeReq(temperature=0)
    tok, bad = Sampler()(logits.clone(), [greedy] * 3)
    assert tok.tolist() == logits.argmax(-1).tolist() and bad == [False] * 3
    def draws(seed):  # 同一请求连抽 20 次 / 20 draws from one request's generator
        req = FakeReq(temperature=1.0, seed=seed)
        return [Sampler()(logits[:1].clone(), [req])[0].item() for _ in range(20)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


def test_nan_rows_reported():
    logits = torch.randn(2, 10)
    logits[1, 3] = float("nan")
    tok, bad = Sampler()(logits, [FakeReq(temperature=0), FakeReq(temperature=0)])
    assert bad == [False, True]


@pytest.mark.parametrize("field,value", [
    ("temperature", -0.1), ("top_p", 0.0), ("top_p", 1.5), ("top_k", 0), ("min_p", 2.0),
    ("max_new_tokens", -1), ("n", 0), ("frequency_penalty", 3.0), ("presence_penalty", float("nan")),
    ("repetition_penalty", 0.0), ("stop", [""]), ("stop_token_ids", [1000]), ("min_new_tokens", 500),
    ("ignore_eos", "yes"), ("seed", -1),
])
def test_bad_params_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value}).verify(vocab_size=100)


def test_unknown_field_named():
    with pytest.raises(ValueError, match="temprature"):
        SamplingParams.from_dict({"temprature": 0.5})
