# ================================================================================
# 📦 自带小模型的训练脚本（tiny-zh-en：唐诗 + 英文格言）
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   从 Debian 的 fortune 语料（唐诗三百首、宋诗一百首、中文格言、英文 fortunes）出发，
#   训练一个字节级 BPE 分词器和一个 Qwen3 架构的小模型，保存到 minisgl/assets/tiny-zh-en/，
#   作为引擎在没有 GPU、没有网络时的默认模型。
#   Builds a byte-level BPE tokenizer and a tiny Qwen3-architecture causal LM from Debian's
#   fortune files (Tang/Song poems, Chinese sayings, English fortunes) and saves them as the
#   engine's offline default model, minisgl/assets/tiny-zh-en/.
#
# 【生活比喻】Metaphor
#   学书法的孩子临帖：一遍遍临摹唐诗与格言（训练集），偶尔拿出没临过的字帖考一考
#   （held-out loss），直到能自己写出像样的句子。
#   A child learning calligraphy by copying model sheets: copy the poems and sayings again and
#   again (training set), now and then write out sheets never copied before (held-out loss),
#   until the hand produces passable lines of its own.
#
# 【核心架构】Architecture
#   /usr/share/games/fortunes/{tang300,song100,chinese,<English files>}
#        │  --prepare: 去 ANSI 颜色码/退格叠印，按 "\n%\n" 切条目，固定种子切分
#        ▼
#   build/tiny_corpus/{train,dev,heldout}.jsonl   (可 carry 到 GPU 机器 / carried to the GPU box)
#        │  --train
#        ├──► tokenizers.Tokenizer (byte-level BPE, Qwen 的预分词正则)
#        │        └─► PreTrainedTokenizerFast + Qwen 风格 chat template
#        ├──► Qwen3ForCausalLM (tied embeddings, GQA, q/k RMSNorm)
#        │        └─► AdamW + cosine LR + bf16 autocast，文档用 <|endoftext|> 拼接打包
#        ▼
#   minisgl/assets/tiny-zh-en/  model.safetensors (bf16) · tokenizer.json · config.json
#                               generation_config.json · heldout.txt · training_log.json · README.md
#        │  --eval PATH / --card PATH   (CPU)
#        ▼
#   held-out 平均 token 交叉熵 / mean token cross-entropy, 模型卡的贪心样例 / greedy samples
#
# 【工作流程】Workflow
#   1. --prepare：读 Debian 语料 → 清洗 → 每个来源各留 2% 作 dev、2% 作 held-out（seed 固定）。
#   2. --train：训练分词器 → 编码 → 每个 epoch 打乱文档、部分文档改写成对话格式 → 拼接切块
#      → 训练（每 eval_every 步在 dev/held-out 上评估）→ 以 bf16 保存 → 写模型卡。
#   3. --eval PATH：在 CPU 上用 PATH/heldout.txt 计算已保存模型的 held-out loss。
#   4. --card PATH：在 CPU 上重新生成模型卡（贪心续写样例 + held-out loss）。
#
#   debian files ─prepare─► jsonl ─train─► tokenizer ─► packed blocks ─► Qwen3 ─save─► assets
#                                                                                 └─► eval / card
#
# 【关键概念】Key Concepts
#   - 字节级 BPE (byte-level BPE)：基础字母表是 256 个字节，任何 UTF-8 文本都能编码，不会有 <unk>；
#     常见汉字合并成 1 个 token，生僻字退化为 2–3 个字节 token。
#   - 打包 (packing)：文档之间插入 <|endoftext|> 再切成定长块，没有 padding 浪费；
#     模型因此学会在一条格言/一首诗结束时输出 <|endoftext|>。
#   - held-out loss = held-out 文本（同样用 <|endoftext|> 拼接、按 block 切块）上
#     每个被预测 token 的平均交叉熵（nats）；exp(loss) 即困惑度 (perplexity)。
#   - 参数量：tied embedding 时 ≈ V·d + L·(2·d·H·hd + 2·d·KV·hd + 3·d·I)，bf16 每参数 2 字节。
#   - 小词表的改动：先把每个汉字和全角标点单独切开，再用 Qwen2 的预分词正则 → 中文 1 字 ≈ 1 token。
#   - 小语料（约 1M token）下模型很快过拟合：超参与步数按 dev loss 选择，held-out 只用于报告。
#   - 自带模型（见 minisgl/assets/tiny-zh-en/README.md）：6 层、d=256、4 头/2 KV 头、V=6144，
#     5,705,728 参数，bf16 权重 11.4 MB；H100 上训练 994 步；held-out loss 4.2011 nats/token。
#     The bundled model: 5.7M params, 11.4 MB of bf16 weights, held-out loss 4.2011 nats/token.
#
# 【使用方式】Usage
#   $ apt-get install -y fortunes-zh fortunes            # Debian 语料 / the corpus
#   $ python -m minisgl.tools.train_tiny --prepare       # → build/tiny_corpus/
#   $ python -m minisgl.tools.train_tiny --train         # → minisgl/assets/tiny-zh-en/
#   $ python -m minisgl.tools.train_tiny --eval minisgl/assets/tiny-zh-en
#   $ python -m minisgl.tools.train_tiny --card minisgl/assets/tiny-zh-en
#
# 【对应章节】Chapter: docs/zh/00-welcome.md
# ================================================================================
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import time
from typing import TYPE_CHECKING, Iterable, Optional

