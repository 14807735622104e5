"""课程作业与自动评分器。The course assignments and their autograder (minisgl/course, learning_guide/assignments).

对每个作业评三份代码（两个子进程并行）：
  - 参考实现（引擎自己的文件）→ 满分；
  - 未改动的起始代码（由 `minisgl course start` 生成）→ 绝大多数测试不通过；
  - 一个故意写错的版本（例如驱逐了被锁的节点、top-p 少留一个 token、double free、吐出半个 UTF-8 字符）→ 丢分，
    而且丢在该丢的那个测试上。
另外检查标记与登记表一致、起始代码保留了接口、命令行的退出码。

For every assignment three files are graded (two child processes at a time): the reference (the
engine's own file) must get full marks, the untouched starter must fail almost everything, and a
deliberately wrong variant must lose points on the test aimed at its bug.
"""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import pytest

from minisgl import cli
from minisgl.course import grader
from minisgl.course.assignments import ASSIGNMENTS, get_assignment
from minisgl.course.skeleton import fill_regions, find_regions, make_skeleton

REPO = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None
NAMES = [n for n in ASSIGNMENTS if HAS_TRITON or not ASSIGNMENTS[n].needs_triton]

# 作业 → (原代码, 错误代码, 必须失败的测试)。替换只发生在答案区里。
# name → (original line, buggy line, a test that must catch it). Each edit lies inside a region.
WRONG = {
    "paged_allocator": ('pages = torch.unique(indices.to("cpu", torch.int64) // self.page_size)',
                        'pages = indices.to("cpu", torch.int64) // self.page_size',  # 同一页放回多次 / double free
                        "test_free_whole_pages_once"),
    "radix_cache": ("if n.is_leaf and n.lock_ref == 0 and n is not self.root_node]",
                    "if n.is_leaf and n is not self.root_node]",  # 驱逐被锁的节点 / evicts locked nodes
                    "test_evict_skips_locked_nodes"),
    "schedule_policy": ("waiting_queue.sort(key=lambda r: -prefix_len[r.rid])",
                        "waiting_queue.sort(key=lambda r: prefix_len[r.rid])",  # 最短前缀优先 / shortest first
                        "test_lpm_longest_prefix_first"),
    "sampler": ("cum_before = sorted_probs.cumsum(dim=-1) - sorted_probs",
                "cum_before = sorted_probs.cumsum(dim=-1)",  # top-p 少留一个 / keeps one token too few
                "test_top_p_boundary"),
    "decode_attention": ("            acc = acc * alpha[:, None]\n", "",  # 忘了重缩放 / forgets to rescale acc
                         "test_several_blocks"),
    "detokenizer": ('if read_text.endswith("\\ufffd") or len(read_text)', "if len(read_text)",  # 半个字符 / half a char
                    "test_never_half_a_character"),
}


def _wrong_source(name: str) -> str:
    a = get_assignment(name)
    text = a.source_path.read_text(encoding="utf-8")
    old, new, _ = WRONG[name]
    assert text.count(old) == 1, f"{a.source_path.name}: the line to break is not there exactly once: {old!r}"
    inside = [r for r in find_regions(text, name)
              if r.begin < text[: text.index(old)].count("\n") < r.end]
    assert inside, f"{name}: the wrong variant must change code inside a marked region"
    return text.replace(old, new)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """评全部 3 × 6 份代码（两个一起跑）。Grade all variants, two at a time."""
    jobs = {}
    for name in NAMES:
        a = get_assignment(name)
        folder = tmp_path_factory.mktemp(name)
        assert cli.main(["course", "start", name, str(folder / "start")]) == 0  # 真正的 start 命令 / the real command
        wrong = folder / a.file_name
        wrong.write_text(_wrong_source(name), encoding="utf-8")
        jobs[(name, "reference")] = a.source_path
        jobs[(name, "skeleton")] = folder / "start" / a.file_name
        jobs[(name, "wrong")] = wrong
    # 两个子进程一起跑（评分器让每个子进程只用一个线程）。Two children at once, one thread each.
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {key: pool.submit(grader.grade, key[0], path, 120.0, 400.0) for key, path in jobs.items()}
        return {key: f.result() for key, f in futures.items()}


