"""作业 detokenizer 的评分测试（由 `minisgl course grade detokenizer` 运行）。

Grading tests of the detokenizer assignment: ``ctx.student`` is the student's detokenizer module
(IncrementalDetokenizer.append / take and _partial_stop_len rewritten), driven with the bundled
model's byte-level BPE tokenizer, in which one emoji or rare Chinese character spans several tokens.
"""
from functools import lru_cache

from minisgl.course.grader import points

TEXTS = ["Shall I compare thee to a summer's day?", "床前明月光，疑是地上霜。",
         "🙂🚀 emoji 也要正确解码 👨‍👩‍👧", "混合 mixed ✨ text 邃"]


@lru_cache(maxsize=None)
def _tok():
    from minisgl.server_args import BUNDLED_MODEL
    from minisgl.utils import load_tokenizer

    return load_tokenizer(BUNDLED_MODEL)


def _stream(ctx, text, prompt="前缀 prefix ", stops=(), matched=None):
    """逐 token 喂进去，返回每一步交出的文字。Feed one token at a time; return what each step hands out."""
    tok = _tok()
    d = ctx.student.IncrementalDetokenizer(tok, tok.encode(prompt), stop_strs=list(stops))
    pieces = []
    for t in tok.encode(text):
        d.append([t])
        pieces.append(d.take(False))
    d.flush()
    pieces.append(d.take(True, matched))
    return pieces


@points(2)
def test_stream_ascii(ctx):
    """英文逐 token 流式输出，拼起来等于一次性解码 / streamed English equals a one-shot decode"""
    pieces = _stream(ctx, TEXTS[0])
    assert "".join(pieces) == TEXTS[0], f"got {''.join(pieces)!r}"
    assert sum(1 for p in pieces if p) > 3, "text must come out while streaming, not only at the end"


@points(3)
def test_never_half_a_character(ctx):
    """emoji、生僻字被拆成几个 byte token：任何一步都不能交出半个字符 / never emit half a UTF-8 character"""
    for text in TEXTS[1:]:
        pieces = _stream(ctx, text)
        bad = [p for p in pieces if "\ufffd" in p]
        assert not bad, f"a broken character leaked mid-stream: {bad[:3]}"
        assert "".join(pieces) == text, f"{''.join(pieces)!r} != {text!r}"


@points(2)
def test_append_waits_for_whole_character(ctx):
    """append 在字符拼完之前返回 ''，拼完后返回整个字符 / '' until the character is complete"""
    tok = _tok()
    ids = tok.encode("🚀")
    assert len(ids) > 1
    d = ctx.student.IncrementalDetokenizer(tok)
    assert d.append(ids[:1]) == "", "the first byte of 🚀 alone is not a character"
    assert d.append(ids[1:]) == "🚀"
    assert d.take(False) == "🚀"


@points(1)
def test_append_many_at_once(ctx):
    """一次 append 多个 token 也对 / several tokens in one append"""
    tok = _tok()
    ids = tok.encode(TEXTS[2])
    d = ctx.student.IncrementalDetokenizer(tok)
    out = d.append(ids[:5]) + d.append(ids[5:17]) + d.append(ids[17:])
    assert "\ufffd" not in out, f"half a character was returned: {out!r}"
    d.flush()
    assert out == d.text == TEXTS[2], f"{out!r} != {TEXTS[2]!r}"


@points(2)
def test_stop_string_cut(ctx):
    """结束时命中 stop 串：裁到它第一次出现之前 / at the finish, cut before the first occurrence"""
    text = "hello world STOP and more STOP"
    pieces = _stream(ctx, text, stops=["STOP"], matched="STOP")
    assert "".join(pieces) == "hello world ", f"got {''.join(pieces)!r}"


@points(3)
def test_stop_prefix_held_back(ctx):
    """流式时扣住可能是 stop 串开头的尾巴，确定不是后再放出 / hold back a possible stop-string start"""
    text = "a STAR is not a STOP"
    want = "a STAR is not a "
    pieces = _stream(ctx, text, stops=["STOP"], matched="STOP")
    sent = ""
    for p in pieces:
        sent += p
        assert want.startswith(sent), f"{sent!r} was sent, but the final text is {want!r}"
    assert sent == want
    released_early = "".join(pieces[:-1])
    assert released_early.startswith("a STAR"), (
        f"'STAR' is not a stop string and must be released before the end; sent early: {released_early!r}")


@points(2)
def test_partial_stop_len(ctx):
    """_partial_stop_len 的几个例子 / a few cases of _partial_stop_len"""
    f = ctx.student._partial_stop_len
    cases = [("abc ST", ["STOP"], 2), ("abc", ["STOP"], 0), ("xSTOPy", ["STOP"], 5), ("ab", ["b", "abc"], 2),
             ("", ["STOP"], 0), ("end.", [], 0), ("say S", ["S"], 1)]
    for text, stops, want in cases:
        got = f(text, stops)
        assert got == want, f"_partial_stop_len({text!r}, {stops}) = {got}, want {want}"


@points(1)
def test_running_never_releases_a_full_stop(ctx):
    """运行中已出现完整 stop 串：从它开始的都不能交出 / a full stop string mid-stream is never sent"""
    tok = _tok()
    d = ctx.student.IncrementalDetokenizer(tok, stop_strs=["STOP"])
    d.append(tok.encode("hello STOP world"))
    assert d.take(False) == "hello ", "everything from the stop string on must be held back"


def _engine_texts(prompts, params, stream):
    from minisgl.engine import Engine

    with Engine() as engine:
        if not stream:
            return [r["text"] for r in engine.generate(prompts, params)]
        texts = [""] * len(prompts)
        for chunk in engine.generate(prompts, params, stream=True):
            assert "\ufffd" not in chunk["text"], f"a broken character was streamed: {chunk['text']!r}"
            texts[chunk["index"]] += chunk["text"]
        return texts


@points(3)
def test_engine_stop_strings(ctx):
    """整个引擎用你的反分词器（流式与非流式、stop 字符串）文字与参考相同 / same text as the reference"""
    prompts = ["床前明月光，疑是地上霜", "Shall I compare thee", "春眠不觉晓，"]
    params = {"max_new_tokens": 32, "temperature": 0, "stop": ["李白", "nice", "。"]}
    got = [_engine_texts(prompts, params, stream) for stream in (True, False)]
    with ctx.reference():
        want = _engine_texts(prompts, params, False)
    assert got[0] == want, f"streamed {got[0]} != reference {want}"
    assert got[1] == want, f"non-streamed {got[1]} != reference {want}"
