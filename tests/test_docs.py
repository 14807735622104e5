"""文档站检查：双语页面一一对应、链接都指向真的文件/符号/标题、文件头的章节存在、站点能严格构建。

Checks of the documentation site (docs/, mkdocs.yml):
  (a) docs/zh and docs/en hold the same pages;
  (b) every link in every page resolves: a page, a heading anchor, a code symbol on an API page
      (``api/scheduler.md#minisgl.scheduler.scheduler.Scheduler.step`` → importlib + getattr), or a
      GitHub source link (``https://github.com/minisgl/minisgl/blob/main/<path>#Lnn-Lmm`` → the file
      exists here and has those lines);
  (c) each module header's 【对应章节】 names an existing page, or a chapter still to come;
  (d) ``mkdocs build --strict`` succeeds and the HTML of chapters, API anchors and notebooks exists
      in both languages (a notebook must come out as HTML, not raw JSON: shared/PITFALLS.md item 3);
  (e) the script outputs embedded in pages (docs/scripts/*.txt, e.g. chapter 08's radix tree drawn by
      docs/scripts/radix_example.py) are what the scripts print today.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
LANGS = ("zh", "en")
GITHUB_BLOB = "https://github.com/minisgl/minisgl/blob/main/"
REQUIRED_PAGES = {"index.md", "00-welcome.md", "01-overview.md", "05-tokenization.md", "06-scheduling.md",
                  "08-kv-cache.md", "09-sampling.md", "10-glossary.md", "developer-guide.md",
                  "02-architecture.md", "03-server-startup.md", "04-request-journey.md", "07-model-inference.md",
                  "11-advanced.md", "12-production.md"}
# 还没写的章节（文件头可以先指向它们）。写好一章就从这里删掉它。
# Chapters still to come (module headers may already name them). Delete a number once its page exists.
CHAPTERS_TO_COME: set = set()


def pages(lang: str) -> list[str]:
    return sorted(p.relative_to(DOCS / lang).as_posix() for p in (DOCS / lang).rglob("*.md"))


ALL_PAGES = [(lang, p) for lang in LANGS for p in pages(lang)]


# ======== (a) 两种语言页面相同 / the same pages in both languages ========
def test_same_pages_in_both_languages():
    zh, en = set(pages("zh")), set(pages("en"))
    assert zh == en, f"only in zh: {sorted(zh - en)}; only in en: {sorted(en - zh)}"
    assert REQUIRED_PAGES <= zh, f"missing pages: {sorted(REQUIRED_PAGES - zh)}"


# ======== (b) 链接检查 / link checker ========
FENCE = re.compile(r"^( {0,4})(`{3,}|~{3,}).*?^\1\2[ \t]*$", re.M | re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)


def strip_code(text: str) -> str:
    """去掉代码块和行内代码（里面的方括号不是链接）。Drop fenced blocks and code spans."""
    text = FENCE.sub("", text)
    return re.sub(r"(`+)(?!`).*?\1", "", text, flags=re.S)


def links(text: str) -> list[str]:
    return LINK.findall(strip_code(text))


@lru_cache(maxsize=None)
def _slugify():
    try:
        from pymdownx.slugs import slugify  # mkdocs.yml 里 toc 用的就是它 / what mkdocs.yml's toc uses

        return slugify(case="lower")
    except ImportError:  # 没装文档依赖时的近似 / an approximation without the docs extra
        import unicodedata

        def slug(text, sep):
            text = unicodedata.normalize("NFC", text).lower()
            return re.sub(r"[^\w\- ]", "", text).replace(" ", sep)

        return slug


@lru_cache(maxsize=None)
def anchors_of(path: Path) -> frozenset:
    """页面里的标题锚点（与 Python-Markdown toc 相同的去重规则）和显式 id。Heading slugs and explicit ids."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    found, seen = set(), {}
    for _, title in HEADING.findall(text):
        explicit = re.search(r"\{[^}]*#([\w.\-:]+)[^}]*\}\s*$", title)
        if explicit:
            found.add(explicit.group(1))
            continue
        plain = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # 链接只留文字 / keep link text
        plain = re.sub(r"<[^>]+>|[`*_]", "", plain)
        slug = _slugify()(plain.strip(), "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}_{n}")
    found.update(re.findall(r"\{[^}\n]*#([\w.\-:]+)[^}\n]*\}", text))
    found.update(re.findall(r"""\bid=["']([^"']+)["']""", text))
    return frozenset(found)


