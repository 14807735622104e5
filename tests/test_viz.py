"""minisgl/viz.py：画出来的树、池子、batch 与引擎的真实状态一致。

The drawings of minisgl/viz.py agree with the engine's real state: node counts and lock counts of
the radix tree (text and SVG), pool numbers that add up to the capacity at every step, and batch
tables that name the right requests.
"""
import xml.etree.ElementTree as ET

import pytest
import torch

from minisgl.io_struct import TokenizedGenerateReqInput
from minisgl.mem_cache.chunk_cache import ChunkCache
from minisgl.mem_cache.memory_pool import ReqToTokenPool, TokenToKVPoolAllocator
from minisgl.mem_cache.radix_cache import RadixCache
from minisgl.sampling.sampling_params import SamplingParams
from minisgl.viz import (batch_table, pool_counts, pool_occupancy, queue_text, radix_tree_svg, radix_tree_text,
                         tree_nodes)

SVG = "{http://www.w3.org/2000/svg}"


class CharTokenizer:
    """每个 id 是一个字符（含 XML 特殊字符），用来检查转义。Each id is one character, XML specials included."""

    ALPHABET = "abcdefgh<&>\"'床前明月光"

    def decode(self, ids, **_):
        return "".join(self.ALPHABET[i % len(self.ALPHABET)] for i in ids)


def make_tree(page_size=1):
    """一棵已知形状的树：[1,2,3,4] 与 [1,2,5,6] 共享 [1,2]，[8,9,10,11] 是另一枝。

    A tree of known shape: [1,2,3,4] and [1,2,5,6] share [1,2]; [8,9,10,11] is a separate branch.
    """
    alloc = TokenToKVPoolAllocator(64, page_size)
    cache = RadixCache(ReqToTokenPool(4, 32), alloc, page_size)
    for key in ([1, 2, 3, 4], [1, 2, 5, 6], [8, 9, 10, 11]):
        slots = alloc.alloc_extend([0], [len(key)], [-1])
        shared = cache.insert(key, slots)
        alloc.free(slots[:shared])  # 树里已有的前缀：调用者释放自己的重复槽位 / callers free duplicates
    return cache


def test_radix_tree_text_shows_every_node_with_lock_and_length():
    cache = make_tree()
    _, node = cache.match_prefix([1, 2, 5, 6])
    cache.inc_lock_ref(node)  # 锁住 [1,2] → [5,6] 这条路径 / lock the path [1,2] -> [5,6]
    nodes = tree_nodes(cache)
    assert nodes[0] is cache.root_node and [n.key for n in nodes[1:]] == [[1, 2], [3, 4], [5, 6], [8, 9, 10, 11]]
    text = radix_tree_text(cache)
    lines = text.splitlines()
    # 根 + 4 个节点：[1,2]、[3,4]、[5,6]、[8,9,10,11] / root + 4 nodes
    assert lines[0].startswith("root (nodes=4, cached=10 tokens: evictable=6, locked=4)")
    assert len(lines) == 5
    assert sum("lock=1" in ln for ln in lines) == 2 and sum("lock=0" in ln for ln in lines) == 2
    assert "[1, 2] len=2" in text and "[8, 9, 10, 11] len=4" in text
    # 子节点缩进在父节点之下（树形连线）/ children are drawn under their parent
    assert any(ln.startswith("│   ├── [3, 4]") or ln.startswith("│   └── [3, 4]") for ln in lines), text
    decoded = radix_tree_text(cache, CharTokenizer(), max_tokens=2)
    assert "'bc' len=2" in decoded and "'<&'… len=4" in decoded  # 截断标记 / the cut is marked


def test_radix_tree_text_page_size_4_keeps_whole_pages():
    cache = make_tree(page_size=4)
    # 页大小 4：[1,2,3,4] 与 [1,2,5,6] 第一页就不同，所以是根下的兄弟，不共享 [1,2]
    # With page size 4 the first pages differ, so the two keys are siblings: no shared [1, 2]
    text = radix_tree_text(cache)
    assert text.splitlines()[0].startswith("root (nodes=3, cached=12 tokens")
    assert text.count("len=4") == 3


