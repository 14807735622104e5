# ================================================================================
# 🔭 可视化小工具（viz）：把基数树、KV 池、一步的 batch 画出来
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   笔记本和文档用的几个小函数：把 RadixCache 画成文字树或 SVG 图，把 KV 池与请求槽位的
#   占用写成数字和一行进度条，把 Scheduler.step() 的结果排成表格。只读引擎的状态，从不修改它。
#   Small helpers for notebooks and docs: the RadixCache as a text tree or an SVG picture, the KV
#   pool and request slots as numbers plus a one-line bar, a Scheduler.step() result as a table.
#   They only read the engine's state, never change it.
#
# 【生活比喻】Metaphor
#   医院的 X 光片：病人（引擎）照常活动，片子让你看见里面的骨架（树、池子、队列）。
#   An X-ray: the patient (the engine) goes on as usual; the film shows the skeleton inside.
#
# 【核心架构】Architecture
#   RadixCache ──► tree_nodes()        全部节点（前序）/ every node, pre-order
#             └──► radix_tree_text()   ASCII 树：每个节点的文字/ids、长度、lock_ref、last_access_time
#             └──► radix_tree_svg()    手写 SVG（不依赖 matplotlib/graphviz），IPython.display.SVG 显示
#   Scheduler  ──► pool_counts()       PoolCounts：free / evictable / locked / in_use（相加 == 容量）
#             └──► pool_occupancy()    上面的数字 + 一行条形图；queue_text()：running / waiting / chunked
#   StepOutput ──► batch_table()       这一步每个请求一行：新 token、已生成数、命中缓存数、结束原因
#
# 【工作流程】Workflow
#   1. sched.add_request(...)；step = sched.step()
#   2. print(batch_table(step, tok)); print(pool_occupancy(sched)); print(radix_tree_text(sched.tree_cache, tok))
#   3. 在 Jupyter 里 / in Jupyter: IPython.display.SVG(radix_tree_svg(sched.tree_cache, tok))
#
# 【关键概念】Key Concepts
#   - KV 池的每个槽位恰好处于四种状态之一 / every KV slot is in exactly one of four states:
#       free       分配器的空闲页 / on the allocator's free list
#       evictable  在基数树里、没有被锁（lock_ref == 0），内存紧张时可以驱逐 / cached, unlocked
#       locked     在基数树里、被运行中的请求锁住（lock_ref > 0）/ cached, locked by a running request
#       in_use     属于运行中的请求、还没插入树（decode 出的新 token、未满一页的尾巴）/ owned by a request
#     所以 free + evictable + locked + in_use == capacity；in_use 由减法得到，
#     空闲时 check_pool_whole() 断言它为 0。Hence the sum is the capacity; idle ⇒ in_use == 0.
#   - page_size > 1 时 in_use 包括请求最后一页里还没写的空位（页整页分配）。
#     With pages, in_use includes the unwritten tail of each request's last page.
#   - 树的画法：叶子从左到右排成一列，父节点放在第一个与最后一个孩子的正中（简单的“整洁树”布局）。
#     Layout: leaves left to right, each parent centred over its first and last child.
#
# 【使用方式】Usage
#   >>> from minisgl.viz import radix_tree_text, pool_occupancy
#   >>> engine = minisgl.Engine(); engine.generate("床前明月光", {"max_new_tokens": 4})
#   >>> print(radix_tree_text(engine.scheduler.tree_cache, engine.tokenizer))
#   >>> print(pool_occupancy(engine.scheduler))
#
# 【对应章节】Chapter: docs/zh/08-kv-cache.md
# ================================================================================
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple
from xml.sax.saxutils import escape

# ======== 基数树 / The radix tree ========


def _children(node) -> list:
    """按创建顺序（节点 id）排列孩子，输出稳定。Children in creation order, so drawings are stable."""
    return sorted(node.children.values(), key=lambda n: n.id)


def tree_nodes(tree_cache) -> list:
    """树的全部节点（根在前的前序遍历，孩子按创建顺序）。Every node, pre-order, root first."""
    out, stack = [], [tree_cache.root_node]
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(reversed(_children(node)))
    return out