def resolve_symbol(dotted: str) -> bool:
    """importlib + getattr：符号存在吗？实例属性（__init__ 里的 self.x = …、dataclass 字段）也算。

    Does the dotted path name a real module / class / function / attribute? Instance attributes
    (``self.x = ...`` in ``__init__``, dataclass fields) count, as the API pages list them too.
    """
    parts = dotted.split(".")
    try:
        obj = importlib.import_module(parts[0])
    except ModuleNotFoundError:
        return False
    i = 1
    while i < len(parts) and inspect.ismodule(obj) and not hasattr(obj, parts[i]):
        name = f"{obj.__name__}.{parts[i]}"
        if importlib.util.find_spec(name) is None:  # 不是子模块 / not a submodule
            break
        obj, i = importlib.import_module(name), i + 1
    for j, name in enumerate(parts[i:], start=i):
        if hasattr(obj, name):
            obj = getattr(obj, name)
            continue
        if inspect.ismodule(obj) and importlib.util.find_spec(f"{obj.__name__}.{name}") is not None:
            obj = importlib.import_module(f"{obj.__name__}.{name}")
            continue
        last = j == len(parts) - 1
        if last and inspect.isclass(obj):
            annotated = any(name in getattr(k, "__annotations__", {}) for k in obj.__mro__)
            # griffe（mkdocstrings）只从 __init__ 里的 self.x = … 认出实例属性。griffe finds those in __init__ only.
            assigned = any(re.search(rf"\bself\.{re.escape(name)}\b[^=\n]*=[^=]", _source(k.__dict__.get("__init__")))
                           for k in obj.__mro__)
            return annotated or assigned
        return False
    return True


def _source(obj) -> str:
    try:
        return inspect.getsource(obj)
    except (TypeError, OSError):
        return ""


@lru_cache(maxsize=None)
def api_modules(path: Path) -> tuple:
    """API 页里 ``::: module`` 指令列出的模块。The modules an API page renders."""
    return tuple(re.findall(r"^:::\s+([\w.]+)", path.read_text(encoding="utf-8"), re.M))


def check_link(page: Path, target: str) -> str | None:
    """返回错误说明，链接正确时返回 None。An error message, or None when the link resolves."""
    if target.startswith(GITHUB_BLOB):
        rest = target[len(GITHUB_BLOB):]
        rel, _, frag = rest.partition("#")
        src = ROOT / rel
        if not src.exists():
            return f"{target}: {rel} does not exist in this repository"
        if frag:
            m = re.fullmatch(r"L(\d+)(?:-L(\d+))?", frag)
            if not m:
                return f"{target}: a GitHub source anchor must look like #L10 or #L10-L20"
            n_lines = len(src.read_text(encoding="utf-8").splitlines())
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            if not 1 <= lo <= hi <= n_lines:
                return f"{target}: lines {lo}-{hi} are outside {rel} ({n_lines} lines)"
        return None
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # 其他外部链接不检查 / other external links
        return None
    rel, _, frag = target.partition("#")
    dest = (page.parent / rel).resolve() if rel else page
    if not dest.exists():
        return f"{target}: {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest} does not exist"
    if not frag or dest.suffix != ".md":
        return None
    if frag.startswith("minisgl."):
        if not resolve_symbol(frag):
            return f"{target}: the symbol {frag} does not exist in the code"
        mods = api_modules(dest)
        if not any(frag == m or frag.startswith(m + ".") for m in mods):
            return f"{target}: {dest.name} renders {list(mods)}, none of which contains {frag}"
        return None
    if frag not in anchors_of(dest):
        return f"{target}: no heading or id #{frag} in {dest.relative_to(DOCS)}"
    return None


