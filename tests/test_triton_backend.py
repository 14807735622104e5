"""Triton 注意力后端接进引擎后，贪心输出仍与 HF 相同（CPU 上用 Triton 解释器）。

The Triton attention backend inside the engine still matches HF greedy output (on CPU through
the Triton interpreter: tiny shapes, few steps).
"""
import pytest
import torch

pytest.importorskip("triton")

from minisgl import Engine
from tests.conftest import assert_pool_whole, hf_greedy


@pytest.mark.parametrize("extra", [{}, {"page_size": 4, "chunked_prefill_size": 8}])
def test_triton_backend_matches_hf(checkpoint, extra):
    path = checkpoint("qwen3")
    engine = Engine(path, attention_backend="triton", **extra)
    prompts = [engine.tokenizer.encode(t) for t in ["床前明月光，疑是地上霜。", "床前明月光，疑是", "Shall I compare thee"]]
    outs = engine.generate(input_ids=prompts, sampling_params={"max_new_tokens": 6, "temperature": 0})
    for ids, out in zip(prompts, outs):
        assert out["output_ids"] == hf_greedy(path, ids, 6)
    # 第二轮命中前缀缓存：extend 内核的“前缀 + 新 token”路径被用到。
    # A second round hits the prefix cache: the extend kernel's prefix path runs.
    again = engine.generate(input_ids=prompts[0], sampling_params={"max_new_tokens": 6, "temperature": 0})
    assert again["output_ids"] == outs[0]["output_ids"] and again["meta_info"]["cached_tokens"] > 0
    assert_pool_whole(engine)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_replay_equals_eager(checkpoint):
    path = checkpoint("qwen3")
    prompts = [[(7 * i + j) % 400 + 3 for j in range(5 + 3 * i)] for i in range(13)]  # bs 13 → 16 填充 / padded
    params = {"max_new_tokens": 12, "temperature": 0}
    eager = Engine(path, dtype="float32", disable_cuda_graph=True).generate(input_ids=prompts, sampling_params=params)
    graph = Engine(path, dtype="float32").generate(input_ids=prompts, sampling_params=params)
    assert [o["output_ids"] for o in graph] == [o["output_ids"] for o in eager]
