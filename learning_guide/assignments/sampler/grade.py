"""作业 sampler 的评分测试（由 `minisgl course grade sampler` 运行）。

Grading tests of the sampler assignment: ``ctx.student`` is the student's sampler module
(apply_penalties and top_k_top_p_min_p_filter rewritten); SamplingParams is the engine's.
"""
import torch

from minisgl.course.grader import engine_generate, points
from minisgl.sampling.sampling_params import SamplingParams


class FakeReq:
    """采样器只看这几个字段。The only fields the sampler reads."""

    def __init__(self, output_ids=(), input_ids=(), eos=(), **params):
        self.sampling_params = SamplingParams(**params).verify(100)
        self.output_ids = list(output_ids)
        self.origin_input_ids = list(input_ids)
        self.eos_token_ids = set(eos)
        self.generator = torch.Generator().manual_seed(params["seed"]) if "seed" in params else None


def _filter(ctx, probs, reqs):
    info = ctx.student.SamplingBatchInfo.from_reqs(reqs, probs.shape[-1], probs.device)
    return ctx.student.top_k_top_p_min_p_filter(probs.clone(), info)


def _filter1(ctx, probs, **params):
    return _filter(ctx, probs.unsqueeze(0), [FakeReq(**params)])[0]


def _close(got, want, what):
    assert torch.allclose(got, want, atol=1e-6), f"{what}: got {got.tolist()}, want {want.tolist()}"


# 可精确表示的概率（二进制小数），边界比较不受舍入影响。Exact binary fractions: no rounding at the boundaries.
P = torch.tensor([0.125, 0.5, 0.125, 0.25])  # 降序 / descending: 0.5 (1), 0.25 (3), 0.125 (0), 0.125 (2)


@points(2)
def test_frequency_and_presence(ctx):
    """frequency 按次数、presence 按是否出现，只看已生成的 token / counted on output tokens only"""
    logits = torch.tensor([[1.0, 2.0, -1.0, 0.5]])
    req = FakeReq(output_ids=[1, 1, 2], input_ids=[3], frequency_penalty=0.5, presence_penalty=0.25)
    out = ctx.student.apply_penalties(logits.clone(), [req])[0]
    _close(out, torch.tensor([1.0, 2.0 - 1.0 - 0.25, -1.0 - 0.5 - 0.25, 0.5]), "frequency 0.5, presence 0.25")


@points(2)
def test_repetition(ctx):
    """repetition：prompt 和输出里出现过的 token，正的除以 r、负的乘 r / divide positives, multiply negatives"""
    logits = torch.tensor([[1.0, 2.0, -1.0, 0.5]])
    req = FakeReq(output_ids=[1, 2], input_ids=[3], repetition_penalty=2.0)
    out = ctx.student.apply_penalties(logits.clone(), [req])[0]
    _close(out, torch.tensor([1.0, 1.0, -2.0, 0.25]), "repetition 2.0 on tokens {1, 2, 3}")


@points(2)
def test_min_new_tokens_hides_eos(ctx):
    """没到 min_new_tokens：EOS 和 stop_token_ids 设为 -inf；到了就放开 / EOS hidden until min_new_tokens"""
    logits = torch.zeros(1, 5)
    early = FakeReq(output_ids=[0], eos=[3], stop_token_ids=[1], min_new_tokens=2)
    out = ctx.student.apply_penalties(logits.clone(), [early])[0]
    assert torch.isinf(out[3]) and torch.isinf(out[1]) and out[3] < 0 and out[1] < 0, f"got {out.tolist()}"
    assert out[[0, 2, 4]].eq(0).all(), "other tokens must stay untouched"
    late = FakeReq(output_ids=[0, 0], eos=[3], stop_token_ids=[1], min_new_tokens=2)
    assert ctx.student.apply_penalties(logits.clone(), [late])[0].eq(0).all(), "min_new_tokens reached: no mask"


@points(1)
def test_penalties_per_row(ctx):
    """每行用自己的参数，别的行不受影响 / each row its own parameters"""
    logits = torch.ones(2, 4)
    reqs = [FakeReq(output_ids=[2], frequency_penalty=1.0), FakeReq(output_ids=[2])]
    out = ctx.student.apply_penalties(logits.clone(), reqs)
    _close(out[0], torch.tensor([1.0, 1.0, 0.0, 1.0]), "row 0")
    _close(out[1], torch.ones(4), "row 1 has no penalty")


