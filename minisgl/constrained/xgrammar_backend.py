# ================================================================================
# 🧩 xgrammar 语法后端：JSON Schema / 正则 → 下推自动机 → 每步的 token 位掩码
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   用 xgrammar（SGLang 的默认语法库）实现 base_grammar_backend 的接口：把 JSON Schema 或正则
#   编译成 CompiledGrammar，每个请求一个 GrammarMatcher，每步填 token 位掩码、接受 token。
#   The base_grammar_backend interface on xgrammar (SGLang's default grammar library): a JSON
#   Schema or regex compiles to a CompiledGrammar; each request owns a GrammarMatcher that fills
#   the token bitmask every step and accepts the sampled token.
#
# 【生活比喻】Metaphor
#   填字游戏的格子模板（见 base_grammar_backend.py）：xgrammar 是做模板的印刷厂，提前把“每个
#   位置能填哪些字”印成表，大部分格子查表即可，只有少数要看上下文再定。
#   The crossword template (see base_grammar_backend.py): xgrammar is the print shop that prints,
#   ahead of time, which letters fit where; most squares are a table look-up, a few need context.
#
# 【核心架构】Architecture
#   XGrammarGrammarBackend(tokenizer, vocab_size, eos_token_ids)
#    ├─ _compiler（第一次编译时在后台线程里建 / built on first use, in the worker thread）
#    │    └─ xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size, stop_token_ids=EOS)
#    ├─ dispatch_json(schema)  → compile_json_schema(any_whitespace=False) ─┐
#    └─ dispatch_regex(pattern) → compile_regex                             ├─► XGrammarGrammar(ctx)
#                                                                           ┘     └─ GrammarMatcher(ctx)
#
# 【工作流程】Workflow
#   1. TokenizerInfo 把整个词表的每个 token 还原成字节串（byte-level BPE 的 Ġ 等都解码掉）。
#   2. 编译：schema → EBNF 语法 → 下推自动机，并预先算好“与栈无关”的 token 表（adaptive token mask cache）。
#   3. 每步：fill_next_token_bitmask 写一行位掩码；apply_token_bitmask_inplace 把 0 位的 logit 设为 -inf。
#   4. 采到 token 后 accept_token 推进状态；语法走完后只允许 EOS，接受 EOS 后 is_terminated() 为真。
#
# 【关键概念】Key Concepts
#   - any_whitespace=False：JSON 只用紧凑的分隔符（", " 和 ": "），不允许任意多的空格和换行——
#     小模型不会在空白里打转，输出长度有上界。Compact separators only: a small model cannot wander in
#     whitespace, so the output length stays bounded.
#   - vocab_size 用模型的（lm_head 行数），可能大于分词器的 token 数；多出来的 id 在掩码里永远是 0。
#     The model's vocab_size (lm_head rows) may exceed the tokenizer's; the extra ids are always masked.
#   - stop_token_ids = 调度器的 EOS 集合（config 与分词器的并集），语法结束时它们都是合法的下一个 token。
#   - 速度：xgrammar 把 token 分成“只看当前状态”（编译时预先算好）与“要看栈”（运行时检查，数量很少）
#     两类，所以每步填掩码远快于逐个 token 判断。Context-independent tokens are precomputed at compile
#     time; only the few stack-dependent ones are checked per step.
#
# 【使用方式】Usage
#   >>> backend = XGrammarGrammarBackend(tokenizer, vocab_size=6144, eos_token_ids={0})
#   >>> g = backend.get_cached_or_future_value(("json", '{"type": "integer"}')).result().copy()
#   >>> mask = g.allocate_vocab_mask(6144, 1, "cpu"); g.fill_vocab_mask(mask, 0)
#
# 【对应章节】Chapter: docs/zh/11-advanced.md
# ================================================================================
from __future__ import annotations

from typing import Iterable

import torch
import xgrammar as xgr

from minisgl.constrained.base_grammar_backend import (
    BaseGrammarBackend, BaseGrammarObject, InvalidGrammarError, clean_error,
)

COMPILER_THREADS = 2  # xgrammar 编译时自己的线程数 / xgrammar's own threads per compile


class XGrammarGrammar(BaseGrammarObject):
    """一个请求的 xgrammar 匹配器。One request's xgrammar matcher."""

    def __init__(self, ctx: "xgr.CompiledGrammar", vocab_size: int):
        self.ctx = ctx
        self.vocab_size = vocab_size
        self.matcher = xgr.GrammarMatcher(ctx)

    def accept_token(self, token: int) -> bool:
        return self.matcher.accept_token(token)

    def is_terminated(self) -> bool:
        return self.matcher.is_terminated()

    def allocate_vocab_mask(self, vocab_size: int, batch_size: int, device) -> torch.Tensor:
        # CPU 上的 int32 [bs, ceil(V/32)]，全为 -1（所有位都是 1 = 全部允许）。All bits set = all allowed.
        return xgr.allocate_token_bitmask(batch_size, vocab_size)

    def fill_vocab_mask(self, vocab_mask: torch.Tensor, idx: int) -> None:
        self.matcher.fill_next_token_bitmask(vocab_mask, idx)

    @staticmethod
    def apply_vocab_mask(logits: torch.Tensor, vocab_mask: torch.Tensor) -> None:
        # CPU 上是 C++ 实现，GPU 上是 CUDA/Triton kernel。A C++ loop on the CPU, a kernel on the GPU.
        xgr.apply_token_bitmask_inplace(logits, vocab_mask)

    def copy(self) -> "XGrammarGrammar":
        return XGrammarGrammar(self.ctx, self.vocab_size)


class XGrammarGrammarBackend(BaseGrammarBackend):
    """用 xgrammar 编译 JSON Schema 与正则。Compiles JSON Schemas and regexes with xgrammar."""

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: Iterable[int] = ()):
        super().__init__(max_workers=1)  # 一个线程：_compiler 只在这个线程里建、用 / built and used in one thread
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_token_ids = sorted(set(eos_token_ids))
        self._compiler = None

    def _get_compiler(self) -> "xgr.GrammarCompiler":
        """（后台线程）第一次用时建：遍历整个词表，大词表要几百毫秒。(Worker) built on first use: walks the vocab."""
        if self._compiler is None:
            info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.vocab_size,
                                                      stop_token_ids=self.stop_token_ids or None)
            # 缓存由 BaseGrammarBackend 负责。Caching is BaseGrammarBackend's job.
            self._compiler = xgr.GrammarCompiler(info, max_threads=COMPILER_THREADS, cache_enabled=False)
        return self._compiler

    def dispatch_json(self, key_string: str) -> XGrammarGrammar:
        compiler = self._get_compiler()
        try:
            ctx = compiler.compile_json_schema(key_string, any_whitespace=False)
        except (RuntimeError, ValueError, TypeError) as e:
            raise InvalidGrammarError(f"json_schema could not be compiled: {clean_error(e)}") from None
        return XGrammarGrammar(ctx, self.vocab_size)

    def dispatch_regex(self, key_string: str) -> XGrammarGrammar:
        compiler = self._get_compiler()
        try:
            ctx = compiler.compile_regex(key_string)
        except (RuntimeError, ValueError, TypeError) as e:
            raise InvalidGrammarError(f"regex could not be compiled: {clean_error(e)}") from None
        return XGrammarGrammar(ctx, self.vocab_size)
