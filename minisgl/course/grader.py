# ================================================================================
# 🧑‍🏫 自动评分器：在子进程里把学生的文件换进引擎，逐个测试打分
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   `minisgl course grade` 的核心。起一个子进程：先导入完整的引擎，再把学生的文件作为模块加载，
#   把它定义的每个名字换进引擎里所有引用原名字的地方（Swap）——于是引擎的其余部分都是参考实现，
#   只有这一个文件是学生的。然后逐个运行 learning_guide/assignments/<作业>/grade.py 里的测试，
#   每个测试有分值，全对得分，否则 0 分；父进程收集结果，打印分数表。
#   The core of `minisgl course grade`. A child process imports the whole engine, loads the
#   student's file as a module, and swaps every name it defines into every engine module that
#   refers to the original (Swap): the rest of the engine stays the reference, only this one file
#   is the student's. It then runs the tests of learning_guide/assignments/<name>/grade.py, each
#   worth some points (all or nothing); the parent collects the results and prints a score table.
#
# 【生活比喻】Metaphor
#   驾照考试的考场：车（引擎）是考场的，只有方向盘换成你自己装的；考官按项目逐项打分，
#   一项撞杆不影响下一项，整辆车熄火（子进程崩溃）也只是剩下的项目记 0 分。
#   A driving test: the car (engine) belongs to the test centre, only the steering wheel is the
#   one you fitted; the examiner scores item by item, and a stalled car (a crashed child) just
#   scores 0 for the items left.
#
# 【核心架构】Architecture
#   父进程 parent: grade(name, path) ──subprocess──► python -m minisgl.course.grader --child name path
#                                                      │ 1. import minisgl.engine …（参考实现 / the reference）
#                                                      │ 2. load student file → Swap.apply()
#                                                      │ 3. for test in grade.py: 计时运行 / run with a timer
#                                                      │      ctx.student / ctx.ref / with ctx.reference(): …
#                  ◄──── stdout: "@@minisgl-grade {json}" 每个测试一行 / one line per test ────┘
#   format_table(report) → 分数表 / the score table
#
# 【工作流程】Workflow
#   1. 子进程先报出测试清单（名字、分值），再每跑完一个报一行结果。The child lists the tests, then
#      reports each result as it finishes, so a crash loses only the tests after it.
#   2. 每个测试有时间上限（SIGALRM，默认 60 s）：死循环只丢这一项的分。A timer per test.
#   3. 学生代码的 print 转到 stderr（-v 时显示），不会搅乱结果行。Student prints go to stderr.
#   4. 答案区以外被改过时，分数表下面提醒一句（评分照常）。A note when code outside the regions changed.
#
# 【关键概念】Key Concepts
#   - Swap：对每个 sys.modules 里的 minisgl 模块，凡是属性 `is` 原模块里定义的对象，就换成学生模块的
#     同名对象；sys.modules[原名] 也指向学生模块，之后再 import 的代码拿到的也是学生的。
#     `ctx.reference()` 暂时换回原样，测试可以在同一进程里算出参考答案。
#     For every loaded minisgl module, any attribute that `is` an object defined in the original
#     module is replaced by the student's object of the same name; ctx.reference() undoes it for a while.
#   - 状态 status：PASS、FAIL（断言失败）、TODO（NotImplementedError：还没写）、ERROR（其他异常）、
#     TIMEOUT、CRASH（子进程死了）。
#   - 退出码：满分 0，否则 1；用法错误 2。分数总是打印出来。Exit 0 only with full marks, else 1.
#
# 【使用方式】Usage
#   $ minisgl course grade radix_cache ./radix_cache          # 或 / or: python -m minisgl.course.grader radix_cache FILE
#   >>> from minisgl.course.grader import grade, format_table
#   >>> print(format_table(grade("sampler", "minisgl/sampling/sampler.py")))   # 参考实现 → 满分
#
# 【对应章节】Chapter: docs/zh/assignments/index.md
# ================================================================================
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from minisgl.course.assignments import REPO_ROOT, Assignment, get_assignment

RESULT_PREFIX = "@@minisgl-grade "
DEFAULT_TEST_TIMEOUT_S = 60.0


# ======== 给 grade.py 用的小工具 / Helpers for grade.py ========
def points(n: int) -> Callable:
    """标记一个评分测试及其分值。Mark a grading test and its points."""

    def mark(fn: Callable) -> Callable:
        fn.points = n
        return fn

    return mark


