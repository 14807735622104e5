"""第 09 章的采样算例：用真的 apply_penalties 与 top_k_top_p_min_p_filter 算一个 6 词的小例子。

Chapter 09's worked example: a 6-token vocabulary pushed through the real penalty and filter
functions of minisgl/sampling/sampler.py, printing every stage.

    python docs/scripts/sampling_example.py > docs/scripts/sampling_example.txt
"""
from __future__ import annotations

import torch

from minisgl.sampling.sampler import SamplingBatchInfo, apply_penalties, top_k_top_p_min_p_filter
from minisgl.sampling.sampling_params import SamplingParams

WORDS = ["月", "光", "霜", "乡", "。", "<eos>"]
LOGITS = [3.0, 2.0, 1.0, 0.5, 0.0, -1.0]


class FakeReq:
    """采样器只读这几个属性。The sampler reads only these attributes of a Req."""

    def __init__(self, params, output_ids=(), prompt_ids=(), eos=(5,)):
        self.sampling_params, self.output_ids = params, list(output_ids)
        self.origin_input_ids, self.eos_token_ids, self.generator = list(prompt_ids), set(eos), None


def fmt(row) -> str:
    return "  ".join(f"{w}={v:6.3f}" for w, v in zip(WORDS, row.tolist()))


def main() -> None:
    torch.set_printoptions(precision=3)
    print(f"vocabulary: {WORDS}")
    print(f"logits:            {fmt(torch.tensor(LOGITS))}\n")

    print("== penalties (output so far: 月 月 光; prompt: 霜) ==")
    for name, params in {
        "frequency_penalty=0.5": SamplingParams(frequency_penalty=0.5),
        "presence_penalty=0.5": SamplingParams(presence_penalty=0.5),
        "repetition_penalty=1.5": SamplingParams(repetition_penalty=1.5),
        "min_new_tokens=5 (eos hidden)": SamplingParams(min_new_tokens=5, max_new_tokens=8),
    }.items():
        row = apply_penalties(torch.tensor([LOGITS]), [FakeReq(params, output_ids=[0, 0, 1], prompt_ids=[2])])[0]
        print(f"{name:30s} {fmt(row)}")

    print("\n== temperature: p = softmax(logits / T) ==")
    for t in (0.5, 1.0, 2.0):
        print(f"T={t:<4}  {fmt(torch.softmax(torch.tensor(LOGITS) / t, dim=-1))}")

    print("\n== truncation at T=1, then renormalised ==")
    probs = torch.softmax(torch.tensor([LOGITS]), dim=-1)
    for name, params in {
        "top_k=2": SamplingParams(top_k=2),
        "top_p=0.8": SamplingParams(top_p=0.8),
        "top_p=0.9": SamplingParams(top_p=0.9),
        "min_p=0.1": SamplingParams(min_p=0.1),
        "top_k=3, top_p=0.9, min_p=0.2": SamplingParams(top_k=3, top_p=0.9, min_p=0.2),
    }.items():
        info = SamplingBatchInfo.from_reqs([FakeReq(params)], len(WORDS), torch.device("cpu"))
        print(f"{name:30s} {fmt(top_k_top_p_min_p_filter(probs.clone(), info)[0])}")

    print("\n== exponential race: argmax(p_i / E_i), E_i ~ Exp(1), 100,000 draws at T=1 ==")
    p = torch.softmax(torch.tensor(LOGITS), dim=-1)
    torch.manual_seed(0)
    draws = (p / torch.empty(100_000, len(WORDS)).exponential_()).argmax(dim=-1)
    print(f"p                  {fmt(p)}")
    print(f"observed frequency {fmt(torch.bincount(draws, minlength=len(WORDS)) / 100_000)}")

    print("\n== seeds: one request's generator decides its draw, whatever else is in the batch ==")
    for seed in (1, 1, 2):
        g = torch.Generator().manual_seed(seed)
        draws = [WORDS[int(torch.multinomial(p, 1, generator=g))] for _ in range(8)]
        print(f"seed={seed}: {' '.join(draws)}")


if __name__ == "__main__":
    main()
