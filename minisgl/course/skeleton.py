# ================================================================================
# ✂️ 起始代码生成器：把真实源码里的答案区挖空
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   读引擎的真实源码，找到 `# >>> ASSIGNMENT <作业>: <区域>` … `# <<< ASSIGNMENT` 圈出的答案区，
#   把区域里的代码换成 TODO 注释 + `raise NotImplementedError(...)`，其余（签名、docstring、
#   辅助函数）原样保留。起始代码因此永远与引擎一致。
#   Reads the real engine source, finds the solution regions marked `# >>> ASSIGNMENT <name>:
#   <region>` … `# <<< ASSIGNMENT`, and replaces the code inside with a TODO comment and
#   `raise NotImplementedError(...)`; everything else (signatures, docstrings, helpers) stays.
#   So the starter can never drift from the engine.
#
# 【生活比喻】Metaphor
#   填空题试卷：拿标准答案复印一份，把要考的句子用白纸盖住，旁边写上提示。
#   A fill-in-the-blanks exam: photocopy the answer key, tape over the sentences being tested,
#   and write a hint beside each blank.
#
# 【核心架构】Architecture
#   source.py ──find_regions──► [Region(name, begin, end, indent)]
#        │                                   │
#        └──────────── make_skeleton ◄───────┘  区域内 → TODO + raise / inside → TODO + raise
#                          │
#                          ▼  fill_region(text, region, code)：测试用它造“故意写错”的版本
#                     starter.py
#
# 【工作流程】Workflow
#   1. 逐行扫描，开始标记与结束标记必须成对、不嵌套、同一缩进。Markers pair up, no nesting.
#   2. 每个区域：保留两行标记，中间换成提示注释和 raise（缩进与标记相同）。
#   3. 文件最前面加一行说明：由哪个源文件生成。A first line says where it came from.
#
# 【关键概念】Key Concepts
#   - 标记只是一行注释，对引擎的行为毫无影响；读引擎的人也只多看到两行。
#     A marker is one comment line: no effect on the engine, two extra lines for a reader.
#   - 区域可以在普通函数里，也可以在 @triton.jit 内核里（解释器里 raise 照常抛出）。
#     Regions may sit inside a @triton.jit kernel: under the interpreter the raise still fires.
#
# 【使用方式】Usage
#   $ python -m minisgl.course.skeleton radix_cache          # 打印起始代码 / print the starter
#   >>> from minisgl.course.skeleton import make_skeleton; print(make_skeleton("sampler")[:200])
#
# 【对应章节】Chapter: docs/zh/assignments/index.md
# ================================================================================
from __future__ import annotations

import re
import sys
import textwrap
from dataclasses import dataclass
from typing import List, Optional

from minisgl.course.assignments import REPO_ROOT, Assignment, get_assignment

BEGIN = re.compile(r"^(?P<indent>[ \t]*)# >>> ASSIGNMENT (?P<name>\w+): (?P<region>\w+)\s*$")
END = re.compile(r"^(?P<indent>[ \t]*)# <<< ASSIGNMENT\s*$")


@dataclass
class Region:
    """一个答案区：begin/end 是两行标记的行号（0 起）。One region; begin/end are the marker lines (0-based)."""

    assignment: str
    name: str
    begin: int
    end: int
    indent: str


def find_regions(text: str, assignment: Optional[str] = None) -> List[Region]:
    """找出 text 里（某个作业的）全部答案区。Every region in text (of one assignment, if given)."""
    regions, open_region = [], None
    for i, line in enumerate(text.splitlines()):
        b, e = BEGIN.match(line), END.match(line)
        if b:
            if open_region is not None:
                raise ValueError(f"line {i + 1}: a region starts inside region {open_region.name!r}")
            open_region = Region(b["name"], b["region"], i, -1, b["indent"])
        elif e:
            if open_region is None:
                raise ValueError(f"line {i + 1}: '# <<< ASSIGNMENT' without a matching start")
            if e["indent"] != open_region.indent:
                raise ValueError(f"line {i + 1}: the end marker of {open_region.name!r} is indented differently")
            open_region.end = i
            regions.append(open_region)
            open_region = None
    if open_region is not None:
        raise ValueError(f"region {open_region.name!r} (line {open_region.begin + 1}) is never closed")
    return [r for r in regions if assignment is None or r.assignment == assignment]


def _check(a: Assignment, regions: List[Region]) -> None:
    found = [r.name for r in regions]
    if sorted(found) != sorted(a.regions):
        raise ValueError(f"{a.source_path.name}: regions {found} do not match the registry {list(a.regions)}")


def _todo(a: Assignment, region: Region) -> List[str]:
    """区域的替身：提示注释 + raise。The stand-in for a region: hint comment + raise."""
    ind = region.indent
    # 中文提示一行，英文提示按宽度折行。The Chinese hint on one line, the English one wrapped.
    zh, en = a.regions[region.name]
    lines = [f"{ind}# TODO({a.name}/{region.name}): {zh}"]
    lines += [f"{ind}#   {h}" for h in textwrap.wrap(en, width=max(40, 96 - len(ind)))]
    lines.append(f'{ind}raise NotImplementedError("{a.name}/{region.name}: 还没写 / not implemented yet")')
    return lines


def fill_regions(text: str, a: Assignment, code: dict) -> str:
    """把答案区换成给定代码（None → TODO + raise）。Replace regions by code (None → the TODO stand-in).

    code: 区域名 → 代码文本（不含缩进，会按标记的缩进补上）或 None。区域名不在 code 里的保持原样。
    code: region → source text (dedented; the marker's indent is added) or None. Regions not in
    code keep the original.
    """
    regions = find_regions(text, a.name)
    _check(a, regions)
    lines = text.splitlines()
    for r in sorted(regions, key=lambda r: r.begin, reverse=True):  # 从后往前，行号不变 / back to front
        if r.name not in code:
            continue
        body = code[r.name]
        new = _todo(a, r) if body is None else [
            (r.indent + ln) if ln.strip() else "" for ln in textwrap.dedent(body).strip("\n").splitlines()]
        lines[r.begin + 1 : r.end] = new
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")


def make_skeleton(name: str) -> str:
    """作业 name 的起始代码（由真实源码生成）。The starter of assignment name, made from the real source."""
    a = get_assignment(name)
    text = a.source_path.read_text(encoding="utf-8")
    banner = (f"# [minisgl course] 作业 {a.name} 的起始代码，由 minisgl/course/skeleton.py 从 "
              f"{a.source_path.relative_to(REPO_ROOT).as_posix()} 生成。"
              f"只改 ASSIGNMENT 标记之间的代码。\n"
              f"# [minisgl course] Starter for {a.name}, generated from the engine source. "
              f"Edit only between the ASSIGNMENT markers.\n")
    return banner + fill_regions(text, a, {r: None for r in a.regions})


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m minisgl.course.skeleton <assignment>", file=sys.stderr)
        return 2
    sys.stdout.write(make_skeleton(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
