# ================================================================================
# 🗣️ 增量反分词（IncrementalDetokenizer）与 stop 字符串裁剪
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   token 一个一个生成，文字要一段一段吐出去。难点：一个汉字或 emoji 在 byte-level BPE 里
#   可能被拆成几个 token，单独解码会得到乱码 "\ufffd"。这里用 SGLang 的两个偏移量
#   (surr_offset, read_offset) 只输出“已经确定不会再变”的文字；并在遇到 stop 字符串时裁掉它，
#   流式输出时先扣住可能是 stop 字符串开头的尾巴。
#   Tokens arrive one by one; text must go out piece by piece. A Chinese character or emoji can
#   span several byte-level tokens, and decoding part of it gives "\ufffd". Two offsets (as in
#   SGLang) release only text that can no longer change; a matched stop string is cut off, and
#   while streaming a tail that could begin a stop string is held back.
#
# 【生活比喻】Metaphor
#   同声传译：边听边译，但要等一句话（一个完整的字符）听完整才说出口。
#   A simultaneous interpreter: translate while listening, but speak a phrase only once it is complete.
#
# 【核心架构】Architecture
#   服务器模式：DetokenizerManager 是独立进程，每个请求一个 IncrementalDetokenizer。
#   Server mode: the DetokenizerManager process keeps one IncrementalDetokenizer per request.
#     Scheduler ─BatchTokenIDOut─► DetokenizerManager ─BatchStrOut─► TokenizerManager
#
#   output_ids:  [ … 已输出 … | surr_offset … read_offset | 新 token … ]
#                                └── 上下文 context ──┘      └─ 待确认 pending ─┘
#   new_text = decode(ids[surr:]) − decode(ids[surr:read])   （不以 \ufffd 结尾才接受）
#
# 【工作流程】Workflow
#   1. append(new_ids) → 解码 surr..末尾 与 surr..read 两段，差即新增文字。
#   2. 新文字以 \ufffd 结尾：字符还没拼完，先不输出。Ends in \ufffd: wait for more bytes.
#   3. 结束时若命中 stop 字符串，把文字裁到它之前。On a stop-string finish, cut the text before it.
#
# 【关键概念】Key Concepts
#   - 为什么要 surr_offset 这段上下文：很多分词器（如 SentencePiece 的前导空格）单独解码一个 token
#     和在上下文里解码结果不同，带上前面几个 token 才准确。
#     Some tokenizers decode a token differently alone than in context; a little context fixes that.
#   - 流式最终文字 == 一次性 decode 全部 token（测试验证）。The streamed text equals a one-shot decode.
#
# 【使用方式】Usage
#   >>> d = IncrementalDetokenizer(tokenizer)
#   >>> for t in ids: print(d.append([t]), end="")
#   >>> DetokenizerManager(tokenizer).handle(batch_token_id_out)   # → BatchStrOut
#
# 【对应章节】Chapter: docs/zh/05-tokenization.md
# ================================================================================
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from minisgl.io_struct import BatchStrOut, BatchTokenIDOut

INIT_INCREMENTAL_DETOKENIZATION_OFFSET = 5  # 初始上下文 token 数（同 SGLang）/ initial context tokens