if TYPE_CHECKING:  # torch 只在需要时导入（--prepare 不需要）/ torch is imported lazily
    import torch

FORTUNE_DIR = "/usr/share/games/fortunes"
DEFAULT_CORPUS = "build/tiny_corpus"
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "tiny-zh-en")

ZH_FILES = ["tang300", "song100", "chinese"]
# ascii-art 是字符画，不是文字 / ascii-art is pictures, not prose.
EN_SKIP = {"ascii-art"}
EOT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [EOT, IM_START, IM_END]

# Qwen2/Qwen3 的预分词正则（汉字连写算作 \p{L}+，数字逐位切开）。
# The Qwen2/Qwen3 pre-tokenizer pattern (runs of CJK count as \p{L}+, digits split one by one).
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# 小词表的改动：每个汉字和全角标点先单独切开（一字一 token），词表留给更多的单字。
# Small-vocab tweak: every Han character and CJK/full-width punctuation is its own piece first,
# so the vocabulary spends its slots on single characters (1 token ≈ 1 字) rather than words.
HAN_PATTERN = r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]"

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# 对话格式样本用的用户提示（按来源）/ user prompts for the chat-format samples, by source.
CHAT_PROMPTS = {
    "tang300": ["写一首唐诗。", "背一首唐诗。", "请给我一首唐诗。"],
    "song100": ["写一首宋诗。", "背一首宋诗。"],
    "chinese": ["说一句格言。", "给我一句名言。", "讲一句有道理的话。"],
    "en": ["Tell me a fortune.", "Give me a quotation.", "Say something wise."],
}

SAMPLE_PROMPTS = ["床前明月光", "Shall I compare thee"]

ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
BACKSPACE_RE = re.compile(r".\x08")              # 叠印：'_\bX' 下划线、'X\bX' 粗体 / overstrike
CTRL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # 剩下的控制字符（\n 与 \t 除外）
BOX_RE = re.compile(r"[\u2500-\u257f]")          # 表格线 → Debian 手册的表格 / manual tables
SECTION_RE = re.compile(r"^\s*(\d+(\.\d+)+\.?\s|第\s*\d+\s*章)")  # Debian 参考手册的章节


def log(msg: str) -> None:
    print(msg, flush=True)


# ======== 第1步：语料 / Step 1: corpus ========

def fix_mojibake(text: str) -> str:
    """把被当成 latin-1 又编码了一次的 UTF-8 还原（'donâ\x80\x99t' → 'don’t'），最多两层。"""
    for _ in range(2):
        if not re.search(r"[\x80-\x9f]", text):
            break
        try:
            text = text.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            break
    return text


def clean_entry(text: str) -> str:
    """清洗一条 fortune。Clean one fortune entry.

    【工作流程】Workflow
      去 ANSI 颜色码 → 修复双重编码 → 去退格叠印 → 去控制字符 → 不换行空格变空格、tab 变 4 空格
      → 去行尾空白 → 连续 3+ 个换行压成 2 个 → 去首尾空行与空条目留下的 '%' 行。
    """
    text = fix_mojibake(ANSI_RE.sub("", text))
    text = BACKSPACE_RE.sub("", text)
    text = text.replace("\t", "    ").replace("\xa0", " ").replace("\r", "")
    text = CTRL_RE.sub("", text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text)
    text = re.sub(r"^(%\n)+", "", text.strip("\n") + "\n")  # "%\n%\n" 留下的空条目 / empty entries
    return text.strip("\n")


def split_fortunes(raw: str) -> list[str]:
    """按 '%' 行切条目（song100 的分隔行带尾随空格）。Split on '%' lines (song100 has trailing blanks)."""
    raw = ANSI_RE.sub("", raw)
    return re.split(r"\n%[ \t]*\n", "\n" + raw + "\n")


def normalise_zh_poem(text: str) -> str:
    """song100 的 '题目:《X》\\n作者:Y' 统一成 tang300 的 '《X》\\n作者：Y'。"""
    text = re.sub(r"^题目[:：]\s*", "", text)
    return re.sub(r"^作者[:]", "作者：", text, flags=re.M)


def keep_chinese(text: str) -> bool:
    """chinese 合集里丢掉 Debian 参考手册的章节与表格卡片，留下格言、论语、菜根谭等。"""
    return not BOX_RE.search(text) and not SECTION_RE.match(text)


def read_corpus(fortune_dir: str) -> list[dict]:
    """读所有来源，返回 [{'src': ..., 'text': ...}]（顺序固定）。Read every source, in a fixed order."""
    docs: list[dict] = []
    for name in ZH_FILES:
        path = os.path.join(fortune_dir, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} missing: apt-get install -y fortunes-zh")
        for e in split_fortunes(open(path, encoding="utf-8").read()):
            t = clean_entry(e)
            if name in ("tang300", "song100"):
                t = normalise_zh_poem(t)
            if len(t) < 2 or (name == "chinese" and not keep_chinese(t)):
                continue
            docs.append({"src": name, "text": t})
    en_files = sorted(f for f in os.listdir(fortune_dir)
                      if "." not in f and f not in ZH_FILES and f not in EN_SKIP
                      and os.path.isfile(os.path.join(fortune_dir, f)))
    if not en_files:
        raise FileNotFoundError(f"no English fortune files in {fortune_dir}: apt-get install -y fortunes")
    for name in en_files:
        raw = open(os.path.join(fortune_dir, name), encoding="utf-8", errors="replace").read()
        for e in split_fortunes(raw):
            t = clean_entry(e)
            if len(t) >= 2:
                docs.append({"src": "en", "file": name, "text": t})
    return docs