class Swap:
    """把学生模块的名字换进引擎（见文件头）。Swap the student's names into the engine; see the header."""

    def __init__(self, ref, student):
        self.ref, self.student = ref, student
        # 原模块自己定义的、学生模块也有的对象。Objects defined by the original that the student also has.
        own = {name: obj for name, obj in vars(ref).items()
               if getattr(obj, "__module__", None) == ref.__name__ and hasattr(student, name)}
        by_id = {id(obj): name for name, obj in own.items()}
        self.bindings = []  # (module, attribute, reference object, student object)
        for mod in list(sys.modules.values()):
            name = getattr(mod, "__name__", "")
            if mod is ref or not (name == "minisgl" or name.startswith("minisgl.")):  # 只动引擎 / engine modules only
                continue
            for attr, obj in list(vars(mod).items()):
                own_name = by_id.get(id(obj))
                if own_name is not None and own[own_name] is obj:
                    self.bindings.append((mod, attr, obj, getattr(student, own_name)))
        parent_name, _, leaf = ref.__name__.rpartition(".")
        self.parent = sys.modules.get(parent_name)
        self.leaf = leaf

    def _set(self, use_student: bool) -> None:
        for mod, attr, ref_obj, stu_obj in self.bindings:
            setattr(mod, attr, stu_obj if use_student else ref_obj)
        target = self.student if use_student else self.ref
        sys.modules[self.ref.__name__] = target
        if self.parent is not None:
            setattr(self.parent, self.leaf, target)

    def apply(self) -> None:
        self._set(True)

    def undo(self) -> None:
        self._set(False)


@dataclass
class GradeContext:
    """测试拿到的东西。What each test receives."""

    assignment: Assignment
    student: Any  # 学生的模块 / the student's module
    ref: Any  # 引擎原来的模块（参考实现）/ the engine's own module (the reference)
    swap: Swap

    @contextlib.contextmanager
    def reference(self):
        """暂时让引擎用回参考实现（算标准答案用）。Let the engine use the reference for a while."""
        self.swap.undo()
        try:
            yield
        finally:
            self.swap.apply()


def engine_generate(prompts, sampling_params, **server_args) -> List[Dict[str, Any]]:
    """用（当前换入的）引擎依次生成，结束后检查 KV 池完好。Generate one prompt at a time, then check the pool.

    一个一个提交，后面的请求才能命中前面的前缀。One by one, so later prompts hit earlier prefixes.
    """
    from minisgl.engine import Engine

    outs = []
    with Engine(**server_args) as engine:
        for p in prompts:
            group = p if isinstance(p, list) else [p]  # 一个 list = 同一批 / a list = one batch
            res = engine.generate(group, sampling_params)
            outs += [{"text": r["text"], "output_ids": r["output_ids"],
                      "cached_tokens": r["meta_info"]["cached_tokens"]} for r in res]
        engine.scheduler.check_pool_whole()
    return outs


# ======== 子进程 / The child process ========
class _Timeout(BaseException):
    """比 Exception 更“硬”：学生代码里的 except Exception 吞不掉它。Not swallowed by `except Exception`."""


def _on_alarm(signum, frame):
    raise _Timeout()


def _emit(obj: dict) -> None:
    sys.__stdout__.write(RESULT_PREFIX + json.dumps(obj, ensure_ascii=False) + "\n")
    sys.__stdout__.flush()


def _status_of(exc: BaseException) -> str:
    seen = exc
    while seen is not None:  # NotImplementedError 可能被包了一层（如 Triton 的 InterpreterError）
        if isinstance(seen, NotImplementedError) or "NotImplementedError" in repr(seen):
            return "TODO"
        seen = seen.__cause__ or seen.__context__
    return "FAIL" if isinstance(exc, AssertionError) else "ERROR"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    return f"{type(exc).__name__}: {msg}"[:160] if not isinstance(exc, AssertionError) else (msg or "assertion failed")[:160]


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclass / triton 需要能按名字找到模块 / dataclasses and triton look it up
    spec.loader.exec_module(mod)
    return mod


def collect(grade_module) -> List[Callable]:
    """grade.py 里带 @points 的函数，按定义顺序。The @points functions of grade.py, in order."""
    return [f for f in vars(grade_module).values() if callable(f) and hasattr(f, "points")]


