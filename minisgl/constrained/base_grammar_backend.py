# ================================================================================
# 🧩 语法后端接口（grammar backend）：结构化输出的“编译 → 掩码 → 推进 → 结束？”
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   结构化输出（JSON Schema / 正则）与具体语法库之间的一层小接口：BaseGrammarObject 是一个请求
#   手里的“匹配器”（每步填词表掩码、接受采到的 token、回答“结束了吗”）；BaseGrammarBackend
#   在后台线程池里编译语法并按 (类型, 文本) 缓存，调度器的主循环从不等编译。
#   A small interface between structured output (JSON Schema / regex) and a grammar library:
#   BaseGrammarObject is one request's matcher (fill the vocabulary mask each step, accept the
#   sampled token, answer "terminated?"); BaseGrammarBackend compiles grammars in a background
#   thread pool and caches them by (kind, text), so the scheduler's loop never waits for a compile.
#
# 【生活比喻】Metaphor
#   填字游戏的格子模板：出题人（后端）先把题目（schema）做成一张带格子的模板，做好一次就存档，
#   下次同样的题直接复印；每位答题人（请求）拿一份复印件，每写一个字，模板就告诉他下一格能写哪些字。
#   A crossword template: the setter (backend) turns a puzzle (schema) into a grid once and files
#   it; the same puzzle is photocopied next time. Each solver (request) gets a copy, and after every
#   letter the grid says which letters may fill the next square.
#
# 【核心架构】Architecture
#   Scheduler.add_request ──► BaseGrammarBackend.get_cached_or_future_value(key) ──► Future
#        │                          ├─ cache: OrderedDict[key, Future]（命中 = 已完成的 Future）
#        │                          └─ executor: ThreadPoolExecutor ──► dispatch_json / dispatch_regex
#        ▼                                                               （子类实现 / subclass）
#   grammar_queue ──(Future 完成 / done)──► req.grammar = template.copy() ──► waiting_queue
#
#   BaseGrammarObject（每个请求一个 / one per request）
#    ├─ allocate_vocab_mask(V, bs) → int32 [bs, ceil(V/32)]，全 1 = 全部允许 / all ones = all allowed
#    ├─ fill_vocab_mask(mask, i)    第 i 行写入“下一个 token 允许谁” / row i: who may come next
#    ├─ apply_vocab_mask(logits, mask)  不允许的 logit = -inf / forbidden logits → -inf
#    ├─ accept_token(tok) → bool    推进自动机状态 / advance the automaton
#    ├─ is_terminated() → bool      已接受结束 token / the stop token was accepted
#    └─ copy()                      同一个编译结果，新的匹配状态 / same compiled grammar, fresh state
#
# 【工作流程】Workflow
#   1. 请求带 json_schema 或 regex：grammar_key() 给出缓存键 ("json", schema) / ("regex", pattern)。
#   2. get_cached_or_future_value(key)：缓存里有就返回那个 Future（可能已完成），否则提交到线程池。
#   3. 编译出错（语法不合法、schema 不支持）：Future 里存着 InvalidGrammarError；调度器把它变成
#      400 的 abort，循环照常运行。错误结果也缓存：同一个坏 schema 不重复编译。
#   4. Future 完成后，调度器用 template.copy() 给请求一个新的匹配器，请求进入 waiting_queue。
#
# 【关键概念】Key Concepts
#   - 位掩码 bitmask：每个 token 一位，int32 一格装 32 个 token；V = 151,936 时一行 4,748 个 int32
#     ≈ 19 KB，比 bool 掩码小 8 倍。One bit per token; a 151,936-token row is 4,748 int32 ≈ 19 KB.
#   - 编译离开热路径：JSON Schema 编译可能要几十到几百毫秒（词表越大越慢），放在后台线程。
#     Compiling (tens to hundreds of ms, growing with the vocabulary) stays off the scheduler thread.
#   - 缓存按完整的 schema 文本：相同文本 → 同一个 Future；LRU 上限 GRAMMAR_CACHE_SIZE 条。
#   - 名字沿用 SGLang（python/sglang/srt/constrained/）：BaseGrammarBackend、BaseGrammarObject、
#     get_cached_or_future_value、fill_vocab_mask、apply_vocab_mask、accept_token、is_terminated。
#
# 【使用方式】Usage
#   >>> backend = create_grammar_backend("xgrammar", tokenizer, vocab_size=6144, eos_token_ids={0})
#   >>> fut = backend.get_cached_or_future_value(("regex", r"[0-9]{3}"))
#   >>> grammar = fut.result().copy()
#   >>> mask = grammar.allocate_vocab_mask(6144, 1, "cpu"); grammar.fill_vocab_mask(mask, 0)
#
# 【对应章节】Chapter: docs/zh/11-advanced.md
# ================================================================================
from __future__ import annotations

import re
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterable, Optional, Tuple

import torch

GRAMMAR_CACHE_SIZE = 256  # 缓存多少个编译结果 / compiled grammars kept (LRU)
MAX_ERROR_CHARS = 300  # 错误信息截到多长 / how much of a library's error message to keep
GRAMMAR_BACKENDS = ("xgrammar",)

GrammarKey = Tuple[str, str]  # ("json", schema 文本) 或 ("regex", 模式) / ("json", schema) or ("regex", pattern)


class InvalidGrammarError(ValueError):
    """schema / 正则无法编译（用户的输入有问题 → 400）。The schema / regex cannot be compiled (the input's fault)."""


