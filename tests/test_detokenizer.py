"""增量反分词：流式结果 == 一次性解码；stop 字符串裁剪。Streaming equals one-shot; stop strings are cut."""
import pytest

from minisgl.detokenizer import IncrementalDetokenizer
from minisgl.testing import make_tokenizer

TEXTS = ["床前明月光，疑是地上霜。", "🙂🚀 emoji 也要正确解码 👨‍👩‍👧", "Shall I compare thee? 生存还是毁灭", "混合 mixed ✨ text"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(str(tmp_path_factory.mktemp("tok")))


@pytest.mark.parametrize("text", TEXTS)
def test_stream_equals_one_shot(tok, text):
    ids = tok.encode(text)
    prompt = tok.encode("前缀 prefix ")
    d = IncrementalDetokenizer(tok, prompt)
    pieces = []
    for t in ids:
        d.append([t])
        pieces.append(d.take(False))
        assert "\ufffd" not in pieces[-1], "a broken character leaked mid-stream"
    d.flush()
    pieces.append(d.take(True))
    assert "".join(pieces) == tok.decode(ids) == text


def test_byte_tokens_split_a_character(tok):
    # 一个 emoji 被拆成多个 byte token：中间不输出半个字符。An emoji split in bytes never leaks half.
    ids = tok.encode("🚀")
    assert len(ids) > 1
    d = IncrementalDetokenizer(tok)
    assert d.append(ids[:1]) == ""
    d.append(ids[1:])
    assert d.take(False) == "🚀"


def test_stop_string_trimmed_and_held_back(tok):
    text = "hello world STOP and more"
    ids = tok.encode(text)
    d = IncrementalDetokenizer(tok, stop_strs=["STOP"])
    sent = ""
    for t in ids:
        d.append([t])
        sent += d.take(False)
        assert "STO" not in sent or "STOP" in text[: len(sent)], "a stop-string prefix was released early"
    d.flush()
    sent += d.take(True, matched_stop="STOP")
    assert sent == "hello world "