def child_main(name: str, student_path: str, test_timeout: float) -> int:
    a = get_assignment(name)
    if a.needs_triton:
        import torch

        if not torch.cuda.is_available():  # 必须在导入 triton 之前 / before triton is imported (PITFALLS 2)
            os.environ.setdefault("TRITON_INTERPRET", "1")
    grade_mod = _load_module(f"minisgl_grade_{name}", a.grade_file)
    tests = collect(grade_mod)
    _emit({"tests": [{"name": t.__name__, "max": t.points, "doc": (t.__doc__ or "").strip()} for t in tests]})
    try:
        for mod in getattr(grade_mod, "PRELOAD", ["minisgl.engine", "minisgl.scheduler.scheduler"]):
            importlib.import_module(mod)  # 先导入引擎，Swap 才能找到所有引用 / so Swap sees every binding
        ref = importlib.import_module(a.module)
        student = _load_module(f"minisgl_student.{a.module.rpartition('.')[2]}", Path(student_path))
        swap = Swap(ref, student)
        swap.apply()
    except BaseException as e:  # 学生文件无法导入：全部 0 分 / the file does not import: all zero
        traceback.print_exc()
        _emit({"fatal": f"cannot load {student_path}: {_short(e)}"})
        return 1
    ctx = GradeContext(a, student, ref, swap)
    signal.signal(signal.SIGALRM, _on_alarm)
    for test in tests:
        t0 = time.perf_counter()
        status, message = "PASS", ""
        signal.setitimer(signal.ITIMER_REAL, getattr(test, "timeout", test_timeout))
        try:
            with contextlib.redirect_stdout(sys.stderr):  # 学生的 print → stderr / student prints → stderr
                test(ctx)
        except _Timeout:
            status, message = "TIMEOUT", f"more than {getattr(test, 'timeout', test_timeout):.0f} s"
        except BaseException as e:  # noqa: BLE001 —— 任何异常都只算这一项失败 / any exception fails this test only
            status, message = _status_of(e), _short(e)
            print(f"---- {test.__name__}: {status}", file=sys.stderr)
            traceback.print_exc()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        _emit({"name": test.__name__, "status": status, "message": message,
               "points": test.points if status == "PASS" else 0, "seconds": round(time.perf_counter() - t0, 2)})
    return 0


# ======== 父进程 / The parent ========
@dataclass
class TestResult:
    name: str
    max: int
    doc: str = ""
    points: int = 0
    status: str = "CRASH"
    message: str = "the grader process stopped before this test"
    seconds: float = 0.0


@dataclass
class Report:
    assignment: str
    student_path: str
    tests: List[TestResult] = field(default_factory=list)
    fatal: Optional[str] = None
    warning: Optional[str] = None
    stderr: str = ""

    @property
    def score(self) -> int:
        return sum(t.points for t in self.tests)

    @property
    def max_score(self) -> int:
        return sum(t.max for t in self.tests)

    @property
    def full_marks(self) -> bool:
        return bool(self.tests) and self.score == self.max_score

    def to_json(self) -> dict:
        return {"assignment": self.assignment, "file": self.student_path, "score": self.score,
                "max_score": self.max_score, "fatal": self.fatal, "warning": self.warning, "tests": [vars(t) for t in self.tests]}


def resolve_student_file(a: Assignment, where: Optional[str]) -> Path:
    """学生文件：给的是文件就用它；是目录就找目录里的同名文件。A file, or the same-named file in a folder.

    where 省略时：./<作业名>/ 存在就用它，否则当前目录。Default: ./<name>/ if it exists, else ".".
    """
    if where is None:
        where = a.name if Path(a.name).is_dir() else "."
    p = Path(where)
    if p.is_dir():
        p = p / a.file_name
    if not p.is_file():
        raise FileNotFoundError(f"no {a.file_name} at {p} (run `minisgl course start {a.name}` first)")
    return p.resolve()


def changed_outside_regions(a: Assignment, text: str) -> bool:
    """学生改了答案区以外的代码吗（标记坏了也算）？Did the student change code outside the regions?

    评分照常用整个文件，只是提醒一句：区域外的改动可能让引擎的其余部分不再是参考实现。
    Grading still uses the whole file; this only warns that the rest may no longer be the reference.
    """
    from minisgl.course.skeleton import fill_regions

    blank = {r: None for r in a.regions}
    text = "".join(ln for ln in text.splitlines(keepends=True) if not ln.startswith("# [minisgl course]"))
    try:
        return fill_regions(text, a, blank) != fill_regions(a.source_path.read_text(encoding="utf-8"), a, blank)
    except ValueError:
        return True


