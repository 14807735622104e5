"""MkDocs 钩子：让 i18n 插件重建的文件列表仍把 .ipynb 当作页面。

mkdocs-static-i18n rebuilds the file list after mkdocs-jupyter has wrapped each notebook as a page,
so a notebook turns back into a plain static file: its raw JSON is copied into the zh site and the
en copy goes missing, while ``mkdocs build --strict`` still passes (shared/PITFALLS.md item 3).
Registering ``.ipynb`` as a "markdown" extension makes every File built from a notebook a
documentation page again; mkdocs-jupyter then renders it in ``on_pre_page``.
tests/test_docs.py checks the built HTML of a notebook page in both languages.
"""
import mkdocs.utils


def on_startup(command, dirty):  # noqa: ARG001 — MkDocs hook signature
    if ".ipynb" not in mkdocs.utils.markdown_extensions:
        mkdocs.utils.markdown_extensions = (*mkdocs.utils.markdown_extensions, ".ipynb")
