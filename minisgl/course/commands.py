# ================================================================================
# 🎒 课程命令：minisgl course list / start / grade
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   `minisgl course` 的三个子命令：list 列出作业；start 在一个目录里写下起始代码（由真实源码生成）、
#   作业说明 README.md 和一个评分脚本 grade.sh；grade 在子进程里评分并打印分数表。
#   The three `minisgl course` sub-commands: list the assignments; start writes the starter
#   (generated from the real source), the assignment README.md and a grade.sh into a folder;
#   grade scores the student's copy in a child process and prints the score table.
#
# 【生活比喻】Metaphor
#   课代表：发作业（start）、念作业清单（list）、收作业交给老师批改并念分数（grade）。
#   The class monitor: hands out the homework, reads the list, collects it for marking.
#
# 【核心架构】Architecture
#   minisgl/cli.py ──add_course_parser──► course ─┬─ list                 → ASSIGNMENTS
#                                                 ├─ start <name> [dir]   → skeleton.make_skeleton + README + grade.sh
#                                                 └─ grade <name> [dir]   → grader.grade → format_table
#
# 【工作流程】Workflow
#   1. `minisgl course start radix_cache`：写 ./radix_cache/{radix_cache.py, README.md, grade.sh}；
#      已有的学生文件不覆盖（除非 --force）。An existing student file is kept unless --force.
#   2. 学生只改 ASSIGNMENT 标记之间的代码。The student edits between the markers.
#   3. `minisgl course grade radix_cache [./radix_cache]`：打印分数表。
#
# 【关键概念】Key Concepts
#   - 退出码：满分 0，没满分 1，用法/文件错误 2；分数表总是打印，`--json` 另存一份给自动评分平台。
#     Exit code 0 only with full marks, 1 otherwise, 2 for usage errors; the table is always printed.
#
# 【使用方式】Usage
#   $ minisgl course list
#   $ minisgl course start sampler ~/hw/sampler
#   $ minisgl course grade sampler ~/hw/sampler --json score.json
#
# 【对应章节】Chapter: docs/zh/assignments/index.md
# ================================================================================
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from minisgl.course.assignments import ASSIGNMENTS, REPO_ROOT, get_assignment

GRADE_SH = """#!/bin/sh
# 给这个目录里的作业评分 / grade the assignment in this folder
cd "$(dirname "$0")" && exec minisgl course grade {name} . "$@"
"""


def _list(ns: argparse.Namespace) -> int:
    from minisgl.course.grader import collect, _load_module

    print(f"{'name':<18} {'points':>6}  {'file':<55} chapter")
    for a in ASSIGNMENTS.values():
        total = "-"
        if a.grade_file.is_file():
            try:
                total = str(sum(t.points for t in collect(_load_module(f"minisgl_grade_{a.name}", a.grade_file))))
            except Exception:  # 缺依赖（如 triton）时只是不显示分数 / e.g. triton missing: no total
                total = "?"
        print(f"{a.name:<18} {total:>6}  {a.source_path.relative_to(REPO_ROOT).as_posix():<55} docs/zh/{a.chapter}")
        print(f"{'':<18} {'':>6}  {a.title_zh} / {a.title_en}")
    return 0


def _start(ns: argparse.Namespace) -> int:
    from minisgl.course.skeleton import make_skeleton

    a = get_assignment(ns.name)
    folder = Path(ns.dir or a.name)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / a.file_name
    if target.exists() and not ns.force:
        print(f"minisgl: {target} exists; keeping your work (use --force to overwrite)", file=sys.stderr)
        return 2
    target.write_text(make_skeleton(a.name), encoding="utf-8")
    readme = a.folder / "README.md"
    if readme.is_file():
        shutil.copy(readme, folder / "README.md")
    sh = folder / "grade.sh"
    sh.write_text(GRADE_SH.format(name=a.name), encoding="utf-8")
    sh.chmod(0o755)
    print(f"写好了 / wrote {target}, {folder / 'README.md'}, {sh}")
    print(f"只改 ASSIGNMENT 标记之间的代码 / edit only between the ASSIGNMENT markers in {a.file_name}")
    print(f"评分 / grade:  minisgl course grade {a.name} {folder}    (或 / or: sh {sh})")
    return 0


def _grade(ns: argparse.Namespace) -> int:
    from minisgl.course.grader import format_table, grade, resolve_student_file

    a = get_assignment(ns.name)
    report = grade(a.name, resolve_student_file(a, ns.dir), ns.test_timeout)
    if ns.verbose and report.stderr:
        print(report.stderr, file=sys.stderr)
    print(format_table(report))
    if ns.json:
        Path(ns.json).write_text(json.dumps(report.to_json(), ensure_ascii=False, indent=2), encoding="utf-8")
    if not report.full_marks and not ns.verbose:
        print("\n  -v 显示失败测试的完整 traceback / -v shows the full tracebacks")
    return 0 if report.full_marks else 1


def add_course_parser(sub) -> None:
    """在 minisgl 的子命令里加上 course。Add `course` to minisgl's sub-commands."""
    course = sub.add_parser("course", help="课程作业：起始代码与自动评分 / course assignments and the autograder")
    csub = course.add_subparsers(dest="course_command", required=True)
    names = list(ASSIGNMENTS)

    p = csub.add_parser("list", help="列出作业 / list the assignments")
    p.set_defaults(func=_list)

    p = csub.add_parser("start", help="写下起始代码、README、grade.sh / write the starter, README and grade.sh")
    p.add_argument("name", choices=names)
    p.add_argument("dir", nargs="?", help="目标目录（缺省 ./<name>）/ target folder (default ./<name>)")
    p.add_argument("--force", action="store_true", help="覆盖已有的学生文件 / overwrite an existing student file")
    p.set_defaults(func=_start)

    p = csub.add_parser("grade", help="评分并打印分数表（满分时退出码 0）/ grade and print the score table (exit 0 = full marks)")
    p.add_argument("name", choices=names)
    p.add_argument("dir", nargs="?", help="学生目录或文件（缺省 ./<name> 或 .）/ student folder or file (default ./<name> or .)")
    p.add_argument("--json", help="把结果另存为 JSON / also write the results as JSON")
    p.add_argument("--test-timeout", type=float, default=60.0, help="每个测试的时间上限（秒）/ seconds per test")
    p.add_argument("-v", "--verbose", action="store_true", help="显示失败测试的 traceback / show tracebacks")
    p.set_defaults(func=_grade)