def grade(name: str, student_path, test_timeout: float = DEFAULT_TEST_TIMEOUT_S,
          total_timeout: float = 900.0) -> Report:
    """在子进程里给 student_path 评分。Grade student_path in a child process."""
    a = get_assignment(name)
    if not a.grade_file.is_file():
        raise FileNotFoundError(f"{a.grade_file} is missing: grading needs a source checkout of minisgl")
    env = dict(os.environ)
    # 单线程：小模型用不上多线程，而在共享的机器上线程抢核会慢几十倍（实测 16 个 token 6.8 s → 0.1 s）。
    # One thread: the tiny model gains nothing from more, and oversubscribed cores on a shared machine
    # are dozens of times slower (measured: 16 tokens in 6.8 s → 0.1 s).
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    cmd = [sys.executable, "-m", "minisgl.course.grader", "--child", "--test-timeout", str(test_timeout),
           name, str(student_path)]
    report = Report(name, str(student_path))
    if changed_outside_regions(a, Path(student_path).read_text(encoding="utf-8", errors="replace")):
        report.warning = ("注意：答案区以外的代码也改了（或标记被改动），评分照常进行 / note: code outside the "
                          "ASSIGNMENT regions (or a marker) was changed; grading goes ahead")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=total_timeout)
        stdout, report.stderr = proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        report.stderr = f"the grader ran longer than {total_timeout:.0f} s and was stopped"
    by_name: Dict[str, TestResult] = {}
    for line in stdout.splitlines():
        if not line.startswith(RESULT_PREFIX):
            continue
        obj = json.loads(line[len(RESULT_PREFIX):])
        if "tests" in obj:
            report.tests = [TestResult(t["name"], t["max"], t["doc"]) for t in obj["tests"]]
            by_name = {t.name: t for t in report.tests}
        elif "fatal" in obj:
            report.fatal = obj["fatal"]
            for t in report.tests:
                t.status, t.message = "ERROR", obj["fatal"]
        elif obj.get("name") in by_name:
            t = by_name[obj["name"]]
            t.status, t.message, t.points, t.seconds = obj["status"], obj["message"], obj["points"], obj["seconds"]
    if not report.tests:
        report.fatal = report.fatal or "the grader found no tests (see stderr with -v)"
    return report


def format_table(report: Report) -> str:
    """分数表。The score table."""
    width = max([len(t.name) for t in report.tests] + [4])
    lines = [f"minisgl course grade {report.assignment}: {report.student_path}", "",
             f"  {'test':<{width}}  {'points':>6}  {'status':<7}  note / 说明",
             f"  {'-' * width}  {'-' * 6}  {'-' * 7}  {'-' * 24}"]
    for t in report.tests:
        lines.append(f"  {t.name:<{width}}  {t.points:>3}/{t.max:<2}  {t.status:<7}  {t.message}")
    lines.append(f"  {'-' * width}  {'-' * 6}")
    lines.append(f"  {'total / 总分':<{width - 2}}  {report.score:>3}/{report.max_score:<2}"
                 + ("  满分 full marks 🎉" if report.full_marks else ""))
    for note in (report.fatal, report.warning):
        if note:
            lines.append(f"\n  {note}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minisgl.course.grader")
    parser.add_argument("name")
    parser.add_argument("path", nargs="?")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--test-timeout", type=float, default=DEFAULT_TEST_TIMEOUT_S)
    parser.add_argument("--json", help="把结果写成 JSON / write the results as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="显示测试的完整输出 / show the full test output")
    ns = parser.parse_args(argv)
    if ns.child:
        return child_main(ns.name, ns.path, ns.test_timeout)
    a = get_assignment(ns.name)
    report = grade(ns.name, resolve_student_file(a, ns.path), ns.test_timeout)
    if ns.verbose and report.stderr:
        print(report.stderr, file=sys.stderr)
    print(format_table(report))
    if ns.json:
        Path(ns.json).write_text(json.dumps(report.to_json(), ensure_ascii=False, indent=2), encoding="utf-8")
    return 0 if report.full_marks else 1


if __name__ == "__main__":
    sys.exit(main())
