# ================================================================================
# 🚪 `python -m minisgl`：命令行的另一个入口
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   让 `python -m minisgl ...` 与安装后的 `minisgl ...` 命令完全相同：只是转给 cli.main()。
#   Makes `python -m minisgl ...` identical to the installed `minisgl ...` command: it forwards to cli.main().
#
# 【生活比喻】Metaphor
#   餐厅的侧门：进来后走到的还是同一个前台。A side door that leads to the same front desk.
#
# 【核心架构】Architecture
#   python -m minisgl ─► minisgl/cli.py: main() ─► generate | serve | course
#
# 【工作流程】Workflow
#   1. 导入 cli.main；2. 用它的返回值作为进程退出码。Import cli.main; exit with its return code.
#
# 【关键概念】Key Concepts
#   - 服务器的子进程用 spawn 启动，它们不会再执行这里（只有 `__main__` 时才运行）。
#     The server's spawned children never run this (it only runs as `__main__`).
#
# 【使用方式】Usage
#   $ python -m minisgl generate --prompt "床前明月光"
#   $ python -m minisgl serve --port 30000
#
# 【对应章节】Chapter: docs/zh/03-server-startup.md
# ================================================================================
import sys

from minisgl.cli import main

if __name__ == "__main__":
    sys.exit(main())