@pytest.mark.parametrize("lang,page", ALL_PAGES, ids=[f"{lang}/{p}" for lang, p in ALL_PAGES])
def test_links_resolve(lang, page):
    path = DOCS / lang / page
    errors = [e for t in links(path.read_text(encoding="utf-8")) if (e := check_link(path, t))]
    assert not errors, "broken links:\n" + "\n".join(errors)


def test_link_checker_catches_bad_links():
    page = DOCS / "zh" / "06-scheduling.md"
    good = ["api/scheduler.md#minisgl.scheduler.scheduler.Scheduler.step",
            "api/scheduler.md#minisgl.scheduler.schedule_batch.Req.kv_len",  # 实例属性 / an instance attribute
            GITHUB_BLOB + "minisgl/scheduler/scheduler.py#L1-L3", "08-kv-cache.md"]
    bad = ["api/scheduler.md#minisgl.scheduler.scheduler.Scheduler.no_such_method",
           "api/sampling.md#minisgl.scheduler.scheduler.Scheduler.step",  # 页面不渲染这个模块 / wrong page
           "api/scheduler.md#minisgl.no_such_module.X", "no-such-page.md", "08-kv-cache.md#no-such-heading",
           "api/mem_cache.md#minisgl.mem_cache.memory_pool.ReqToTokenPool.free_slots",  # 在 clear() 里设 / set in clear()
           GITHUB_BLOB + "minisgl/no_such_file.py", GITHUB_BLOB + "minisgl/scheduler/scheduler.py#L1-L99999"]
    assert [t for t in good if check_link(page, t)] == []
    assert [t for t in bad if not check_link(page, t)] == []
    assert links("[a](x.md) `[b](y.md)`\n```\n[c](z.md)\n```\n") == ["x.md"]


# 带名字的源码链接 [`Scheduler.step`](…/scheduler.py#L354-L360) 必须指向那个函数或类：
# 代码一改行号就漂移，而上面的检查只看行号在不在文件里。
# A source link named after a function or class must point at it: line numbers drift whenever the
# code changes, and the check above only asks whether the lines exist.
NAMED_SOURCE_LINK = re.compile(r"\[`([\w.]+)(?:\(\))?`\]\(" + re.escape(GITHUB_BLOB)
                               + r"([\w/.]+\.py)#L(\d+)(?:-L(\d+))?\)")


@lru_cache(maxsize=None)
def _def_spans(rel: str) -> dict:
    """文件里每个 def/class 的 (起始行, 结束行)，按短名与带类名的全名。Spans by bare and dotted name."""
    import ast

    tree = ast.parse((ROOT / rel).read_text(encoding="utf-8"))
    spans: dict = {}

    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                start = min([child.lineno] + [d.lineno for d in child.decorator_list])
                for key in {child.name, prefix + child.name}:
                    spans.setdefault(key, []).append((start, child.end_lineno))
                walk(child, prefix + child.name + ".")
            else:
                walk(child, prefix)

    walk(tree, "")
    return spans


def check_named_source_link(name: str, rel: str, lo: int, hi: int) -> str | None:
    """名字是文件里的 def/class 时，行号要落在它身上：从它开头（±3 行）起，或整段在它里面。

    When the name is a def or class of the file, the lines must start at it (within 3 lines) or lie
    inside it. Other names (constants, attributes) are not checked here.
    """
    if not (ROOT / rel).exists():
        return None  # check_link 报告 / check_link reports it
    spans = _def_spans(rel)
    cands = spans.get(name) or spans.get(name.split(".")[-1])
    if not cands:
        return None
    if any(abs(lo - a) <= 3 or (a <= lo and hi <= b) for a, b in cands):
        return None
    where = ", ".join(f"L{a}-L{b}" for a, b in cands)
    return f"[`{name}`] → {rel}#L{lo}-L{hi}, but {name} is at {where}"


