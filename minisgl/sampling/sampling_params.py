# ================================================================================
# 🎛️ 采样参数（SamplingParams）
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   定义每个请求的采样参数，字段名和默认值与 SGLang 一致，并在进入引擎前做校验：
#   不合法的值抛出 ValueError，错误信息里一定写出字段名。
#   The per-request sampling knobs, named and defaulted as in SGLang, validated before a
#   request enters the engine: a bad value raises ValueError that names the field.
#
# 【生活比喻】Metaphor
#   点菜单：客人写下“少辣、不要葱、最多十道菜”。领班（Scheduler）和厨师（Sampler）
#   只照单做事，所以单子必须先检查清楚，写错的当场退回。
#   An order slip: "mild, no onions, at most ten dishes". The host and the cook follow the
#   slip, so it is checked at the door and a wrong slip is handed straight back.
#
# 【核心架构】Architecture
#   dict / kwargs ──► SamplingParams.from_dict() ──► .verify(vocab_size) ──► Req.sampling_params
#                                                                     └──► Sampler（每步读取）
#
# 【工作流程】Workflow
#   1. from_dict(): 拒绝未知字段（拼写错误不会被悄悄忽略）。Unknown keys are rejected.
#   2. normalize(): stop 统一成 list；top_k=-1 表示不限制。stop → list; top_k -1 = off.
#   3. verify(): 逐字段检查范围。Range checks, one field at a time.
#
# 【关键概念】Key Concepts
#   - temperature == 0 表示贪心（greedy，取 argmax）。temperature 0 means greedy decoding.
#   - 惩罚项（penalties）:
#       frequency: logit -= frequency_penalty * count(token)        （OpenAI 定义）
#       presence:  logit -= presence_penalty  * [count(token) > 0]
#       repetition: logit>0 时除以 r，logit<0 时乘以 r（CTRL 论文 / HF 的定义）
#   - seed：同一个 seed + 同一个 prompt → 同样的采样结果（每个请求独立的随机数发生器）。
#     A per-request generator: the same seed gives the same sample, whatever the batch.
#   - json_schema / regex：结构化输出（第 11 章）。这里只查类型与 JSON 语法，编译在调度器的后台线程里。
#     Structured output (chapter 11): only types and JSON syntax are checked here; compiling happens
#     in the scheduler's background thread (minisgl/constrained/).
#
# 【使用方式】Usage
#   >>> from minisgl.sampling import SamplingParams
#   >>> p = SamplingParams.from_dict({"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 32})
#   >>> p.verify(vocab_size=32000)
#
# 【对应章节】Chapter: docs/zh/09-sampling.md
# ================================================================================
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, List, Optional, Union

# 上限：防止一个请求的 stop 列表拖慢每一步的检查。Caps keep per-step stop checks cheap.
MAX_STOP_STRINGS = 32
MAX_STOP_STRING_LEN = 256