class IncrementalDetokenizer:
    """一个请求的增量反分词状态。Incremental detokenization state of one request."""

    def __init__(self, tokenizer, prompt_ids: Sequence[int] = (), skip_special_tokens: bool = True,
                 stop_strs: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.stop_strs = list(stop_strs)
        # 快路径：直接调 Rust 分词器的 decode。transformers 的 decode 包装每次多花约 7 µs，而流式时每个请求每步解码两次
        # （bs 256：512 次）。只在包装不额外处理文字（clean_up_tokenization_spaces 关）时用；结果相同（测试验证）。
        # Fast path: call the Rust tokenizer's decode directly. transformers' wrapper adds ~7 µs a call,
        # and streaming decodes twice per request per step (512 calls at bs 256). Used only when the
        # wrapper changes nothing (clean_up_tokenization_spaces off); same text (tested).
        rust_decode = getattr(getattr(tokenizer, "_tokenizer", None), "decode", None)
        self._rust_decode = None if getattr(tokenizer, "clean_up_tokenization_spaces", True) else rust_decode
        # 以 prompt 的最后几个 token 作为上下文，第一个输出 token 也能正确解码。
        # The prompt's last tokens give context for decoding the first output token.
        ctx = list(prompt_ids[-INIT_INCREMENTAL_DETOKENIZATION_OFFSET:])
        self.ids: List[int] = ctx
        self.surr_offset = 0
        self.read_offset = len(ctx)
        self.text = ""  # 已确认的输出文字 / confirmed output text
        self.sent = 0  # 已经交给调用者的字符数 / characters already handed out

    def _decode(self, ids: Sequence[int]) -> str:
        if self._rust_decode is not None:
            return self._rust_decode(list(ids), skip_special_tokens=self.skip_special_tokens)
        return self.tokenizer.decode(list(ids), skip_special_tokens=self.skip_special_tokens)

    def append(self, new_ids: Sequence[int]) -> str:
        """加入新 token，返回新确认的文字。Add tokens; return newly confirmed text (before stop handling)."""
        # >>> ASSIGNMENT detokenizer: append
        self.ids.extend(new_ids)
        surr_text = self._decode(self.ids[self.surr_offset : self.read_offset])
        read_text = self._decode(self.ids[self.surr_offset :])
        if read_text.endswith("\ufffd") or len(read_text) < len(surr_text) or not read_text.startswith(surr_text):
            return ""  # 字符未完整：等待 / an incomplete character: wait
        new_text = read_text[len(surr_text) :]
        self.text += new_text
        self.surr_offset, self.read_offset = self.read_offset, len(self.ids)
        return new_text
        # <<< ASSIGNMENT

    def flush(self) -> None:
        """请求结束：残留的不完整字节也输出（用替换字符）。At the end, emit any leftover bytes."""
        rest = self._decode(self.ids[self.surr_offset :])
        surr_text = self._decode(self.ids[self.surr_offset : self.read_offset])
        if rest.startswith(surr_text) and len(rest) > len(surr_text):
            self.text += rest[len(surr_text) :]
        self.surr_offset = self.read_offset = len(self.ids)

    def take(self, finished: bool, matched_stop: Optional[str] = None) -> str:
        """返回可以发给用户的新文字（处理 stop 字符串）。Text that may be sent now (stop strings handled).

        - finished with a matched stop string: the text is cut before the stop string's first occurrence.
        - still running: hold back a tail that could be the beginning of a stop string.
        """
        # >>> ASSIGNMENT detokenizer: take
        if finished:
            if matched_stop is not None and matched_stop in self.text:
                self.text = self.text[: self.text.index(matched_stop)]
            end = len(self.text)
        else:
            end = len(self.text) - _partial_stop_len(self.text, self.stop_strs)
        end = max(end, self.sent)
        out, self.sent = self.text[self.sent : end], end
        return out
        # <<< ASSIGNMENT


def _partial_stop_len(text: str, stops: Sequence[str]) -> int:
    """text 末尾与某个 stop 串开头重合（或包含整个 stop 串）的最长长度。

    The longest tail of text that is a prefix of a stop string, or that contains one whole
    (a full match is cut at finish, so nothing from it may leave early).
    """
    # >>> ASSIGNMENT detokenizer: partial_stop_len
    hold = 0
    for s in stops:
        idx = text.find(s)
        if idx != -1:
            hold = max(hold, len(text) - idx)
            continue
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return hold
    # <<< ASSIGNMENT


class DetokenizerManager:
    """反分词进程的核心：BatchTokenIDOut → BatchStrOut（与离线 Engine 逐字相同）。

    The detokenizer process's core: BatchTokenIDOut → BatchStrOut, character for character what
    the offline Engine produces. One IncrementalDetokenizer per live request, dropped when it ends.

    非流式请求（同离线 Engine）：中途不解码，只在第一个 token（给 TTFT 指标）和结束时各发一条。
    Non-streaming requests (as in the offline Engine) are not decoded midway: one entry at the first
    token (for the TTFT metric) and one at the end, which decodes everything once.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.states: Dict[str, IncrementalDetokenizer] = {}
        self.held: Dict[str, List[int]] = {}  # 非流式：全部输出 token / non-stream: every output id so far
        self.sent: Dict[str, int] = {}  # 非流式：已发出的 token 数 / non-stream: ids already sent
        # 非流式且要 logprob：与 held 对齐的 (token logprobs, top logprobs) / aligned with held
        self.held_logprobs: Dict[str, tuple] = {}

    def handle(self, out: BatchTokenIDOut) -> BatchStrOut:
        res = BatchStrOut()
        for i, rid in enumerate(out.rids):
            detok = self.states.get(rid)
            if detok is None:
                detok = self.states[rid] = IncrementalDetokenizer(
                    self.tokenizer, out.prompt_tails[i], out.skip_special_tokens[i], out.stop_strs[i])
            new_ids, reason = out.output_ids[i], out.finished_reasons[i]
            token_lps, top_lps = out.logprobs(i)
            finished = reason is not None
            if out.streams[i]:
                detok.append(new_ids)
            else:
                held = self.held.setdefault(rid, [])
                held.extend(new_ids)
                if token_lps is not None:  # logprobs 跟着 token 一起扣住 / held back with their tokens
                    held_lps = self.held_logprobs.setdefault(rid, ([], []))
                    held_lps[0].extend(token_lps)
                    held_lps[1].extend(top_lps or [])
                first = bool(new_ids) and len(held) == len(new_ids)
                if not finished and not first:
                    continue  # 没人在读：不解码、不发送 / nobody reads it: no decode, no message
                if finished:
                    detok.append(held)  # 一次解码全部（同离线 Engine）/ decode all at once (as the Engine)
                start = self.sent.get(rid, 0)
                new_ids, self.sent[rid] = held[start:], len(held)
                if token_lps is not None:
                    token_lps = held_lps[0][start:]
                    top_lps = held_lps[1][start:] if top_lps is not None else None
            if finished:
                detok.flush()
                del self.states[rid]  # 请求结束：状态随之释放 / the request ended: drop its state
                self.held.pop(rid, None)
                self.sent.pop(rid, None)
                self.held_logprobs.pop(rid, None)
            matched = reason.get("matched") if reason and isinstance(reason.get("matched"), str) else None
            res.rids.append(rid)
            res.texts.append(detok.take(finished, matched))
            res.output_ids.append(list(new_ids))
            res.finished.append(finished)
            res.output_token_logprobs.append(token_lps)
            res.output_top_logprobs.append(top_lps)
            res.meta_info.append({"id": rid, "finish_reason": reason, "prompt_tokens": out.prompt_tokens[i],
                                  "completion_tokens": out.completion_tokens[i],
                                  "cached_tokens": out.cached_tokens[i]})
        return res


def run_detokenizer_process(server_args, ipc, ready_writer) -> None:
    """反分词进程入口（由 launch.py 以 spawn 启动）。Entry of the detokenizer process (spawned by launch.py).

    【工作流程】Workflow
      1. 加载分词器，绑定 PULL（来自调度器），连接 PUSH（去 TokenizerManager），报告就绪。
      2. 循环：阻塞接收 BatchTokenIDOut → handle() → 发送 BatchStrOut。
    """
    import zmq

    from minisgl.server.launch import child_process_setup, report_startup_error
    from minisgl.utils import configure_logging, load_tokenizer

    child_process_setup()
    configure_logging(server_args.log_level)
    try:
        manager = DetokenizerManager(load_tokenizer(server_args.tokenizer_path))
        ctx = zmq.Context()
        recv = ctx.socket(zmq.PULL)
        recv.bind(ipc.detokenizer)
        send = ctx.socket(zmq.PUSH)
        send.connect(ipc.tokenizer)
    except Exception:
        report_startup_error(ready_writer, "detokenizer")
        raise SystemExit(1)
    ready_writer.send({"status": "ready"})
    while True:
        out = recv.recv_pyobj()
        if isinstance(out, BatchTokenIDOut):
            res = manager.handle(out)
            if len(res):  # 全是非流式的中间步：不必发 / only non-stream midway steps: nothing to send
                send.send_pyobj(res)