@pytest.mark.parametrize("lang,page", ALL_PAGES, ids=[f"{lang}/{p}" for lang, p in ALL_PAGES])
def test_named_source_links_point_at_their_code(lang, page):
    text = FENCE.sub("", (DOCS / lang / page).read_text(encoding="utf-8"))  # 行内代码要留着：名字就在里面 / keep code spans
    errors = [e for name, rel, lo, hi in NAMED_SOURCE_LINK.findall(text)
              if (e := check_named_source_link(name, rel, int(lo), int(hi or lo)))]
    assert not errors, "source links that drifted off their code:\n" + "\n".join(errors)


def test_named_source_link_checker():
    spans = _def_spans("minisgl/scheduler/scheduler.py")
    (start, end), = spans["Scheduler.step"]
    assert check_named_source_link("Scheduler.step", "minisgl/scheduler/scheduler.py", start, end) is None
    # 函数里的一段也行 / a part of the function is fine
    assert check_named_source_link("step", "minisgl/scheduler/scheduler.py", start + 2, end - 1) is None
    assert "Scheduler.step is at" in check_named_source_link("Scheduler.step", "minisgl/scheduler/scheduler.py",
                                                              end + 10, end + 20)
    assert check_named_source_link("LPM_FALLBACK_QUEUE_LEN", "minisgl/scheduler/schedule_policy.py", 1, 2) is None


# ======== (c) 文件头的【对应章节】/ the chapter named in module headers ========
HEADER_MODULES = sorted(p for p in (ROOT / "minisgl").rglob("*.py") if p.name not in ("__init__.py", "__main__.py"))