@dataclass
class SamplingParams:
    """一个请求的采样参数（字段与 SGLang 相同）。Per-request sampling parameters (SGLang's fields)."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 = 不限制 / no limit
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_new_tokens: int = 0
    stop: Optional[Union[str, List[str]]] = None
    stop_token_ids: Optional[List[int]] = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    n: int = 1
    seed: Optional[int] = None
    # 结构化输出（第 11 章）：JSON Schema 的 JSON 文本，或一个正则；至多给一个。
    # Structured output (chapter 11): a JSON Schema as JSON text, or a regex; at most one of them.
    json_schema: Optional[str] = None
    regex: Optional[str] = None

    # ======== 构造 / Construction ========
    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "SamplingParams":
        """从 dict 构造，拒绝未知字段。Build from a dict; unknown keys raise ValueError."""
        if d is None:
            return cls()
        if isinstance(d, SamplingParams):
            return dataclasses.replace(d)
        if not isinstance(d, dict):
            raise ValueError(f"sampling_params must be a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(
                f"unknown sampling field(s): {', '.join(unknown)}; known fields: {', '.join(sorted(names))}"
            )
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def stop_strs(self) -> List[str]:
        """stop 统一为列表。`stop` as a list (None → [])."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    # ======== 校验 / Validation ========
    def verify(self, vocab_size: Optional[int] = None) -> "SamplingParams":
        """逐字段检查；错误信息写出字段名与取值范围。Check each field; messages name the field."""
        _check_int("max_new_tokens", self.max_new_tokens, lo=0)
        _check_int("min_new_tokens", self.min_new_tokens, lo=0)
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens ({self.min_new_tokens}) must be <= max_new_tokens ({self.max_new_tokens})"
            )
        _check_float("temperature", self.temperature, lo=0.0, hi=100.0)
        _check_float("top_p", self.top_p, lo=0.0, hi=1.0, lo_open=True)
        _check_int("top_k", self.top_k, lo=-1)
        if self.top_k == 0:
            raise ValueError("top_k must be -1 (disabled) or >= 1, got 0")
        _check_float("min_p", self.min_p, lo=0.0, hi=1.0)
        _check_float("frequency_penalty", self.frequency_penalty, lo=-2.0, hi=2.0)
        _check_float("presence_penalty", self.presence_penalty, lo=-2.0, hi=2.0)
        _check_float("repetition_penalty", self.repetition_penalty, lo=0.0, hi=2.0, lo_open=True)
        _check_int("n", self.n, lo=1, hi=128)
        if self.seed is not None:
            _check_int("seed", self.seed, lo=0, hi=2**63 - 1)
        for name in ("ignore_eos", "skip_special_tokens", "spaces_between_special_tokens"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a boolean, got {getattr(self, name)!r}")
        self._verify_structured_output()
        if self.stop is not None:
            if not isinstance(self.stop, (str, list)) or not all(isinstance(s, str) for s in self.stop_strs):
                raise ValueError("stop must be a string or a list of strings")
            if len(self.stop_strs) > MAX_STOP_STRINGS:
                raise ValueError(f"stop has {len(self.stop_strs)} strings; at most {MAX_STOP_STRINGS} are allowed")
            for s in self.stop_strs:
                if s == "":
                    raise ValueError("stop strings must not be empty")
                if len(s) > MAX_STOP_STRING_LEN:
                    raise ValueError(f"stop string longer than {MAX_STOP_STRING_LEN} characters")
                if any("\ud800" <= ch <= "\udfff" for ch in s):  # 孤立代理项 / lone surrogate: not text
                    raise ValueError(f"stop string {s!r} contains a lone UTF-16 surrogate")
        if self.stop_token_ids is not None:
            if not isinstance(self.stop_token_ids, list) or not all(_is_int(t) for t in self.stop_token_ids):
                raise ValueError("stop_token_ids must be a list of integers")
            if vocab_size is not None:
                bad = [t for t in self.stop_token_ids if not 0 <= t < vocab_size]
                if bad:
                    raise ValueError(f"stop_token_ids out of vocabulary [0, {vocab_size}): {bad[:5]}")
        return self

    def _verify_structured_output(self) -> None:
        """只做便宜的检查；能否编译由语法后端在调度器里判断（错误 → 400 的 abort）。

        Cheap checks only; whether it compiles is the grammar backend's call, in the scheduler
        (an error there aborts the request with a 400).
        """
        if self.json_schema is not None and self.regex is not None:
            raise ValueError("json_schema and regex: give at most one structured-output constraint")
        if self.json_schema is not None:
            if not isinstance(self.json_schema, str):
                raise ValueError("json_schema must be a JSON string (e.g. json.dumps(schema)), "
                                 f"got {type(self.json_schema).__name__}")
            try:
                schema = json.loads(self.json_schema)
            except ValueError as e:
                raise ValueError(f"json_schema is not valid JSON: {e}") from None
            if not isinstance(schema, (dict, bool)):
                raise ValueError(f"json_schema must be a JSON object (a JSON Schema), got {type(schema).__name__}")
        if self.regex is not None and (not isinstance(self.regex, str) or self.regex == ""):
            raise ValueError(f"regex must be a non-empty string, got {self.regex!r}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_int(name: str, v: Any, lo: Optional[int] = None, hi: Optional[int] = None) -> None:
    if not _is_int(v):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"{name} must be in [{lo}, {hi if hi is not None else 'inf'}], got {v}")


def _check_float(name: str, v: Any, lo: float, hi: float, lo_open: bool = False) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        raise ValueError(f"{name} must be a number, got {v!r}")
    if v > hi or v < lo or (lo_open and v == lo):
        left = "(" if lo_open else "["
        raise ValueError(f"{name} must be in {left}{lo}, {hi}], got {v}")