def _label(key: Sequence[int], tokenizer, max_tokens: int) -> str:
    """节点的 token：有分词器时解码成文字（repr 让空格、换行、半个汉字 \\ufffd 看得见），否则是 id。

    A node's tokens: decoded text when a tokenizer is given (repr shows spaces, newlines and a half
    character's \\ufffd), else the ids. Longer keys are cut to max_tokens and marked with "…".
    """
    from minisgl.mem_cache.radix_cache import split_namespace

    # 多 LoRA：适配器子树的第一个节点带着命名空间，显示成 [name] 前缀。A LoRA namespace shows as [name].
    namespace, key = split_namespace(key)
    tag = f"[{namespace}] " if namespace is not None else ""
    shown = list(key[:max_tokens])
    more = "…" if len(key) > max_tokens else ""
    if tokenizer is None:
        return f"{tag}{shown}{more}"
    return f"{tag}{tokenizer.decode(shown)!r}{more}"


def _full_text(key: Sequence, tokenizer) -> str:
    """节点的全部 token（SVG 的悬停提示）。All of a node's tokens, for the SVG hover title."""
    from minisgl.mem_cache.radix_cache import split_namespace

    namespace, key = split_namespace(key)
    tag = f"[{namespace}] " if namespace is not None else ""
    return tag + (tokenizer.decode(key) if tokenizer is not None else str(key))


def radix_tree_text(tree_cache, tokenizer=None, max_tokens: int = 8) -> str:
    """基数树的文字图。A text drawing of a RadixCache.

    Each node: its tokens (text with a tokenizer, else ids), ``len`` (tokens in the node),
    ``lock`` (lock_ref: running requests whose prefix passes here) and ``t`` (last_access_time,
    a logical clock: smaller = used longer ago = evicted first).
    """
    if not hasattr(tree_cache, "root_node"):  # ChunkCache（--disable-radix-cache）没有树 / no tree
        return tree_cache.pretty_print()
    nodes = tree_nodes(tree_cache)
    lines = [f"root (nodes={len(nodes) - 1}, cached={tree_cache.total_size()} tokens: "
             f"evictable={tree_cache.evictable_size()}, locked={tree_cache.protected_size()})"]

    def walk(node, prefix: str) -> None:
        kids = _children(node)
        for i, child in enumerate(kids):
            last = i == len(kids) - 1
            lines.append(f"{prefix}{'└── ' if last else '├── '}{_label(child.key, tokenizer, max_tokens)} "
                         f"len={len(child.key)} lock={child.lock_ref} t={child.last_access_time}")
            walk(child, prefix + ("    " if last else "│   "))

    walk(tree_cache.root_node, "")
    return "\n".join(lines)


# SVG 的尺寸（像素）/ SVG sizes in pixels
_FONT = 12
_BOX_H = 38
_LEVEL_H = 70
_GAP = 14
_PAD = 16
_FILL = {"root": "#e0e0e0", "locked": "#ffd28a", "evictable": "#c8f0c8"}


def _text_width(s: str) -> int:
    """估算文字宽度：汉字/emoji 约一个字号宽，其余约 0.6 个。Rough width: CJK/emoji ≈ 1 em, others ≈ 0.6 em."""
    return int(sum(_FONT if ord(c) > 0x2E80 else _FONT * 0.6 for c in s)) + 1


def _layout(root) -> Tuple[Dict[int, float], Dict[int, int]]:
    """叶子依次占一列，父节点居中于首尾孩子。Leaves take consecutive columns; parents are centred.

    Returns (column of each node id, depth of each node id).
    """
    col: Dict[int, float] = {}
    depth: Dict[int, int] = {}
    next_leaf = [0]

    def place(node, d: int) -> None:
        depth[node.id] = d
        kids = _children(node)
        if not kids:
            col[node.id] = next_leaf[0]
            next_leaf[0] += 1
            return
        for k in kids:
            place(k, d + 1)
        col[node.id] = (col[kids[0].id] + col[kids[-1].id]) / 2

    place(root, 0)
    return col, depth