def test_radix_tree_svg_parses_and_matches_the_tree():
    cache = make_tree()
    _, node = cache.match_prefix([1, 2, 3, 4])
    cache.inc_lock_ref(node)
    svg = radix_tree_svg(cache, CharTokenizer())
    root = ET.fromstring(svg)  # 合法 XML（特殊字符已转义）/ valid XML: specials escaped
    assert root.tag == f"{SVG}svg"
    groups = [g for g in root.iter(f"{SVG}g") if g.get("class") == "node"]
    assert len(groups) == 5  # 根 + 4 个节点 / root + 4 nodes
    assert len([e for e in root.iter(f"{SVG}line") if e.get("class") == "edge"]) == 4  # 树：边数 = 节点数 - 1
    locks = sorted(int(g.get("data-lock")) for g in groups if g.get("data-id") != str(cache.root_node.id))
    assert locks == [0, 0, 1, 1]
    texts = " ".join(t.text or "" for t in root.iter(f"{SVG}text"))
    assert "'<&>\"'" in texts  # XML 特殊字符原样显示 / XML specials come back as text
    assert "len=4 lock=0" in texts and "len=2 lock=1" in texts
    # 锁住的节点与未锁的节点颜色不同 / locked and evictable boxes differ in colour
    fills = {g.get("data-lock"): g.find(f"{SVG}rect").get("fill") for g in groups}
    assert fills["1"] != fills["0"]
    # 方框不重叠：同一深度的方框 x 互不相同 / no two boxes share a position
    pos = [(g.find(f"{SVG}rect").get("x"), g.find(f"{SVG}rect").get("y")) for g in groups]
    assert len(set(pos)) == len(pos)


def test_chunk_cache_has_no_tree_to_draw():
    cache = ChunkCache(ReqToTokenPool(4, 32), TokenToKVPoolAllocator(64))
    assert "radix cache disabled" in radix_tree_text(cache)
    svg = ET.fromstring(radix_tree_svg(cache))
    assert "radix cache disabled" in svg.find(f"{SVG}text").text
    assert not [g for g in svg.iter(f"{SVG}g") if g.get("class") == "node"]


# ======== 用自带小模型跑真的调度器 / the real scheduler on the bundled model ========


@pytest.fixture(scope="module")
def engine():
    import minisgl

    torch.set_num_threads(1)
    with minisgl.Engine(max_total_tokens=128, max_running_requests=4) as e:
        yield e


def add(sched, tok, rid, text, max_new):
    params = SamplingParams(max_new_tokens=max_new, temperature=0, ignore_eos=True)
    sched.add_request(TokenizedGenerateReqInput(rid, text, tok.encode(text), params))


def test_pool_counts_add_up_at_every_step(engine):
    sched, tok = engine.scheduler, engine.tokenizer
    engine.flush_cache()
    add(sched, tok, "A", "床前明月光，疑是地上霜。", 5)
    add(sched, tok, "B", "床前明月光，低头思故乡。", 3)
    saw_in_use = saw_locked = False
    while sched.has_work():
        step = sched.step()
        c = pool_counts(sched)
        assert c.free + c.evictable + c.locked + c.in_use == c.capacity == 128
        assert c.req_used == len(sched.running_reqs)
        saw_in_use |= c.in_use > 0  # decode 出的 token 还没进树 / decoded tokens are not in the tree yet
        saw_locked |= c.locked > 0  # 运行中的请求锁住前缀 / running requests lock their prefix
        table = batch_table(step, tok)
        assert table.startswith(step.forward_mode.name)
        assert all(rid in table for rid in step.rids)
    assert saw_in_use and saw_locked
    c = pool_counts(sched)
    assert (c.in_use, c.locked, c.req_used) == (0, 0, 0) and c.free + c.evictable == 128
    sched.check_pool_whole()
    bar = pool_occupancy(sched, width=20).splitlines()[0]
    assert bar.count("+") + bar.count(".") == 20 and "#" not in bar and "L" not in bar


def test_batch_table_and_queue_text_show_the_batch(engine):
    sched, tok = engine.scheduler, engine.tokenizer
    add(sched, tok, "A", "春眠不觉晓", 2)
    add(sched, tok, "B", "Shall I compare thee", 1)
    assert queue_text(sched) == "running: - | waiting: A(0) B(0) | chunked: -"
    step = sched.step()  # 一个 EXTEND 接纳两个请求 / one EXTEND admits both
    lines = batch_table(step, tok).splitlines()
    assert lines[0].startswith("EXTEND  bs=2")
    rows = {ln.split()[0]: ln for ln in lines[3:]}
    assert set(rows) == {"A", "B"}
    assert rows["B"].endswith("length(1)") and rows["A"].endswith("-")
    assert queue_text(sched) == "running: A(1) | waiting: - | chunked: -"
    sched.run_until_idle()
    # 空 prompt 不进 batch，下一步以 abort 报出：表里仍有它这一行 / an empty prompt is aborted without a forward
    sched.add_request(TokenizedGenerateReqInput("E", "", [], SamplingParams(max_new_tokens=2)))
    idle = batch_table(sched.step(), tok).splitlines()
    assert idle[0].startswith("IDLE  bs=0") and idle[3].startswith("E ") and "abort(" in idle[3]
    sched.check_pool_whole()