def split_docs(docs: list[dict], seed: int, dev_frac: float, heldout_frac: float):
    """每个来源内部固定种子打乱，各取一部分作 dev / held-out（分层切分）。Stratified split."""
    rng = random.Random(seed)
    by_src: dict[str, list[dict]] = {}
    for d in docs:
        by_src.setdefault(d["src"], []).append(d)
    train, dev, held = [], [], []
    for src in sorted(by_src):
        group = list(by_src[src])
        rng.shuffle(group)
        n_held = max(1, round(len(group) * heldout_frac))
        n_dev = max(1, round(len(group) * dev_frac))
        held += group[:n_held]
        dev += group[n_held:n_held + n_dev]
        train += group[n_held + n_dev:]
    return train, dev, held


def write_jsonl(path: str, docs: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")


def read_docs(path: str) -> list[str]:
    """读 .jsonl（每行一个 {'text':...}）或 fortune 格式 .txt（'%' 行分隔）。"""
    if path.endswith(".jsonl"):
        return [json.loads(line)["text"] for line in open(path, encoding="utf-8") if line.strip()]
    raw = open(path, encoding="utf-8").read()
    return [d for d in (x.strip("\n") for x in split_fortunes(raw)) if d]


def write_fortune_txt(path: str, texts: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n%\n".join(texts) + "\n")


def prepare(args) -> None:
    """--prepare：Debian 语料 → build/tiny_corpus/{train,dev,heldout}.jsonl + stats.json。"""
    docs = read_corpus(args.fortune_dir)
    train, dev, held = split_docs(docs, args.seed, args.dev_frac, args.heldout_frac)
    os.makedirs(args.corpus, exist_ok=True)
    for name, part in (("train", train), ("dev", dev), ("heldout", held)):
        write_jsonl(os.path.join(args.corpus, f"{name}.jsonl"), part)
    stats = {}
    for name, part in (("train", train), ("dev", dev), ("heldout", held)):
        per = {}
        for d in part:
            s = per.setdefault(d["src"], {"entries": 0, "chars": 0})
            s["entries"] += 1
            s["chars"] += len(d["text"])
        stats[name] = per
    stats["licence"] = {
        "tang300/song100/chinese": "Debian fortunes-zh, GPL-3.0-or-later (/usr/share/doc/fortunes-zh/copyright)",
        "en": "Debian fortunes (fortune-mod), BSD-3-Clause (University of California); "
              "see /usr/share/doc/fortunes/copyright",
    }
    with open(os.path.join(args.corpus, "stats.json"), "w", encoding="utf-8") as f:
        json.dump(stats, f, ensure_ascii=False, indent=1)
    for name, per in stats.items():
        if name != "licence":
            log(f"[prepare] {name:8s} " + "  ".join(f"{k}: {v['entries']} entries/{v['chars']} chars"
                                                  for k, v in sorted(per.items())))
    log(f"[prepare] wrote {args.corpus}/{{train,dev,heldout}}.jsonl")


# ======== 第2步：分词器 / Step 2: tokenizer ========

def train_tokenizer(texts: list[str], vocab_size: int):
    """训练字节级 BPE，包成带 chat template 的 PreTrainedTokenizerFast。

    Train a byte-level BPE (Qwen's pre-tokenizer regex, NFC normaliser) and wrap it as a
    transformers PreTrainedTokenizerFast with a Qwen-style chat template.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(HAN_PATTERN), behavior="isolated"),
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOT, pad_token=EOT, unk_token=None, bos_token=None,
        additional_special_tokens=[IM_START, IM_END], model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


# ======== 第3步：数据打包 / Step 3: packing ========

def chat_wrap(src: str, rng: random.Random) -> tuple[str, str]:
    """一轮对话的前后缀（中间放文档原文）。Prefix/suffix of one chat turn around a document."""
    prompt = rng.choice(CHAT_PROMPTS[src])
    return f"{IM_START}user\n{prompt}{IM_END}\n{IM_START}assistant\n", f"{IM_END}\n"


def pack(token_lists: list[list[int]], eot_id: int, block: int) -> "torch.Tensor":
    """[eot d1 eot d2 eot ...] 切成 block+1 的窗口（相邻窗口共享 1 个 token）。# [n, block+1]"""
    import torch

    stream: list[int] = [eot_id]
    for ids in token_lists:
        stream += ids + [eot_id]
    n = (len(stream) - 1) // block
    if n == 0:  # 太短时补 eot / pad a tiny stream
        stream += [eot_id] * (block + 1 - len(stream))
        n = 1
    t = torch.tensor(stream[: n * block + 1], dtype=torch.long)
    return torch.stack([t[i * block: i * block + block + 1] for i in range(n)])


# ======== 第4步：模型 / Step 4: model ========

def make_config(args, tokenizer):
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        head_dim=args.head_dim, max_position_embeddings=args.max_pos, rope_theta=args.rope_theta,
        rms_norm_eps=1e-6, tie_word_embeddings=True, attention_dropout=args.attn_dropout,
        initializer_range=0.02, use_cache=True,
        bos_token_id=tokenizer.convert_tokens_to_ids(EOT),
        eos_token_id=tokenizer.convert_tokens_to_ids(EOT),
        pad_token_id=tokenizer.convert_tokens_to_ids(EOT),
    )


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied: 共享的权重只算一次 / shared counted once


def _no_grad(fn):
    def wrapped(*a, **kw):
        import torch

        with torch.no_grad():
            return fn(*a, **kw)
    wrapped.__name__, wrapped.__doc__ = fn.__name__, fn.__doc__
    return wrapped


@_no_grad
def eval_loss(model, blocks, device: str, batch: int = 16, amp: bool = False) -> float:
    """blocks [n, block+1] 上的平均 token 交叉熵（nats）。Mean token cross-entropy over blocks."""
    import torch
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, blocks.shape[0], batch):
        b = blocks[i: i + batch].to(device)
        x, y = b[:, :-1], b[:, 1:]                              # [bs, T]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            logits = model(input_ids=x).logits                  # [bs, T, V]
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
        total += loss.item()
        count += y.numel()
    model.train(was_training)
    return total / count


