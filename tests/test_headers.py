"""每个模块都有 STYLE.md 的双语文件头。Every module carries the bilingual header of STYLE.md."""
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "minisgl"
SECTIONS = ["【这个文件是什么】", "【生活比喻】", "【核心架构】", "【工作流程】", "【关键概念】", "【使用方式】", "【对应章节】"]
MODULES = sorted(p for p in ROOT.rglob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_header(path):
    head = path.read_text(encoding="utf-8")[:6000]
    missing = [s for s in SECTIONS if s not in head]
    assert not missing, f"{path.name} lacks {missing}"
    chapter = head.split("【对应章节】")[1].split("\n")[0]
    assert "docs/zh/" in chapter, f"{path.name}: 【对应章节】 must name a docs/zh/ page"
