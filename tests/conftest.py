"""共享的测试夹具：随机小模型、HF 参考输出。Shared fixtures: tiny random checkpoints, HF references."""
import os

import pytest
import torch

# 没有 GPU 时，Triton 内核在解释器里跑（必须在 import triton 之前设置）。
# Without a GPU, Triton kernels run in the interpreter (must be set before triton is imported).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from minisgl.testing import make_tiny_checkpoint

torch.set_num_threads(2)

# 名字 → make_tiny_checkpoint 的参数。Name → checkpoint recipe.
CHECKPOINTS = {
    "qwen3": dict(arch="qwen3"),
    "qwen2": dict(arch="qwen2"),
    "llama": dict(arch="llama"),
    "qwen3-tied": dict(arch="qwen3", tie_word_embeddings=True, num_kv_heads=1, seed=1),
    "llama3-rope": dict(arch="llama", num_kv_heads=4, seed=2, max_position_embeddings=512,
                        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
}


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """按名字造（并缓存）一个检查点目录。Build (once) and return a checkpoint folder by name."""
    made = {}

    def get(name: str) -> str:
        if name not in made:
            made[name] = make_tiny_checkpoint(str(tmp_path_factory.mktemp(name)), **CHECKPOINTS[name])
        return made[name]

    return get


_HF_CACHE = {}


def hf_greedy(path: str, prompt_ids, max_new_tokens: int):
    """HF transformers 的贪心输出（逐个 prompt，float32）。HF greedy output, one prompt at a time."""
    from transformers import AutoModelForCausalLM

    key = (path, tuple(prompt_ids), max_new_tokens)
    if key not in _HF_CACHE:
        if path not in _HF_CACHE:
            _HF_CACHE[path] = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        model = _HF_CACHE[path]
        ids = torch.tensor([prompt_ids])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False)
        _HF_CACHE[key] = out[0, ids.shape[1]:].tolist()
    return _HF_CACHE[key]


def assert_pool_whole(engine):
    """测试结束时：没有锁、没有泄漏。After a test: nothing locked, nothing leaked."""
    engine.scheduler.check_pool_whole()