@points(2)
def test_top_k(ctx):
    """top-k 保留概率最大的 k 个，放回原位置并重新归一化 / keep the k largest, in place, renormalised"""
    _close(_filter1(ctx, P, top_k=2), torch.tensor([0, 0.5, 0, 0.25]) / 0.75, "top_k=2")
    _close(_filter1(ctx, P, top_k=1), torch.tensor([0, 1.0, 0, 0]), "top_k=1")


@points(3)
def test_top_p_boundary(ctx):
    """top-p 保留累计概率刚好达到 p 的最小集合 / keep the smallest set whose mass reaches top_p"""
    cases = {0.5: [0, 0.5, 0, 0], 0.51: [0, 0.5, 0, 0.25], 0.75: [0, 0.5, 0, 0.25], 0.8: [0.125, 0.5, 0, 0.25]}
    for p, kept in cases.items():
        got = _filter1(ctx, P, top_p=p)
        want = torch.tensor(kept) / sum(kept)
        if p == 0.8:  # 两个 0.125 并列：保留哪一个都对 / a tie: either 0.125 may stay
            assert (got > 0).sum() == 3 and abs(got.sum().item() - 1) < 1e-6, f"top_p=0.8 keeps 3 tokens: {got.tolist()}"
            continue
        _close(got, want, f"top_p={p}")


@points(2)
def test_min_p(ctx):
    """min-p 丢掉 < min_p × 最大概率的 token（等于阈值的保留）/ drop probs below min_p * max"""
    _close(_filter1(ctx, P, min_p=0.5), torch.tensor([0, 0.5, 0, 0.25]) / 0.75, "min_p=0.5 (threshold 0.25)")
    _close(_filter1(ctx, P, min_p=0.2), P, "min_p=0.2 (threshold 0.1) keeps everything")


@points(1)
def test_first_token_always_kept(ctx):
    """再严的截断也至少留下概率最大的 token / at least the most likely token survives"""
    _close(_filter1(ctx, P, top_p=1e-6), torch.tensor([0, 1.0, 0, 0]), "a tiny top_p")
    _close(_filter1(ctx, P, min_p=1.0, top_k=1), torch.tensor([0, 1.0, 0, 0]), "min_p=1 and top_k=1")


@points(2)
def test_rows_independent(ctx):
    """一批里每行用自己的 top-k/top-p/min-p，不截断的行原样返回 / per-row knobs in one batch"""
    probs = torch.stack([P, P.flip(0), P])
    reqs = [FakeReq(top_k=2), FakeReq(top_p=0.5), FakeReq()]
    out = _filter(ctx, probs, reqs)
    _close(out[0], torch.tensor([0, 0.5, 0, 0.25]) / 0.75, "row 0 (top_k=2)")
    _close(out[1], torch.tensor([0, 0, 1.0, 0]), "row 1 (top_p=0.5)")
    _close(out[2], P, "row 2 has no truncation")
    assert torch.allclose(out.sum(-1), torch.ones(3)), "every row must sum to 1"


@points(2)
def test_sampling_distribution(ctx):
    """Sampler 抽出的频率符合“温度 + top-k 截断”后的分布 / draws follow the truncated distribution"""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 3.0]])
    req = FakeReq(temperature=0.7, top_k=3, seed=0)
    counts = torch.zeros(5)
    for _ in range(2000):
        tok, _ = ctx.student.Sampler()(logits.clone(), [req])
        counts[tok[0]] += 1
    probs = torch.softmax(logits[0] / 0.7, dim=-1)
    probs[[2, 3]] = 0
    probs /= probs.sum()
    assert counts[2] == 0 and counts[3] == 0, f"tokens outside the top 3 were drawn: {counts.tolist()}"
    assert torch.allclose(counts / counts.sum(), probs, atol=0.04), f"{(counts / counts.sum()).tolist()} vs {probs.tolist()}"


@points(3)
def test_engine_seeded_sampling(ctx):
    """整个引擎用你的采样器（带 seed、全套参数）输出与参考相同 / seeded engine output equals the reference"""
    prompts = ["床前明月光，", ["Shall I compare thee", "春眠不觉晓，"]]
    params = {"max_new_tokens": 24, "temperature": 0.8, "top_p": 0.9, "top_k": 20, "min_p": 0.05, "seed": 7,
              "frequency_penalty": 0.3, "presence_penalty": 0.2, "repetition_penalty": 1.1, "min_new_tokens": 4}
    got = engine_generate(prompts, params)
    with ctx.reference():
        want = engine_generate(prompts, params)
    assert [g["output_ids"] for g in got] == [w["output_ids"] for w in want], "the generated tokens differ"