def grammar_key(sampling_params) -> Optional[GrammarKey]:
    """请求的语法缓存键；没有约束时为 None。The request's grammar cache key, or None when unconstrained."""
    if sampling_params.json_schema is not None:
        return ("json", sampling_params.json_schema)
    if sampling_params.regex is not None:
        return ("regex", sampling_params.regex)
    return None


def clean_error(e: BaseException) -> str:
    """去掉 C++ 库错误里的时间戳与源码位置，只留说明。Drop a C++ library's timestamp and file:line prefix."""
    msg = str(e).strip()
    msg = re.sub(r"^\[[\d:]+\]\s+\S+:\d+:\s*", "", msg)  # "[09:04:28] /project/cpp/x.cc:94: "
    msg = re.sub(r"^Check failed: \(.*?\) is false:\s*", "", msg)
    msg = " ".join(msg.split())
    return msg if len(msg) <= MAX_ERROR_CHARS else msg[:MAX_ERROR_CHARS] + " …"


class BaseGrammarObject:
    """一个请求的语法匹配器（见文件头）。One request's grammar matcher; see the file header.

    Subclasses wrap one library's matcher; the scheduler and the sampler only call these methods.
    """

    def accept_token(self, token: int) -> bool:
        """接受采到的 token、推进状态；token 不合法时返回 False。Advance on a sampled token; False if illegal."""
        raise NotImplementedError

    def is_terminated(self) -> bool:
        """语法已经走完（已接受结束 token）。The grammar has accepted its stop token."""
        raise NotImplementedError

    def allocate_vocab_mask(self, vocab_size: int, batch_size: int, device) -> torch.Tensor:
        """一个全部允许的位掩码 int32 [bs, ceil(V/32)]。An all-allowed bitmask of shape [bs, ceil(V/32)]."""
        raise NotImplementedError

    def fill_vocab_mask(self, vocab_mask: torch.Tensor, idx: int) -> None:
        """把“下一个 token 允许谁”写进第 idx 行。Write the allowed next tokens into row idx."""
        raise NotImplementedError

    @staticmethod
    def move_vocab_mask(vocab_mask: torch.Tensor, device) -> torch.Tensor:
        """掩码在 CPU 上填好，搬到 logits 所在设备。The mask is filled on the CPU; move it to the logits."""
        return vocab_mask.to(device, non_blocking=True)

    @staticmethod
    def apply_vocab_mask(logits: torch.Tensor, vocab_mask: torch.Tensor) -> None:
        """原地把不允许的 logit 设为 -inf。Set forbidden logits to -inf in place."""
        raise NotImplementedError

    def copy(self) -> "BaseGrammarObject":
        """同一个编译结果、全新的匹配状态（每个请求一份）。Same compiled grammar, fresh state (one per request)."""
        raise NotImplementedError


class BaseGrammarBackend:
    """在后台编译语法并缓存（见文件头）。Compile grammars in the background and cache them.

    Only the scheduler thread calls get_cached_or_future_value, so the cache needs no lock; the
    worker threads run dispatch_* and touch nothing else.
    """

    def __init__(self, max_workers: int = 1, cache_size: int = GRAMMAR_CACHE_SIZE):
        self.executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="minisgl-grammar")
        self.cache: "OrderedDict[GrammarKey, Future]" = OrderedDict()
        self.cache_size = cache_size

    def get_cached_or_future_value(self, key: GrammarKey) -> Future:
        """缓存命中：返回（多半已完成的）Future；否则提交编译。A cached Future, or a newly submitted compile."""
        fut = self.cache.get(key)
        if fut is not None:
            self.cache.move_to_end(key)
            return fut
        fut = self.executor.submit(self._init_value_dispatch, key)
        self.cache[key] = fut
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)  # 只丢缓存项，拿着 Future 的请求不受影响 / requests keep their Future
        return fut

    def _init_value_dispatch(self, key: GrammarKey) -> BaseGrammarObject:
        """（后台线程）按类型编译。(Worker thread) compile by kind."""
        key_type, key_string = key
        if key_type == "json":
            return self.dispatch_json(key_string)
        if key_type == "regex":
            return self.dispatch_regex(key_string)
        raise InvalidGrammarError(f"unknown grammar kind {key_type!r}")

    def dispatch_json(self, key_string: str) -> BaseGrammarObject:
        raise NotImplementedError

    def dispatch_regex(self, key_string: str) -> BaseGrammarObject:
        raise NotImplementedError

    def reset(self) -> None:
        """清空缓存（flush_cache 时）。Drop the cache (on flush_cache)."""
        self.cache.clear()

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def create_grammar_backend(name: str, tokenizer, vocab_size: int,
                           eos_token_ids: Iterable[int] = ()) -> BaseGrammarBackend:
    """按名字创建语法后端；缺少依赖时给出安装提示。Make a backend by name; a missing library says how to install it.

    vocab_size is the model's (lm_head rows), which may exceed the tokenizer's: the extra ids are masked.
    """
    if name not in GRAMMAR_BACKENDS:
        raise ValueError(f"unknown grammar backend {name!r}; choose one of {', '.join(GRAMMAR_BACKENDS)}")
    if tokenizer is None:
        raise ValueError("structured output needs the model's tokenizer to build the vocabulary mask")
    try:
        from minisgl.constrained.xgrammar_backend import XGrammarGrammarBackend
    except ImportError as e:
        raise ImportError(f"structured output (json_schema / regex) needs the xgrammar package ({e}); "
                          "install it with: pip install 'minisgl[structured]'") from None
    return XGrammarGrammarBackend(tokenizer, vocab_size, eos_token_ids)