def lr_at(step: int, total: int, warmup: int, peak: float, min_ratio: float) -> float:
    """线性预热 + 余弦退火到 peak·min_ratio。Linear warm-up, then cosine decay."""
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def train(args) -> None:
    """--train：分词器 → 模型 → 训练循环 → 保存 → 模型卡。Tokenizer, model, loop, save, card."""
    import torch
    import torch.nn.functional as F
    from transformers import GenerationConfig, Qwen3ForCausalLM

    # ======== 第1步：读语料、训练分词器 / Step 1: corpus + tokenizer ========
    t0 = time.time()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    rows = lambda name: [json.loads(l) for l in open(os.path.join(args.corpus, name), encoding="utf-8")]
    train_docs, dev_docs, held_docs = rows("train.jsonl"), rows("dev.jsonl"), rows("heldout.jsonl")
    tok_texts = [d["text"] for d in train_docs]
    tokenizer = train_tokenizer(tok_texts, args.vocab_size)
    eot_id = tokenizer.convert_tokens_to_ids(EOT)
    log(f"[tokenizer] vocab {len(tokenizer)} trained on {len(train_docs)} docs in {time.time() - t0:.1f}s")

    # ======== 第2步：编码 / Step 2: encode ========
    backend = tokenizer.backend_tokenizer  # 直接用 tokenizers 批量编码（快，且不报长度警告）
    enc = lambda texts: [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    dev_blocks = pack(enc([d["text"] for d in dev_docs]), eot_id, args.block)
    held_blocks = pack(enc([d["text"] for d in held_docs]), eot_id, args.block)
    plain_ids = enc([d["text"] for d in train_docs])
    n_tok = sum(len(x) + 1 for x in plain_ids)
    n_chars = sum(len(d["text"]) for d in train_docs)
    log(f"[data] train {n_tok} tokens ({n_chars / n_tok:.2f} chars/token), "
        f"dev {dev_blocks.numel()} , held-out {held_blocks.numel()} tokens (block {args.block})")
    # 诗歌上采样：每个 epoch 里唐诗/宋诗出现 poem_repeat 次 / poems appear poem_repeat times an epoch.
    epoch_docs = [d for d in train_docs for _ in range(args.poem_repeat if d["src"] in ("tang300", "song100") else 1)]

    # 文档只编码一次；对话格式 = 前缀 ids + 文档 ids + 后缀 ids（特殊 token 处切开，拼接与整体编码结果相同）。
    # Documents are encoded once; a chat turn is prefix ids + doc ids + suffix ids (special tokens
    # split the text first, so this equals encoding the whole rendered string).
    doc_ids = {id(d): ids for d, ids in zip(train_docs, plain_ids)}
    wrap_cache: dict[str, list[int]] = {}

    def wrap_ids(text: str) -> list[int]:
        if text not in wrap_cache:
            wrap_cache[text] = enc([text])[0]
        return wrap_cache[text]

    def epoch_blocks(epoch: int):
        rng = random.Random(args.seed * 1000 + epoch)
        order = list(epoch_docs)
        rng.shuffle(order)
        seqs = []
        for d in order:
            if rng.random() < args.chat_frac:
                pre, post = chat_wrap(d["src"], rng)
                seqs.append(wrap_ids(pre) + doc_ids[id(d)] + wrap_ids(post))
            else:
                seqs.append(doc_ids[id(d)])
        return pack(seqs, eot_id, args.block)

    # ======== 第3步：模型与优化器 / Step 3: model + optimiser ========
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    amp = device == "cuda"
    config = make_config(args, tokenizer)
    model = Qwen3ForCausalLM(config).to(device)
    n_params = count_params(model)
    log(f"[model] Qwen3 {args.layers}L d{args.hidden} H{args.heads}/KV{args.kv_heads} hd{args.head_dim} "
        f"I{args.intermediate} V{len(tokenizer)}: {n_params / 1e6:.3f}M params on {device}")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=(device == "cuda"))
    blocks = epoch_blocks(0)
    steps_per_epoch = max(1, blocks.shape[0] // args.batch)
    total = args.steps or int(args.epochs * steps_per_epoch)
    warmup = min(args.warmup, total // 5)
    log(f"[train] {steps_per_epoch} steps/epoch × batch {args.batch} × block {args.block}; {total} steps total")

    # ======== 第4步：训练循环 / Step 4: training loop ========
    curve = []
    epoch, pos = 0, 0
    perm = torch.randperm(blocks.shape[0], generator=torch.Generator().manual_seed(args.seed))
    model.train()
    t_start, tokens_seen, run_loss = time.time(), 0, []
    for step in range(total):
        if pos + args.batch > blocks.shape[0]:
            epoch += 1
            blocks = epoch_blocks(epoch)
            perm = torch.randperm(blocks.shape[0], generator=torch.Generator().manual_seed(args.seed + epoch))
            pos = 0
        b = blocks[perm[pos: pos + args.batch]].to(device, non_blocking=True)
        pos += args.batch
        lr = lr_at(step, total, warmup, args.lr, args.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = b[:, :-1], b[:, 1:]                              # [bs, T]：y 是 x 右移一位 / next tokens
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            logits = model(input_ids=x).logits                  # [bs, T, V]
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        run_loss.append(loss.item())
        tokens_seen += b[:, :-1].numel()
        last = step == total - 1
        if (step + 1) % args.log_every == 0 or last:
            el = time.time() - t_start
            log(f"step {step + 1:5d}/{total}  epoch {epoch}  lr {lr:.2e}  train {sum(run_loss[-args.log_every:]) / len(run_loss[-args.log_every:]):.4f}"
                f"  {tokens_seen / el:,.0f} tok/s  {el:.0f}s")
        if (step + 1) % args.eval_every == 0 or last:
            tr = sum(run_loss[-args.eval_every:]) / len(run_loss[-args.eval_every:])
            dv = eval_loss(model, dev_blocks, device, amp=amp)
            hv = eval_loss(model, held_blocks, device, amp=amp)
            curve.append({"step": step + 1, "epoch": round(tokens_seen / (steps_per_epoch * args.batch * args.block), 2),
                          "train": round(tr, 4), "dev": round(dv, 4), "heldout": round(hv, 4)})
            log(f"[eval] step {step + 1}: train {tr:.4f}  dev {dv:.4f}  held-out {hv:.4f}")

    # ======== 第5步：保存 / Step 5: save ========
    out_dir = args.out
    os.makedirs(out_dir, exist_ok=True)
    model = model.to("cpu").to(torch.bfloat16)
    model.config.use_cache = True
    model.save_pretrained(out_dir, safe_serialization=True)
    os.chmod(os.path.join(out_dir, "model.safetensors"), 0o644)  # safetensors 写成 0600 / written 0600
    tokenizer.save_pretrained(out_dir)
    compat_tokenizer_config(out_dir)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in (EOT, IM_END)]
    GenerationConfig(eos_token_id=ids, pad_token_id=eot_id, bos_token_id=eot_id, do_sample=False,
                     max_new_tokens=64).save_pretrained(out_dir)
    write_fortune_txt(os.path.join(out_dir, "heldout.txt"), [d["text"] for d in held_docs])
    meta = {
        "hparams": {k: v for k, v in vars(args).items() if k not in ("prepare", "train", "eval", "card")},
        "params": n_params, "train_tokens_per_epoch": n_tok, "train_chars": n_chars,
        "train_docs": len(train_docs), "dev_docs": len(dev_docs), "heldout_docs": len(held_docs),
        "steps": total, "steps_per_epoch": steps_per_epoch, "device": torch.cuda.get_device_name() if amp else "cpu",
        "train_seconds": round(time.time() - t_start, 1), "torch": torch.__version__,
        "transformers": __import__("transformers").__version__, "curve": curve,
        "corpus_stats": json.load(open(os.path.join(args.corpus, "stats.json"), encoding="utf-8")),
    }
    with open(os.path.join(out_dir, "training_log.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, ensure_ascii=False, indent=1)
    plot_curve(curve, os.path.join(out_dir, "curve.png"))
    log(f"[save] {out_dir} ({folder_mb(out_dir):.2f} MB) after {time.time() - t0:.0f}s")
    if not args.no_card:
        write_card(out_dir)


def compat_tokenizer_config(out_dir: str) -> None:
    """让 transformers 4.x 也能读：类名写 PreTrainedTokenizerFast，特殊 token 列表与 chat template 写进配置。

    transformers 5 writes tokenizer_class "TokenizersBackend" and a list-valued extra_special_tokens,
    which 4.x cannot read; the 4.x spelling below loads in both.
    """
    path = os.path.join(out_dir, "tokenizer_config.json")
    cfg = json.load(open(path, encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = cfg.pop("extra_special_tokens", None)
    cfg["additional_special_tokens"] = list(extra) if isinstance(extra, list) else [IM_START, IM_END]
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg["model_max_length"] = cfg.get("model_max_length", 1024)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=2)


def plot_curve(curve: list[dict], path: str) -> None:
    """有 matplotlib 就画 loss 曲线（可选）。Plot the loss curve if matplotlib is there (optional)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    steps = [c["step"] for c in curve]
    for key in ("train", "dev", "heldout"):
        ax.plot(steps, [c[key] for c in curve], label=key, marker=".")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("tiny-zh-en")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def folder_mb(path: str) -> float:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)) / 1e6


# ======== 第5步：CPU 上评估与样例 / Step 5: CPU evaluation and samples ========

def load_model(path: str):
    """CPU、float32 加载（与引擎在 CPU 上的默认 dtype 一致）。Load on CPU in float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, tok


def evaluate_path(path: str, heldout: Optional[str] = None, block: int = 512,
                  max_tokens: Optional[int] = None) -> dict:
    """已保存模型在 held-out 上的平均 token 交叉熵（CPU）。Held-out mean token CE of a saved model.

    【工作流程】Workflow
      1. 读 PATH/heldout.txt（fortune 格式）。 2. 编码，用 <|endoftext|> 拼接、切成 block+1 窗口。
      3. 前向，累加交叉熵 / 预测的 token 数。
    """
    import torch

    torch.set_grad_enabled(False)
    model, tok = load_model(path)
    texts = read_docs(heldout or os.path.join(path, "heldout.txt"))
    eot_id = tok.convert_tokens_to_ids(EOT)
    blocks = pack(tok(texts, add_special_tokens=False)["input_ids"], eot_id, block)
    if max_tokens:
        blocks = blocks[: max(1, max_tokens // block)]
    loss = eval_loss(model, blocks, "cpu", batch=8)
    return {"loss": loss, "ppl": math.exp(loss), "tokens": blocks.shape[0] * block, "docs": len(texts)}


def greedy(model, tok, prompt: str, max_new_tokens: int = 64) -> str:
    """贪心续写（HF generate，CPU）。Greedy continuation with HF generate on CPU."""
    import torch

    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=False)


def write_card(path: str) -> None:
    """在 CPU 上算 held-out loss、生成样例，写 README.md 模型卡。Write the model card (CPU)."""
    meta = json.load(open(os.path.join(path, "training_log.json"), encoding="utf-8"))
    h = meta["hparams"]
    t0 = time.time()
    ev = evaluate_path(path, block=h["block"])
    model, tok = load_model(path)
    samples = {p: greedy(model, tok, p) for p in SAMPLE_PROMPTS}
    chat = tok.apply_chat_template([{"role": "user", "content": "写一首唐诗。"}], tokenize=False,
                                   add_generation_prompt=True)
    chat_out = greedy(model, tok, chat, 80)
    log(f"[card] held-out loss {ev['loss']:.4f} (ppl {ev['ppl']:.1f}) on {ev['tokens']} tokens, "
        f"samples in {time.time() - t0:.1f}s")
    for p, s in samples.items():
        log(f"[card] {p!r} → {s!r}")
    log(f"[card] chat → {chat_out!r}")

    cs = meta["corpus_stats"]
    rows = []
    for part in ("train", "dev", "heldout"):
        for src, v in sorted(cs[part].items()):
            rows.append(f"| {part} | {src} | {v['entries']} | {v['chars']:,} |")
    curve = "\n".join(f"| {c['step']} | {c['epoch']} | {c['train']:.4f} | {c['dev']:.4f} | {c['heldout']:.4f} |"
                      for c in meta["curve"])
    flags = " \\\n    ".join(" ".join(f"--{k.replace('_', '-')} {h[k]:g}" if isinstance(h[k], float)
                                     else f"--{k.replace('_', '-')} {h[k]}" for k in group)
                            for group in REPRO_GROUPS)
    selection = meta.get("selection", "")
    files = sorted(os.listdir(path))
    size = folder_mb(path)
    png = "\n![training curve](curve.png)\n" if "curve.png" in files else ""
    fence = "```"
    card = f"""---
license: gpl-3.0-or-later
language: [zh, en]
library_name: transformers
pipeline_tag: text-generation
tags: [qwen3, tiny, minisgl, education]
---

# tiny-zh-en — minisgl 自带的小模型 / the bundled tiny bilingual model

一个 {meta['params'] / 1e6:.2f}M 参数的 **Qwen3 架构**因果语言模型，配自己训练的字节级 BPE 分词器，
用 Debian 的 fortune 语料（唐诗三百首、宋诗一百首、中文格言、英文 fortunes）训练。它让没有 GPU、
没有网络的学习者也有一个真的模型可跑：能写出像样的中文诗句和英文格言（但不懂事实，也不会对话推理）。

A {meta['params'] / 1e6:.2f}M-parameter **Qwen3-architecture** causal LM with its own byte-level BPE
tokenizer, trained on Debian's fortune files. It is minisgl's offline default model: it writes
recognisable Chinese poem lines and English quotations, and nothing more.

## 语料与许可 / Corpus and licence

| split | source | entries | chars |
|---|---|---|---|
{chr(10).join(rows)}

- `tang300`（唐诗三百首）, `song100`（宋诗一百首）, `chinese`（格言、论语、菜根谭、谚语……）:
  Debian package **fortunes-zh** 2.98, licence **GPL-3.0-or-later**. From `chinese` the Debian
  Reference manual sections and table cards are dropped (box-drawing tables, numbered sections).
- `en`: every file of Debian package **fortunes** (fortune-mod 1:1.99.1) except `ascii-art`;
  BSD-3-Clause (© The Regents of the University of California; see `/usr/share/doc/fortunes/copyright`).
- 清洗 / cleaning: ANSI colour codes and backspace overstrikes removed, tabs → 4 spaces, NBSP → space,
  trailing spaces stripped, 3+ newlines → 2; entries split on `%` lines; song100 headers normalised to
  tang300's `《题目》\\n作者：…` form.
- 切分 / split: per source, fixed seed {h['seed']}: {h['heldout_frac']:.0%} held-out, {h['dev_frac']:.0%} dev
  (used to choose hyper-parameters), the rest train. `heldout.txt` here holds the held-out entries
  (fortune format, `%` lines between entries).
- Because the weights and `heldout.txt` derive from GPL-3.0-or-later text, this folder is
  distributed under **GPL-3.0-or-later**.

## 模型 / Model

| | |
|---|---|
| architecture | `Qwen3ForCausalLM` (q/k RMSNorm, RoPE, SwiGLU, GQA), tied embeddings |
| layers / hidden / intermediate | {h['layers']} / {h['hidden']} / {h['intermediate']} |
| attention heads / KV heads / head_dim | {h['heads']} / {h['kv_heads']} / {h['head_dim']} |
| vocab | {len(tok)} (byte-level BPE, NFC; each Han character / CJK punctuation split off first, then the Qwen2 pre-tokenizer regex; specials `<|endoftext|>` `<|im_start|>` `<|im_end|>`) |
| max_position_embeddings / rope_theta | {h['max_pos']} / {h['rope_theta']:g} |
| parameters | **{meta['params']:,}** ({meta['params'] / 1e6:.3f}M, embeddings counted once) |
| weights | `model.safetensors`, bfloat16 |
| folder size | {size:.2f} MB |
| eos | `eos_token` = `<|endoftext|>`; `generation_config.json` stops on `[<|endoftext|>, <|im_end|>]` |
| chat template | Qwen style: `<|im_start|>role\\n…<|im_end|>\\n`, `add_generation_prompt` → `<|im_start|>assistant\\n` |

## 训练 / Training

| hyper-parameter | value |
|---|---|
| optimiser | AdamW (β 0.9/0.95, eps 1e-8), weight decay {h['weight_decay']} on matrices, grad clip {h['grad_clip']} |
| learning rate | peak {h['lr']:g}, linear warm-up {h['warmup']} steps, cosine to {h['min_lr_ratio']:g}× peak |
| batch | {h['batch']} × {h['block']} tokens (documents packed with `<|endoftext|>`) |
| steps | {meta['steps']} ({meta['steps_per_epoch']} steps/epoch, ≈ {meta['steps'] / meta['steps_per_epoch']:.1f} epochs) |
| train tokens / epoch | {meta['train_tokens_per_epoch']:,} ({meta['train_chars'] / meta['train_tokens_per_epoch']:.2f} chars/token) |
| poem up-sampling | tang300 + song100 × {h['poem_repeat']} per epoch |
| chat-format share | {h['chat_frac']:.0%} of documents per epoch rendered as one `user`/`assistant` turn ending in `<|im_end|>` |
| attention dropout | {h['attn_dropout']} |
| precision | bf16 autocast, fp32 master weights; saved as bf16 |
| seed | {h['seed']} |
| hardware / time | {meta['device']}, {meta['train_seconds']} s (torch {meta['torch']}, transformers {meta['transformers']}) |

Loss = mean token cross-entropy (nats) on documents packed with `<|endoftext|>` into {h['block']}-token blocks.

| step | epoch | train | dev | held-out |
|---|---|---|---|---|
{curve}
{png}
**Final held-out loss: {ev['loss']:.4f} nats/token** (perplexity {ev['ppl']:.1f}; {ev['tokens']:,} tokens of
{ev['docs']} held-out entries; saved bf16 weights evaluated in float32 on CPU by
`python -m minisgl.tools.train_tiny --eval minisgl/assets/tiny-zh-en`).

{selection}
## 样例 / Samples

Greedy (`do_sample=False`), 64 new tokens, HF transformers {__import__('transformers').__version__} on CPU, float32:

{fence}text
床前明月光{samples['床前明月光']}
{fence}

{fence}text
Shall I compare thee{samples['Shall I compare thee']}
{fence}

Chat template, user `写一首唐诗。`, 80 new tokens (only {h['chat_frac']:.0%} of training documents were chat turns:
the model knows the format, not what was asked):

{fence}text
{chat_out}
{fence}

## 复现 / Reproduce

{fence}bash
apt-get install -y fortunes-zh fortunes          # Debian/Ubuntu: the corpus
python -m minisgl.tools.train_tiny --prepare
python -m minisgl.tools.train_tiny --train {flags}
{fence}

(`--prepare` writes `build/tiny_corpus/`; `--train` uses a GPU if there is one. The published weights
were trained on {meta['device']}; GPU kernels are not bit-deterministic, so a rerun gives
close but not identical numbers.) `--eval PATH` recomputes the held-out loss; `--card PATH` rewrites
this card.

## 局限 / Limitations

A toy: {meta['params'] / 1e6:.1f}M parameters and about {meta['train_tokens_per_epoch'] / 1e6:.1f}M training tokens. It imitates the
form of poems and fortunes, repeats itself under greedy decoding, mixes up facts, and its English
fortunes carry the humour (and datedness) of the 1990s fortune files. For teaching the engine only.

Files: {', '.join(files + ([] if 'README.md' in files else ['README.md']))}.
"""
    with open(os.path.join(path, "README.md"), "w", encoding="utf-8") as f:
        f.write(card)
    log(f"[card] wrote {os.path.join(path, 'README.md')}")


# ======== 命令行 / CLI ========

# 模型卡里的复现命令逐个写出这些超参（不依赖脚本缺省值）/ the card spells out every one of these.
REPRO_GROUPS = (("vocab_size", "hidden", "intermediate", "layers", "heads", "kv_heads", "head_dim"),
                ("max_pos", "rope_theta", "attn_dropout", "block", "batch", "lr", "min_lr_ratio", "warmup"),
                ("weight_decay", "grad_clip", "epochs", "steps", "poem_repeat", "chat_frac", "seed", "eval_every"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m minisgl.tools.train_tiny",
        description="训练 minisgl 自带的小模型 tiny-zh-en / train minisgl's bundled tiny model tiny-zh-en")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--prepare", action="store_true", help="从 Debian fortune 文件生成语料 / build the corpus")
    mode.add_argument("--train", action="store_true", help="训练分词器和模型并保存 / train tokenizer + model")
    mode.add_argument("--eval", metavar="PATH", help="CPU 上计算已保存模型的 held-out loss / held-out loss of a saved model")
    mode.add_argument("--card", metavar="PATH", help="CPU 上重写模型卡 README.md / rewrite the model card on CPU")
    g = p.add_argument_group("data / 数据")
    g.add_argument("--fortune-dir", default=FORTUNE_DIR, help="Debian fortune 文件目录 / fortune files folder")
    g.add_argument("--corpus", default=DEFAULT_CORPUS, help="语料目录（--prepare 写，--train 读）/ corpus folder")
    g.add_argument("--out", default=DEFAULT_OUT, help="模型输出目录 / output model folder")
    g.add_argument("--dev-frac", type=float, default=0.02, help="dev 比例（选超参用）/ dev share")
    g.add_argument("--heldout-frac", type=float, default=0.02, help="held-out 比例（只报告）/ held-out share")
    g.add_argument("--heldout", default=None, help="--eval 用的 held-out 文件（缺省 PATH/heldout.txt）")
    g.add_argument("--max-tokens", type=int, default=None, help="--eval 最多评估的 token 数 / cap for --eval")
    g = p.add_argument_group("model / 模型")
    g.add_argument("--vocab-size", type=int, default=6144, help="BPE 词表大小（含 3 个特殊 token）/ vocab size")
    g.add_argument("--hidden", type=int, default=256, help="hidden_size")
    g.add_argument("--intermediate", type=int, default=640, help="MLP intermediate_size")
    g.add_argument("--layers", type=int, default=6, help="num_hidden_layers")
    g.add_argument("--heads", type=int, default=4, help="num_attention_heads")
    g.add_argument("--kv-heads", type=int, default=2, help="num_key_value_heads (GQA)")
    g.add_argument("--head-dim", type=int, default=64, help="head_dim")
    g.add_argument("--max-pos", type=int, default=1024, help="max_position_embeddings")
    g.add_argument("--rope-theta", type=float, default=10000.0, help="RoPE base")
    g.add_argument("--attn-dropout", type=float, default=0.1, help="attention_dropout（小语料时的正则化 / regulariser）")
    g = p.add_argument_group("training / 训练")
    g.add_argument("--block", type=int, default=512, help="训练块长度 / tokens per packed block")
    g.add_argument("--batch", type=int, default=32, help="每步的块数 / blocks per step")
    g.add_argument("--lr", type=float, default=2e-3, help="峰值学习率 / peak learning rate")
    g.add_argument("--min-lr-ratio", type=float, default=0.1, help="余弦终点 = lr × 此值 / cosine floor ratio")
    g.add_argument("--warmup", type=int, default=50, help="预热步数 / warm-up steps")
    g.add_argument("--weight-decay", type=float, default=0.2, help="AdamW weight decay（只作用于矩阵 / matrices only）")
    g.add_argument("--grad-clip", type=float, default=1.0, help="梯度裁剪 / gradient clipping norm")
    g.add_argument("--epochs", type=float, default=14.0, help="训练轮数（--steps 为 0 时）/ epochs")
    g.add_argument("--steps", type=int, default=0, help="总步数（覆盖 --epochs）/ total steps (overrides --epochs)")
    g.add_argument("--poem-repeat", type=int, default=2, help="唐诗宋诗每轮重复次数 / poem up-sampling")
    g.add_argument("--chat-frac", type=float, default=0.1, help="写成对话格式的文档比例 / chat-format share")
    g.add_argument("--seed", type=int, default=1234, help="随机种子 / random seed")
    g.add_argument("--cpu", action="store_true", help="即使有 GPU 也用 CPU / force CPU")
    g.add_argument("--log-every", type=int, default=100, help="每多少步打印 / print every N steps")
    g.add_argument("--eval-every", type=int, default=71, help="每多少步评估 / evaluate every N steps")
    g.add_argument("--no-card", action="store_true", help="训练后不写模型卡 / skip the model card")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.prepare:
        prepare(args)
    elif args.train:
        train(args)
    elif args.eval:
        r = evaluate_path(args.eval, args.heldout, max_tokens=args.max_tokens)
        log(f"held-out loss {r['loss']:.4f} nats/token (ppl {r['ppl']:.2f}) on {r['tokens']} tokens, {r['docs']} entries")
    elif args.card:
        write_card(args.card)
    return 0


if __name__ == "__main__":
    sys.exit(main())