def _table(report) -> str:
    return grader.format_table(report) + "\n" + report.stderr[-3000:]


# ======== 评分结果 / Grading results ========
@pytest.mark.parametrize("name", NAMES)
def test_reference_gets_full_marks(reports, name):
    report = reports[(name, "reference")]
    assert len(report.tests) >= 8, f"{name}: too few grading tests ({len(report.tests)})"
    assert report.full_marks, _table(report)
    assert report.warning is None and reports[(name, "skeleton")].warning is None


@pytest.mark.parametrize("name", NAMES)
def test_skeleton_fails_most_tests(reports, name):
    report = reports[(name, "skeleton")]
    failed = [t for t in report.tests if t.status != "PASS"]
    assert len(failed) >= 0.8 * len(report.tests) and report.score <= 0.2 * report.max_score, _table(report)
    assert any(t.status == "TODO" for t in report.tests), "the starter should fail with NotImplementedError (TODO)"


@pytest.mark.parametrize("name", NAMES)
def test_wrong_variant_loses_points(reports, name):
    report = reports[(name, "wrong")]
    assert 0 < report.score < report.max_score, _table(report)
    target = next(t for t in report.tests if t.name == WRONG[name][2])
    assert target.status == "FAIL", f"{target.name} should catch the bug:\n{_table(report)}"


# ======== 标记与起始代码 / Markers and the starter ========
@pytest.mark.parametrize("name", list(ASSIGNMENTS))
def test_markers_match_registry(name):
    a = get_assignment(name)
    text = a.source_path.read_text(encoding="utf-8")
    regions = find_regions(text, name)
    assert sorted(r.name for r in regions) == sorted(a.regions)
    for r in regions:
        assert r.end - r.begin > 1, f"{name}/{r.name} is empty"
    # 用原代码填回去得到原文件：生成器只动区域内部。Filling the regions back gives the file unchanged.
    lines = text.splitlines()
    original = {r.name: "\n".join(lines[r.begin + 1 : r.end]) for r in regions}
    filled = fill_regions(text, a, {k: v for k, v in original.items()})
    assert filled == text


