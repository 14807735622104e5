"""Griffe 扩展：把模块的双语文件头当作模块文档，显示在 API 页上。

Our modules open with the bilingual comment header of shared/STYLE.md §1 instead of a docstring.
This griffe extension (loaded by mkdocstrings, see mkdocs.yml) reads that comment block and uses it
as the module's docstring, shown verbatim (a ``text`` block keeps the ASCII diagrams aligned), so
every API page starts each module with "what this file is, a metaphor, the architecture, ...".
"""
from __future__ import annotations

from pathlib import Path

import griffe


def read_header(path: Path) -> str | None:
    """模块开头连续的注释行（去掉 "# "）；没有 STYLE 文件头则返回 None。The leading comment block."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[2:] if line.startswith("# ") else line[1:])
    text = "\n".join(lines).strip("\n")
    return text if "【这个文件是什么】" in text else None


class ModuleHeaders(griffe.Extension):
    def on_module(self, *, mod: griffe.Module, **kwargs) -> None:  # noqa: ARG002
        path = mod.filepath
        if mod.docstring is not None or not isinstance(path, Path) or not path.is_file():
            return
        header = read_header(path)
        if header is None:
            return
        n = header.count("\n") + 1
        mod.docstring = griffe.Docstring(f"```text\n{header}\n```", lineno=1, endlineno=n, parent=mod)
