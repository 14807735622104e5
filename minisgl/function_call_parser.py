# ================================================================================
# 🧰 函数调用解析器（function call parser）：从模型输出里认出 <tool_call>
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   函数调用不改模型、不改调度器：chat 模板把工具（tools）写进提示词，模型照常生成文字，
#   这里把文字里的 Qwen 风格工具调用认出来：
#       <tool_call>
#       {"name": "get_weather", "arguments": {"city": "北京"}}
#       </tool_call>
#   一次性解析完整文本（非流式），也能边收边解析（流式：标签被切在两个增量里也没关系）。
#   Function calling changes neither the model nor the scheduler: the chat template writes the tools
#   into the prompt, the model writes text, and this module finds the Qwen-style tool calls in that
#   text — all at once (non-streaming) or piece by piece (streaming, tags split anywhere).
#
# 【生活比喻】Metaphor
#   同声传译遇到“引用原文”：听到可能是“引号开始”的声音先别翻（扣住），确认是引用就把整段原文
#   记下来，等“引号结束”再一次交出去；确认不是，就照常翻译。
#   A simultaneous interpreter meeting a quotation: a sound that might open a quote is held back;
#   once the quote is certain, the whole quotation is written down and handed over when it closes;
#   if it was not a quote after all, interpreting goes on as usual.
#
# 【核心架构】Architecture
#   Qwen25Detector（每个 choice 一个，有状态 / one per choice, stateful）
#    ├─ parse_streaming_increment(new_text) ─► StreamingParseResult(normal_text, calls)
#    ├─ flush()                               请求结束：扣住的尾巴作为文字交出 / the held tail, as text
#    └─ detect_and_parse(text)                非流式 = 新建一个、一次喂完、再 flush / one feed + flush
#   ToolCallItem(tool_index, name, parameters)   parameters：JSON 字符串（OpenAI 的 function.arguments）
#   server/openai_api.py 把它们变成 message.tool_calls / delta.tool_calls。
#
# 【工作流程】Workflow
#   buf = 还没决定的文字 / text not yet decided
#   标签外 / outside a call:
#     1. buf 里有完整的 "<tool_call>"：之前的文字交出，进入标签内。
#     2. 没有：交出 buf，但扣住末尾可能是 "<tool_call>" 开头的部分（如 "<tool"）。
#   标签内 / inside a call:
#     3. 等到 "</tool_call>"：解析中间的 JSON。合法 → 一个 ToolCallItem；
#        不合法（坏 JSON、缺 name、未知工具）→ 整段原样作为文字交出（不丢、不崩）。
#   结束 / at the end (flush): 没闭合的 <tool_call>… 与扣住的尾巴都作为文字交出。
#
# 【关键概念】Key Concepts
#   - 非流式与流式结果相同（按任意位置切块都一样，测试验证）：非流式就是“一次喂完的流式”。
#     Non-streaming equals streaming for any chunking (tested): it is one feed plus a flush.
#   - 紧挨着一个合法调用的空白（标签之前、之后）不算 content：Qwen 在调用之间写 "\n"，
#     它不该变成一条 "\n" 的消息。Whitespace touching a valid call is not content.
#   - 每个调用是**整体**交出的：等到 "</tool_call>" 才知道 JSON 是否合法；SGLang 会用部分 JSON
#     解析提前吐出参数片段，我们选择简单与“坏 JSON 能退回文字”。Calls come out whole, once closed.
#   - 工具名必须在请求的 tools 里（给了 tool_names 时），否则当作文字：不执行模型编出来的函数。
#
# 【使用方式】Usage
#   >>> d = Qwen25Detector(tool_names=["get_weather"])
#   >>> d.detect_and_parse('好的。<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>')
#   StreamingParseResult(normal_text='好的。', calls=[ToolCallItem(tool_index=0, name='get_weather',
#                        parameters='{"city": "北京"}')])
#
# 【对应章节】Chapter: docs/zh/11-advanced.md
# ================================================================================
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, List, Optional


@dataclass
class ToolCallItem:
    """一个解析出的调用。One parsed call."""

    tool_index: int  # 本 choice 里的第几个调用（从 0 起）/ position of the call in this choice (from 0)
    name: str
    parameters: str  # JSON 对象的字符串（OpenAI 的 function.arguments）/ a JSON object, as a string


@dataclass
class StreamingParseResult:
    """一次解析的结果：普通文字 + 完整的调用。Normal text plus whole calls."""

    normal_text: str = ""
    calls: List[ToolCallItem] = field(default_factory=list)