def radix_tree_svg(tree_cache, tokenizer=None, max_tokens: int = 6) -> str:
    """基数树的 SVG 图（手写，无 matplotlib/graphviz）。An SVG picture of a RadixCache, hand-written.

    Green boxes are evictable (lock_ref 0), orange boxes are locked by running requests, the grey
    one is the root. Each node is a ``<g class="node">`` with ``data-id``, ``data-len`` and
    ``data-lock`` attributes, each edge a ``<line class="edge">``. In Jupyter:
    ``IPython.display.SVG(radix_tree_svg(cache, tok))``.
    """
    if not hasattr(tree_cache, "root_node"):  # ChunkCache：只写一行字 / a ChunkCache: one line of text
        msg = escape(tree_cache.pretty_print())
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_text_width(msg) + 2 * _PAD}" height="40" '
                f'font-family="monospace" font-size="{_FONT}"><text x="{_PAD}" y="24">{msg}</text></svg>')
    root = tree_cache.root_node
    nodes = tree_nodes(tree_cache)
    labels = {n.id: ("root" if n is root else _label(n.key, tokenizer, max_tokens)) for n in nodes}
    infos = {n.id: (f"cached={tree_cache.total_size()}" if n is root else f"len={len(n.key)} lock={n.lock_ref}")
             for n in nodes}
    # ======== 第1步：布局 / Step 1: layout ========
    box_w = max(max(_text_width(labels[i]), _text_width(infos[i])) for i in labels) + 12
    col, depth = _layout(root)
    n_cols = max(col.values()) + 1
    width = int(_PAD * 2 + n_cols * box_w + (n_cols - 1) * _GAP)
    height = int(_PAD * 2 + max(depth.values()) * _LEVEL_H + _BOX_H + 24)  # +24：图例 / the legend

    def xy(node) -> Tuple[float, float]:  # 方框左上角 / top-left corner of the box
        return _PAD + col[node.id] * (box_w + _GAP), _PAD + depth[node.id] * _LEVEL_H

    # ======== 第2步：边，再画节点（节点盖在线上）/ Step 2: edges, then nodes on top ========
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="monospace, \'Noto Sans CJK SC\', sans-serif" '
             f'font-size="{_FONT}">']
    for node in nodes:
        if node is root:
            continue
        px, py = xy(node.parent)
        cx, cy = xy(node)
        parts.append(f'<line class="edge" x1="{px + box_w / 2:.1f}" y1="{py + _BOX_H:.1f}" '
                     f'x2="{cx + box_w / 2:.1f}" y2="{cy:.1f}" stroke="#888" stroke-width="1.5"/>')
    for node in nodes:
        x, y = xy(node)
        state = "root" if node is root else ("locked" if node.lock_ref > 0 else "evictable")
        full = "root" if node is root else _full_text(node.key, tokenizer)
        parts.append(
            f'<g class="node" data-id="{node.id}" data-len="{len(node.key)}" data-lock="{node.lock_ref}">'
            f'<title>{escape(full)}</title>'
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{box_w}" height="{_BOX_H}" rx="6" '
            f'fill="{_FILL[state]}" stroke="#555"/>'
            f'<text x="{x + 6:.1f}" y="{y + 15:.1f}">{escape(labels[node.id])}</text>'
            f'<text x="{x + 6:.1f}" y="{y + 31:.1f}" fill="#444">{escape(infos[node.id])}</text></g>')
    # ======== 第3步：图例 / Step 3: the legend ========
    ly = height - _PAD
    parts.append(f'<g class="legend"><rect x="{_PAD}" y="{ly - 10}" width="12" height="12" fill="{_FILL["evictable"]}" '
                 f'stroke="#555"/><text x="{_PAD + 16}" y="{ly}">evictable 可驱逐</text>'
                 f'<rect x="{_PAD + 150}" y="{ly - 10}" width="12" height="12" fill="{_FILL["locked"]}" stroke="#555"/>'
                 f'<text x="{_PAD + 166}" y="{ly}">locked 被锁</text></g>')
    parts.append("</svg>")
    return "\n".join(parts)


# ======== KV 池与请求槽位 / The KV pool and request slots ========


@dataclass
class PoolCounts:
    """KV 池四种状态的槽位数与请求行数。Slot counts per state, and request rows (see the header)."""

    capacity: int  # 可分配的 KV 槽位（不含哑页）/ allocatable KV slots (dummy page excluded)
    free: int
    evictable: int  # 在树里、未锁 / cached, unlocked
    locked: int  # 在树里、被锁 / cached, locked
    in_use: int  # 请求自己的、还没进树 / owned by running requests, not in the tree
    page_size: int
    req_capacity: int  # req_to_token 的可用行数 / usable req_to_token rows
    req_used: int

    @property
    def req_free(self) -> int:
        return self.req_capacity - self.req_used


