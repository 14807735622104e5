# ================================================================================
# 🧪 测试工具：现场造一个随机小模型 + 现场训练的分词器
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   用 transformers 的 Qwen3Config / Qwen2Config / LlamaConfig 随机初始化一个很小的模型，
#   save_pretrained 成标准 HF 目录；分词器用 `tokenizers` 在一小段中英文文本上现场训练。
#   测试、基准和笔记本用它在没有网络的机器上得到“真的 HF 检查点”。
#   Builds a tiny random model with transformers' configs and save_pretrained, plus a byte-level
#   BPE tokenizer trained on the spot, so tests, benchmarks and notebooks get a real HF checkpoint
#   without any network.
#
# 【生活比喻】Metaphor
#   驾校的教练车：不是真车队里的车，但方向盘、油门、刹车一样不少，练手正合适。
#   A driving-school car: not from the real fleet, but every control is there.
#
# 【核心架构】Architecture
#   make_tokenizer(dir) ──tokenizers.BPE──► tokenizer.json + tokenizer_config.json(chat_template)
#   make_tiny_checkpoint(dir, arch) ──HF config──► XxxForCausalLM(随机) ──save_pretrained──► dir
#
# 【工作流程】Workflow
#   1. 训练分词器（约 0.1 秒）。2. 建随机模型（initializer_range 较大，让 logits 有明显的最大值，
#      贪心结果不会因 1e-7 的浮点差异而翻转）。3. 保存。
#   A larger initializer_range gives peaked logits, so greedy choices do not flip on 1e-7 noise.
#
# 【关键概念】Key Concepts
#   - 与 HF 逐 token 对比需要“确定的”argmax：随机小模型的 logits 如果几乎相等，任何实现差异都会改变结果。
#
# 【使用方式】Usage
#   >>> path = make_tiny_checkpoint("/tmp/tiny-qwen3", arch="qwen3")
#   >>> engine = minisgl.Engine(path)
#
# 【对应章节】Chapter: docs/zh/07-model-inference.md
# ================================================================================
from __future__ import annotations

import json
import os
from typing import List, Optional

SAMPLE_TEXT = [
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。",
    "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。",
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.",
    "The quick brown fox jumps over the lazy dog. An inference engine serves many requests at once.",
    "A radix tree shares prefixes; a scheduler batches requests; a sampler picks the next token.",
    "推理引擎把请求分批，前缀缓存让共享的提示词只算一次。🙂🚀 emoji 也要正确解码。",
    "To be, or not to be, that is the question. 生存还是毁灭，这是一个问题。",
]

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def make_tokenizer(path: str, vocab_size: int = 512):
    """训练并保存一个 byte-level BPE 分词器。Train and save a byte-level BPE tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(SAMPLE_TEXT * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = CHAT_TEMPLATE
    os.makedirs(path, exist_ok=True)
    fast.save_pretrained(path)
    return fast


def make_tiny_checkpoint(
    path: str,
    arch: str = "qwen3",
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 16,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
    tie_word_embeddings: bool = False,
    initializer_range: float = 0.3,
    seed: int = 0,
    rope_scaling: Optional[dict] = None,
) -> str:
    """造一个随机小模型目录（HF 格式）。Make a random tiny HF model folder; returns its path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    tok = make_tokenizer(path)
    vocab = len(tok)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    common = dict(
        vocab_size=vocab, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings, tie_word_embeddings=tie_word_embeddings,
        initializer_range=initializer_range, eos_token_id=eos, bos_token_id=None, pad_token_id=eos,
        rms_norm_eps=1e-6,
    )
    if arch == "qwen3":
        cfg, cls = Qwen3Config(head_dim=head_dim, **common), Qwen3ForCausalLM
    elif arch == "qwen2":
        cfg, cls = Qwen2Config(**common), Qwen2ForCausalLM
    elif arch == "llama":
        cfg, cls = LlamaConfig(head_dim=head_dim, rope_scaling=rope_scaling, **common), LlamaForCausalLM
    else:
        raise ValueError(f"unknown arch {arch!r}")
    torch.manual_seed(seed)
    model = cls(cfg)
    with torch.no_grad():  # norm 权重也随机一点，让 q/k norm 等路径真正被测到 / exercise the norms too
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn_like(p))
    model.save_pretrained(path, safe_serialization=True)
    with open(os.path.join(path, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": [eos], "pad_token_id": eos}, f)
    return path


def tp_greedy_worker(rank: int, tp_size: int, init_method: str, model_path: str, prompts: List[List[int]],
                     max_new_tokens: int, results, **server_args) -> None:
    """张量并行测试的一个 rank：建进程组、加载本 rank 的分片、贪心跑完所有 prompt，rank 0 交回结果。

    One rank of a tensor-parallel test (spawned; gloo on CPU): join the group, load this rank's shard,
    run every prompt greedily through the real Scheduler, and let rank 0 put {rid: output ids} and the
    logits of the first step into `results` (a multiprocessing queue). Errors are reported, not hung on.
    """
    import traceback

    try:
        from minisgl import distributed
        from minisgl.io_struct import TokenizedGenerateReqInput
        from minisgl.runner.model_runner import ModelRunner
        from minisgl.sampling.sampling_params import SamplingParams
        from minisgl.scheduler.scheduler import Scheduler
        from minisgl.server_args import ServerArgs

        distributed.init_distributed(rank, tp_size, init_method, "cpu")
        args = ServerArgs(model_path=model_path, tp_size=tp_size, device="cpu", **server_args).resolve()
        sched = Scheduler(args, model_runner=ModelRunner(args))
        for i, ids in enumerate(prompts):
            params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, ignore_eos=True)
            sched.add_request(TokenizedGenerateReqInput(f"r{i}", None, list(ids), params))
        outputs: dict = {f"r{i}": [] for i in range(len(prompts))}
        for step in sched.run_until_idle():
            for rid, new in zip(step.out.rids, step.out.output_ids):
                outputs[rid].extend(new)
        sched.check_pool_whole()  # 没有泄漏的 KV 槽 / no leaked KV slot
        if rank == 0:
            results.put({"outputs": outputs, "kv_heads": sched.model_runner.num_kv_heads,
                         "pool_tokens": sched.token_to_kv_pool_allocator.size})
        distributed.destroy_distributed()
    except Exception:
        results.put({"error": f"rank {rank}: {traceback.format_exc()}"})
