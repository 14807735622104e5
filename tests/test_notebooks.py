"""运行 notebooks/ 里的每个笔记本（nbclient），任何一格出错就失败；并检查它们存放时没有输出。

Executes every notebooks/*.ipynb with nbclient and fails on any failing cell. Each notebook ends with
a cell of ``assert``s on the facts it teaches, so a silently wrong engine fails here too.

The kernel is the interpreter running pytest: a kernelspec written to a temporary JUPYTER_PATH runs
``sys.executable -m ipykernel_launcher``, so a fresh CI environment needs only ``ipykernel`` installed
(the dev extra), no ``python -m ipykernel install``, and a user's own ``python3`` kernel elsewhere is
never picked up by mistake.

    python -m pytest -q tests/test_notebooks.py                 # 全部 / all
    python -m pytest -q tests/test_notebooks.py -k 08-kv-cache  # 一个 / one
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[dev]' (nbformat, nbclient, ipykernel)")
nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[dev]' (nbformat, nbclient, ipykernel)")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
KERNEL_NAME = "minisgl-test-python"
CELL_TIMEOUT_S = 300  # 一格的上限；整本应在 2 分钟内 / per cell; a whole notebook should take < 2 min
GITHUB_BLOB = "https://github.com/minisgl/minisgl/blob/main/"


@pytest.fixture(scope="session")
def kernel_env(tmp_path_factory):
    """用当前解释器的 kernelspec，并让内核能 import 这个仓库里的 minisgl。

    A kernelspec for this interpreter, and PYTHONPATH so the kernel imports this checkout's minisgl.
    """
    pytest.importorskip("ipykernel", reason="pip install -e '.[dev]' (ipykernel runs the notebook kernel)")
    jupyter_path = tmp_path_factory.mktemp("jupyter")
    spec_dir = jupyter_path / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": f"Python ({sys.executable})", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    env = {
        "JUPYTER_PATH": str(jupyter_path),
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        # CI 的 CPU 是共享的：每个进程（内核、服务器的子进程）一个线程，避免互相抢核。
        # Shared CI CPUs: one thread per process (kernel, server children), no oversubscription.
        "OMP_NUM_THREADS": "1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # 内核进程继承环境 / the kernel process inherits the environment
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_there_are_notebooks():
    names = {p.name[:2] for p in NOTEBOOKS}
    # 核心章节各有一本 / one per core chapter
    assert {"00", "03", "05", "06", "07", "08", "09", "12"} <= names, sorted(names)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_clean_and_links_its_chapter(path):
    """存放时没有输出；双语；链接到本章的中英文页面；最后一格有 assert。

    Stored without outputs; bilingual; links its chapter in both languages; ends with asserts.
    """
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name}: clear the outputs"
    assert code and "assert " in code[-1].source, f"{path.name}: the last cell must assert what the notebook teaches"
    md = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert re.search(r"[\u4e00-\u9fff]", md) and re.search(r"\b(the|and)\b", md), f"{path.name}: 中文 + English"
    num = path.name[:2]
    for lang in ("zh", "en"):
        found = re.findall(rf"\]\({re.escape(GITHUB_BLOB)}(docs/{lang}/({num}-[\w\-]+\.md))\)", md)
        assert found, f"{path.name}: no link to its chapter docs/{lang}/{num}-*.md"
        for rel, _ in found:
            # 章节已写好时链接必须指向真的文件；还没写的章节（没有 NN-*.md）先放着。
            # Once the chapter exists the link must name its file; a chapter still to come may wait.
            written = list((ROOT / "docs" / lang).glob(f"{num}-*.md"))
            assert not written or (ROOT / rel).is_file(), f"{path.name}: {rel} does not exist ({written})"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, kernel_env):
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL_NAME, timeout=CELL_TIMEOUT_S,
                                     resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as e:
        pytest.fail(f"{path.name}: a cell failed\n{str(e)[-4000:]}", pytrace=False)
    elapsed = time.perf_counter() - t0
    print(f"{path.name}: {elapsed:.1f} s")
    assert all(o.get("output_type") != "error" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