def pool_counts(scheduler) -> PoolCounts:
    """读出调度器的 KV 池与请求槽位占用。Read the KV-pool and request-slot occupancy of a Scheduler."""
    alloc = scheduler.token_to_kv_pool_allocator
    cache = scheduler.tree_cache
    rows = scheduler.req_to_token_pool
    free = alloc.available_size()
    cached = cache.total_size()
    return PoolCounts(
        capacity=alloc.size, free=free, evictable=cache.evictable_size(), locked=cache.protected_size(),
        in_use=alloc.size - free - cached, page_size=alloc.page_size,
        req_capacity=rows.capacity, req_used=rows.capacity - rows.available_size(),
    )


_BAR = (("in_use", "#"), ("locked", "L"), ("evictable", "+"), ("free", "."))


def _bar(counts: PoolCounts, width: int) -> str:
    """按比例分配 width 个字符；不为 0 的状态至少占 1 格。Proportional characters; a non-zero state gets >= 1."""
    values = [getattr(counts, name) for name, _ in _BAR]
    total = max(sum(values), 1)
    cells = [max(1, round(v * width / total)) if v else 0 for v in values]
    while sum(cells) > width:  # 四舍五入多出来的从最大的一段扣 / trim rounding excess from the largest
        cells[cells.index(max(cells))] -= 1
    while sum(cells) < width:
        cells[values.index(max(values))] += 1
    return "".join(ch * n for (_, ch), n in zip(_BAR, cells))


def pool_occupancy(scheduler, width: int = 40) -> str:
    """KV 池与请求槽位的占用：数字 + 一行条形图。KV pool and request slots: numbers plus a one-line bar.

    Bar legend: ``#`` in use by running requests, ``L`` cached and locked, ``+`` cached and
    evictable, ``.`` free.
    """
    c = pool_counts(scheduler)
    return (f"KV pool  [{_bar(c, width)}] capacity={c.capacity} (page_size={c.page_size})\n"
            f"         free={c.free}  evictable={c.evictable}  locked={c.locked}  in_use={c.in_use}   "
            f"(# in_use, L locked, + evictable, . free)\n"
            f"req slots used={c.req_used} free={c.req_free} / {c.req_capacity}")


def queue_text(scheduler) -> str:
    """running / waiting / chunked 三处各有谁（括号里是已生成的 token 数）。Who is where; (n) = tokens generated."""
    run = " ".join(f"{r.rid}({len(r.output_ids)})" for r in scheduler.running_reqs) or "-"
    wait = " ".join(f"{r.rid}({len(r.output_ids)})" for r in scheduler.waiting_queue) or "-"
    chunk = scheduler.chunked_req.rid if scheduler.chunked_req is not None else "-"
    return f"running: {run} | waiting: {wait} | chunked: {chunk}"


# ======== 一步的 batch / One step's batch ========


def _table(headers: List[str], rows: List[List[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    fmt = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def _reason(r: Optional[dict]) -> str:
    if not r:
        return "-"
    detail = r.get("matched", r.get("length", r.get("message", "")))
    return f"{r['type']}({detail!r})" if r["type"] != "length" else f"length({detail})"


def batch_table(step, tokenizer=None) -> str:
    """把一个 StepOutput 排成表：这一步在 batch 里的每个请求一行（被中止等没进 batch 的也列出）。

    A StepOutput as a table: one row per request of this step's batch (and any request that ended
    without a forward, e.g. an abort). Columns: rid, new token ids (and text with a tokenizer),
    tokens generated so far, prompt tokens found in the cache, finish reason. A request between
    chunks of a chunked prefill has no output yet: its row says "(chunk)".
    """
    mode = step.forward_mode.name if step.forward_mode is not None else "IDLE"
    out = step.out
    by_rid = {rid: i for i, rid in enumerate(out.rids)}
    rows = []
    for rid in list(step.rids) + [r for r in out.rids if r not in step.rids]:
        i = by_rid.get(rid)
        if i is None:
            rows.append([rid, "(chunk)", "", "", "", "-"])
            continue
        ids = out.output_ids[i]
        text = repr(tokenizer.decode(ids)) if tokenizer is not None and ids else ""
        rows.append([rid, str(ids), text, str(out.completion_tokens[i]), str(out.cached_tokens[i]),
                     _reason(out.finished_reasons[i])])
    head = (f"{mode}  bs={len(step.rids)}  tokens={step.num_tokens}  ({step.duration_s * 1000:.1f} ms)"
            + (f"  retracted={step.retracted}" if step.retracted else ""))
    if not rows:
        return head
    return head + "\n" + _table(["rid", "new ids", "text", "out", "cached", "finished"], rows)