def _interface(tree: ast.Module) -> dict:
    """每个函数/方法的签名和 docstring。The signature and docstring of every function and method."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            out[node.name] = ast.get_docstring(node)
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    out[f"{node.name}.{item.name}"] = (ast.unparse(item.args), ast.get_docstring(item))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.col_offset == 0:
            out[node.name] = (ast.unparse(node.args), ast.get_docstring(node))
    return out


@pytest.mark.parametrize("name", list(ASSIGNMENTS))
def test_skeleton_keeps_the_interface(name):
    a = get_assignment(name)
    source = a.source_path.read_text(encoding="utf-8")
    starter = make_skeleton(name)
    assert _interface(ast.parse(starter)) == _interface(ast.parse(source)), "signatures or docstrings changed"
    for region in a.regions:
        assert f'raise NotImplementedError("{name}/{region}:' in starter and f"# TODO({name}/{region}):" in starter
    assert len(find_regions(starter, name)) == len(a.regions), "the starter keeps the markers for the student"


@pytest.mark.parametrize("name", list(ASSIGNMENTS))
def test_changes_outside_regions_are_noticed(name):
    """区域内的改动不提醒，区域外的提醒。Edits inside regions pass quietly; edits outside are noticed."""
    a = get_assignment(name)
    assert not grader.changed_outside_regions(a, make_skeleton(name))
    assert not grader.changed_outside_regions(a, _wrong_source(name))
    assert grader.changed_outside_regions(a, make_skeleton(name) + "\nEXTRA = 1\n")
    assert grader.changed_outside_regions(a, make_skeleton(name).replace("# <<< ASSIGNMENT", "", 1))


def test_find_regions_rejects_broken_markers():
    ok = "def f():\n    # >>> ASSIGNMENT x: body\n    return 1\n    # <<< ASSIGNMENT\n"
    assert [(r.assignment, r.name, r.begin, r.end) for r in find_regions(ok)] == [("x", "body", 1, 3)]
    for bad in ["    # >>> ASSIGNMENT x: a\n    pass\n",  # 没关 / never closed
                "# <<< ASSIGNMENT\n",  # 没开 / no start
                "# >>> ASSIGNMENT x: a\n# >>> ASSIGNMENT x: b\n# <<< ASSIGNMENT\n",  # 嵌套 / nested
                "    # >>> ASSIGNMENT x: a\n    pass\n# <<< ASSIGNMENT\n"]:  # 缩进不同 / indent differs
        with pytest.raises(ValueError):
            find_regions(bad)


# ======== 命令行 / The CLI ========
def test_cli_exit_code_and_table(reports, monkeypatch, tmp_path, capsys):
    """满分退出码 0，否则 1；start 不覆盖学生的文件。Exit 0 only with full marks; start keeps student work."""
    name = NAMES[0]
    for kind, rc in (("reference", 0), ("wrong", 1)):
        monkeypatch.setattr(grader, "grade", lambda *a, _r=reports[(name, kind)], **k: _r)
        assert cli.main(["course", "grade", name, str(get_assignment(name).source_path), "--json",
                         str(tmp_path / "s.json")]) == rc
        out = capsys.readouterr().out
        assert f"{reports[(name, kind)].score:>3}/{reports[(name, kind)].max_score}" in out
        assert (tmp_path / "s.json").read_text(encoding="utf-8").count('"status"') == len(reports[(name, kind)].tests)
    folder = tmp_path / "hw"
    assert cli.main(["course", "start", name, str(folder)]) == 0
    (folder / get_assignment(name).file_name).write_text("# my work\n", encoding="utf-8")
    assert cli.main(["course", "start", name, str(folder)]) == 2, "an existing student file must not be overwritten"
    assert (folder / get_assignment(name).file_name).read_text(encoding="utf-8") == "# my work\n"
    assert (folder / "grade.sh").is_file() and (folder / "README.md").is_file()
    assert cli.main(["course", "grade", name, str(tmp_path / "nowhere")]) == 2


def test_unloadable_file_scores_zero(tmp_path):
    """学生文件有语法错误：每个测试 0 分，并说明原因。A file that does not import scores 0 everywhere."""
    bad = tmp_path / "detokenizer.py"
    bad.write_text("def broken(:\n", encoding="utf-8")
    report = grader.grade("detokenizer", bad, 30.0, 120.0)
    assert report.tests and report.score == 0 and report.fatal and "cannot load" in report.fatal
    assert all(t.status == "ERROR" for t in report.tests)


# ======== 说明页与代码一致 / Pages agree with the code ========
@pytest.mark.parametrize("name", list(ASSIGNMENTS))
def test_grading_tables_match_the_tests(name):
    """README 与两种语言的文档页列出每个测试及其分值。Every test and its points appear on every page."""
    a = get_assignment(name)
    tests = grader.collect(grader._load_module(f"minisgl_grade_table_{name}", a.grade_file))
    total = sum(t.points for t in tests)
    for page in [a.folder / "README.md"] + [REPO / f"docs/{lang}/assignments/{name}.md" for lang in ("zh", "en")]:
        text = page.read_text(encoding="utf-8")
        missing = [t.__name__ for t in tests if f"| `{t.__name__}` | {t.points} |" not in text]
        assert not missing, f"{page.relative_to(REPO)} lacks the rows of {missing} (or their points changed)"
        assert f"**{total}**" in text, f"{page.relative_to(REPO)}: the total should be {total}"
        for region in a.regions:
            assert f"`{region}`" in text, f"{page.relative_to(REPO)} does not name the region {region}"


def test_learning_guide_links_resolve():
    """learning_guide/ 里的相对链接都指向存在的文件。Relative links in learning_guide/ point at real files."""
    import re

    broken = []
    for page in sorted((REPO / "learning_guide").rglob("*.md")):
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:", target):
                continue
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, "\n".join(broken)
    guide = {lang: (REPO / f"learning_guide/chapters.{lang}.md").read_text(encoding="utf-8") for lang in ("zh", "en")}
    for lang, text in guide.items():
        assert len(re.findall(r"^## \d\d · ", text, re.M)) == 13, f"chapters.{lang}.md should cover chapters 00-12"
        for name in ASSIGNMENTS:
            assert f"assignments/{name}/README.md" in text, f"chapters.{lang}.md does not point at {name}"