def _partial_prefix_len(text: str, tag: str) -> int:
    """text 末尾与 tag 开头重合的最长长度（< len(tag)）。The longest tail of text that begins tag."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


class Qwen25Detector:
    """Qwen2.5 / Qwen3 的 <tool_call>{json}</tool_call> 格式（见文件头）。The Qwen format; see the header."""

    bot_token = "<tool_call>"
    eot_token = "</tool_call>"

    def __init__(self, tool_names: Optional[Iterable[str]] = None):
        self.tool_names = set(tool_names) if tool_names is not None else None
        self._buf = ""  # 还没决定的文字 / undecided text
        self._in_call = False  # 在 <tool_call> 之后、</tool_call> 之前 / between the tags
        self._pending_ws = ""  # 标签外、末尾的空白：要看后面是不是合法调用 / trailing whitespace, undecided
        self._after_call = False  # 刚结束一个合法调用：紧跟的空白不算 content / whitespace after a call is dropped
        self._num_calls = 0

    def has_tool_call(self, text: str) -> bool:
        return self.bot_token in text

    # ======== 非流式 / Non-streaming ========
    def detect_and_parse(self, text: str) -> StreamingParseResult:
        """解析完整文本（用一个新的解析器，不影响本对象）。Parse a whole text with a fresh parser."""
        fresh = Qwen25Detector(self.tool_names)
        res = fresh.parse_streaming_increment(text)
        end = fresh.flush()
        return StreamingParseResult(res.normal_text + end.normal_text, res.calls + end.calls)

    # ======== 流式 / Streaming ========
    def parse_streaming_increment(self, new_text: str) -> StreamingParseResult:
        """吸收新文字，返回现在能确定的普通文字与完整调用。Absorb text; return what is decided now."""
        self._buf += new_text
        out = StreamingParseResult()
        while True:
            if self._in_call:
                end = self._buf.find(self.eot_token)
                if end == -1:
                    return out  # 等闭合标签 / wait for the closing tag
                body, self._buf = self._buf[:end], self._buf[end + len(self.eot_token):]
                self._in_call = False
                self._close_call(body, out)
                continue
            start = self._buf.find(self.bot_token)
            if start != -1:
                text, self._buf = self._buf[:start], self._buf[start + len(self.bot_token):]
                self._emit_text(text, out)
                self._in_call = True
                continue
            # 没有完整的开始标签：扣住可能是它开头的尾巴。No whole start tag: hold a tail that may begin one.
            keep = _partial_prefix_len(self._buf, self.bot_token)
            text, self._buf = self._buf[:len(self._buf) - keep], self._buf[len(self._buf) - keep:]
            self._emit_text(text, out)
            return out

    def flush(self) -> StreamingParseResult:
        """生成结束：扣住的一切作为文字交出（没闭合的调用也是）。At the end, everything held goes out as text."""
        out = StreamingParseResult()
        if self._in_call:  # 没闭合：不是调用 / never closed: not a call
            out.normal_text = self._pending_ws + self.bot_token + self._buf
        else:
            text = self._pending_ws + self._buf
            out.normal_text = text.lstrip() if self._after_call else text
        self._buf, self._pending_ws, self._in_call = "", "", False
        return out

    # ======== 内部 / Internals ========
    def _emit_text(self, text: str, out: StreamingParseResult) -> None:
        """交出标签外的文字；末尾的空白先扣住（它若紧挨下一个调用就不算 content）。"""
        text = self._pending_ws + text
        if self._after_call:
            text = text.lstrip()  # 紧跟在调用之后的空白 / whitespace right after a call
            self._after_call = not text
        body = text.rstrip()
        self._pending_ws = text[len(body):]
        out.normal_text += body

    def _close_call(self, body: str, out: StreamingParseResult) -> None:
        call = self._parse_call(body)
        if call is None:  # 不合法：整段原样作为文字 / invalid: the whole thing stays text
            out.normal_text += self._pending_ws + self.bot_token + body + self.eot_token
            self._after_call = False
        else:
            out.calls.append(call)
            self._num_calls += 1
            self._after_call = True
        self._pending_ws = ""  # 合法调用之前的空白丢掉 / whitespace before a valid call is dropped

    def _parse_call(self, body: str) -> Optional[ToolCallItem]:
        """{"name": str, "arguments": {...}} → ToolCallItem；不合法返回 None。None when invalid."""
        try:
            obj = json.loads(body)
        except json.JSONDecodeError:
            return None
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return None
        if self.tool_names is not None and obj["name"] not in self.tool_names:
            return None  # 模型编出来的工具 / a tool the request never offered
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):  # 有的模型把参数写成 JSON 字符串 / some models write a JSON string
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                return None
        if not isinstance(args, dict):
            return None
        return ToolCallItem(self._num_calls, obj["name"], json.dumps(args, ensure_ascii=False))


# 解析器按模型家族选择（SGLang 的 --tool-call-parser）；minisgl 目前只有 Qwen 一种格式。
# Parsers by model family (SGLang's --tool-call-parser); minisgl has the Qwen format only, for now.
DETECTORS = {"qwen25": Qwen25Detector, "qwen3": Qwen25Detector}


def make_detector(tool_names: Optional[Iterable[str]] = None, parser: str = "qwen25") -> Qwen25Detector:
    if parser not in DETECTORS:
        raise ValueError(f"unknown tool-call parser {parser!r}; known: {', '.join(sorted(DETECTORS))}")
    return DETECTORS[parser](tool_names)