@pytest.mark.parametrize("path", HEADER_MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_header_chapter_exists(path):
    head = path.read_text(encoding="utf-8")[:6000]
    if "【对应章节】" not in head:
        pytest.skip("no header (tests/test_headers.py reports that)")
    line = head.split("【对应章节】")[1].split("\n")[0]
    m = re.search(r"docs/zh/([\w.\-/]+\.md)", line)
    assert m, f"【对应章节】 must name a docs/zh/*.md page: {line!r}"
    name = m.group(1)
    if (DOCS / "zh" / name).exists():
        return
    assert name[:2] in CHAPTERS_TO_COME, (
        f"{path.relative_to(ROOT)} names docs/zh/{name}, which does not exist and is not a chapter still to come "
        f"{sorted(CHAPTERS_TO_COME)}")


def test_chapters_to_come_are_not_written_yet():
    written = {p[:2] for p in pages("zh") if re.match(r"\d\d-", p)}
    assert not (CHAPTERS_TO_COME & written), (
        f"chapters {sorted(CHAPTERS_TO_COME & written)} exist now: remove them from CHAPTERS_TO_COME")


# ======== (d) mkdocs build --strict ========
SMOKE_NOTEBOOK = {
    "cells": [
        {"id": "c1", "cell_type": "markdown", "metadata": {}, "source": ["# 文档冒烟测试 / docs smoke notebook\n"]},
        {"id": "c2", "cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
         "source": ["print('minisgl')"]},
    ],
    "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                 "language_info": {"name": "python"}},
    "nbformat": 4, "nbformat_minor": 5,
}


@pytest.fixture(scope="module")
def built_site(tmp_path_factory):
    """在临时目录里严格构建（加一个冒烟笔记本，检查笔记本渲染）。Build strictly in a temp copy."""
    for mod in ("mkdocs", "material", "mkdocs_static_i18n", "mkdocstrings_handlers.python", "mkdocs_jupyter"):
        pytest.importorskip(mod, reason=f"{mod} is not installed (pip install -e '.[docs]')")
    tmp = tmp_path_factory.mktemp("site-src")
    shutil.copy(ROOT / "mkdocs.yml", tmp / "mkdocs.yml")
    (tmp / "minisgl").symlink_to(ROOT / "minisgl")
    shutil.copytree(DOCS, tmp / "docs", symlinks=True)  # docs/notebooks → ../notebooks（tmp 里的副本）
    shutil.copytree(ROOT / "notebooks", tmp / "notebooks")
    (tmp / "notebooks" / "zz-docs-smoke.ipynb").write_text(json.dumps(SMOKE_NOTEBOOK), encoding="utf-8")
    site = tmp / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", "mkdocs.yml", "-d", str(site)],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stderr[-6000:]}"
    return site


def test_build_chapters_in_both_languages(built_site):
    zh = (built_site / "06-scheduling" / "index.html").read_text(encoding="utf-8")
    en = (built_site / "en" / "06-scheduling" / "index.html").read_text(encoding="utf-8")
    assert "代码实现" in zh and 'lang="zh"' in zh
    assert "Code Implementation" in en and 'lang="en"' in en
    for page in REQUIRED_PAGES:
        stem = "" if page == "index.md" else page[:-3] + "/"
        for prefix in ("", "en/"):
            assert (built_site / f"{prefix}{stem}index.html").is_file(), f"{prefix}{stem} was not built"


def test_build_notebooks_are_html_in_both_languages(built_site):
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")) + [Path("zz-docs-smoke.ipynb")]:
        for prefix in ("", "en/"):
            html = built_site / f"{prefix}notebooks/{nb.stem}/index.html"
            assert html.is_file(), f"{prefix}notebooks/{nb.stem}: no HTML page (PITFALLS item 3)"
            assert "jp-Cell" in html.read_text(encoding="utf-8"), f"{html} is not a rendered notebook"


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=3000"]


def chromium() -> str:
    """无头 Chromium 的路径；CI 里必须有（.ci/run 安装它），本地没有就跳过。Headless Chromium, required in CI."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: .ci/run must install it (apt-get install chromium fonts-noto-cjk)")
        pytest.skip("no chromium here (apt-get install chromium fonts-noto-cjk)")
    return exe


def browser_dom(url: str) -> str:
    """让真浏览器加载页面、执行 JS，返回此时的 DOM。A real browser loads the page, runs its JS, gives the DOM."""
    proc = subprocess.run([chromium(), *CHROMIUM_FLAGS, "--dump-dom", url], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "</html>" in proc.stdout, f"chromium failed on {url}: {proc.stderr[-2000:]}"
    return proc.stdout


@pytest.mark.parametrize("prefix,lang", [("", "zh"), ("en/", "en")])
@pytest.mark.parametrize("page", ["", "06-scheduling/"])
def test_browser_sees_language_switcher_and_code_links(built_site, prefix, lang, page):
    """headless Chromium 打开首页与一章（两种语言）：有语言切换器，章节里有指向源码的链接。

    Headless Chromium opens the home page and a chapter in each language and finds the language
    switcher (links to both languages) and, on the chapter, links into the source code.
    """
    dom = browser_dom((built_site / f"{prefix}{page}index.html").as_uri())
    assert f'<html lang="{lang}"' in dom
    switcher = re.search(r'<div class="md-select__inner">(.*?)</div>', dom, re.S)
    assert switcher, "no language switcher (md-select) in the rendered page"
    assert 'hreflang="zh"' in switcher.group(1) and 'hreflang="en"' in switcher.group(1)
    # 页面的 JS 真的运行了：静态 HTML 的 <html class="no-js"> 被脚本换成了 "js"。
    # The page's JS really ran: the static <html class="no-js"> was switched to "js" by script.
    assert 'class="no-js"' in (built_site / f"{prefix}{page}index.html").read_text(encoding="utf-8")
    assert re.search(r'<html[^>]*class="[^"]*\bjs\b', dom) and 'class="no-js"' not in dom
    if page:
        code_links = re.findall(r'href="(https://github\.com/minisgl/minisgl/blob/main/minisgl/[^"]+|[^"]*api/[^"]*#minisgl\.[^"]+)"', dom)
        assert len(code_links) >= 5, f"only {len(code_links)} code links on {prefix}{page}"
        assert ("代码实现" if lang == "zh" else "Code Implementation") in dom


def test_build_api_anchors_exist(built_site):
    """链接检查器认为存在的符号，在生成的 API 页里也真有这个锚点。Every linked symbol is an anchor in the HTML."""
    missing = []
    for lang, page in ALL_PAGES:
        path = DOCS / lang / page
        for target in links(path.read_text(encoding="utf-8")):
            rel, _, frag = target.partition("#")
            if not frag.startswith("minisgl.") or re.match(r"^[a-z]+:", target):
                continue
            dest = (path.parent / rel).resolve().relative_to(DOCS / lang).with_suffix("")
            html = built_site / ("" if lang == "zh" else "en") / dest / "index.html"
            if f'id="{frag}"' not in html.read_text(encoding="utf-8"):
                missing.append(f"{lang}/{page}: {target}")
    assert not missing, "anchors missing from the built API pages:\n" + "\n".join(missing)


# ======== (e) 页面嵌入的脚本输出是最新的 / embedded script outputs are current ========
# 只检查确定性的输出（有同名 .py 的 .txt）；计时结果 measure.out.txt 随机器变化，不检查。
# Only deterministic outputs (a .txt beside a same-named .py); timings (measure.out.txt) vary by machine.
SCRIPT_OUTPUTS = sorted(p for p in (DOCS / "scripts").glob("*.txt") if p.with_suffix(".py").is_file())


@pytest.fixture(scope="module")
def script_runs():
    """并行运行 docs/scripts/ 里每个有 .txt 输出的脚本。Run every script that has a stored output, in parallel."""
    procs = {txt.name: subprocess.Popen([sys.executable, str(txt.with_suffix(".py"))], cwd=ROOT, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE) for txt in SCRIPT_OUTPUTS}
    return {name: (p, *p.communicate(timeout=180)) for name, p in procs.items()}


@pytest.mark.parametrize("txt", SCRIPT_OUTPUTS, ids=lambda p: p.name)
def test_script_output_is_current(txt, script_runs):
    proc, out, err = script_runs[txt.name]
    assert proc.returncode == 0, err[-3000:]
    rel = txt.relative_to(ROOT).as_posix()
    assert out == txt.read_text(encoding="utf-8"), (
        f"{rel} is stale: run `python {rel[:-4]}.py > {rel}` and check that the pages embedding it still explain it")
    for lang in LANGS:
        assert any(f'--8<-- "{rel}"' in (DOCS / lang / p).read_text(encoding="utf-8") for p in pages(lang)), (
            f"no {lang} page embeds {rel}")


# ======== 术语表 / the glossary ========
def test_glossary_is_generated_and_large_enough():
    spec = importlib.util.spec_from_file_location("glossary", DOCS / "scripts" / "glossary.py")
    glossary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(glossary)
    terms = glossary.terms()
    assert len(terms) >= 200, f"the glossary has {len(terms)} terms; at least 200 are wanted"
    assert len({t[1].lower() for t in terms}) == len(terms), "an English term appears twice"
    for lang in LANGS:
        page = (DOCS / lang / "10-glossary.md").read_text(encoding="utf-8")
        assert page == glossary.render(lang), (
            f"docs/{lang}/10-glossary.md differs from docs/scripts/glossary.py: run `python docs/scripts/glossary.py`")
