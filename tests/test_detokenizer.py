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


@pytest.mark.parametrize("skip", [True, False])
def test_fast_decode_equals_the_tokenizer(tok, skip):
    """快路径（直接调 Rust 分词器）与 tokenizer.decode 逐字相同，包括特殊 token 与半个字符的字节。

    The fast path (the Rust tokenizer called directly) gives tokenizer.decode's text exactly,
    special tokens and half-character bytes included; it is off when the wrapper would clean up spaces.
    """
    import random

    from minisgl.utils import load_tokenizer
    from minisgl.server_args import ServerArgs

    rng = random.Random(0)
    for t in (tok, load_tokenizer(ServerArgs().resolve().tokenizer_path)):
        d = IncrementalDetokenizer(t, skip_special_tokens=skip)
        assert d._rust_decode is not None  # 两个分词器都走快路径 / both tokenizers take the fast path
        specials = list(t.all_special_ids)
        for _ in range(200):
            ids = [rng.choice(specials) if rng.random() < 0.1 else rng.randrange(len(t)) for _ in range(rng.randint(0, 12))]
            assert d._decode(ids) == t.decode(ids, skip_special_tokens=skip), ids
    t.clean_up_tokenization_spaces = True
    try:
        assert IncrementalDetokenizer(t)._rust_decode is None
    finally:
        t.clean_up_tokenization_spaces = False
