# ================================================================================
# 💻 命令行入口：minisgl serve / generate / …
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   `minisgl` 命令（也可 `python -m minisgl`）的子命令分发。参数由 ServerArgs 自动生成，
#   名字与 SGLang 相同。
#   The `minisgl` command (also `python -m minisgl`): sub-command dispatch. Flags come from
#   ServerArgs and are named as in SGLang.
#
# 【生活比喻】Metaphor
#   总机接线员：听你说要哪个部门（子命令），把电话转过去。
#   A switchboard operator: hears which department you want and puts you through.
#
# 【核心架构】Architecture
#   minisgl ─┬─ generate --prompt …   → Engine.generate（进程内 / in-process）
#            ├─ serve …               → server/launch.py（三进程 / three processes）
#            └─ course list|start|grade → course/commands.py（课程作业 / course assignments）
#
# 【工作流程】Workflow
#   1. argparse 解析；2. 构造 ServerArgs；3. 调用对应函数。
#
# 【关键概念】Key Concepts
#   - generate 默认流式打印，并在最后打印 meta_info。Streams text, then prints meta_info.
#
# 【使用方式】Usage
#   $ minisgl generate --prompt "床前明月光" --max-new-tokens 32
#   $ minisgl serve --port 30000
#   $ minisgl course start radix_cache && minisgl course grade radix_cache
#
# 【对应章节】Chapter: docs/zh/03-server-startup.md
# ================================================================================
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from minisgl.course.commands import add_course_parser
from minisgl.server_args import ServerArgs


def _generate(ns: argparse.Namespace) -> int:
    from minisgl.engine import Engine

    args = ServerArgs.from_cli_args(ns)
    params = {"max_new_tokens": ns.max_new_tokens, "temperature": ns.temperature, "top_p": ns.top_p,
              "top_k": ns.top_k}
    if ns.seed is not None:
        params["seed"] = ns.seed
    if ns.stop:
        params["stop"] = ns.stop
    with Engine(**{k: v for k, v in vars(args).items()}) as engine:
        prompt = ns.prompt
        if ns.chat:
            prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": ns.prompt}], tokenize=False,
                                                          add_generation_prompt=True)
        print(ns.prompt, end="", flush=True)
        meta = None
        for chunk in engine.generate(prompt, params, stream=True):
            print(chunk["text"], end="", flush=True)
            meta = chunk["meta_info"]
        print()
        if ns.show_meta:
            print(json.dumps(meta, ensure_ascii=False), file=sys.stderr)
    return 0


def _serve(ns: argparse.Namespace) -> int:
    from minisgl.server.launch import launch_server

    return launch_server(ServerArgs.from_cli_args(ns))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minisgl", description="minisgl: a small SGLang-style LLM inference engine "
                                     "/ 一个用来学习的 SGLang 风格推理引擎")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="在本进程里生成一段文字 / generate text in-process")
    gen.add_argument("--prompt", required=True, help="提示词 / the prompt")
    gen.add_argument("--max-new-tokens", type=int, default=64, help="最多生成多少 token / max new tokens")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = 贪心 / 0 = greedy")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=-1)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--stop", action="append", help="stop 字符串，可重复 / stop string, repeatable")
    gen.add_argument("--chat", action="store_true", help="套用聊天模板 / apply the chat template")
    gen.add_argument("--show-meta", action="store_true", help="在 stderr 打印 meta_info / print meta_info")
    ServerArgs.add_cli_args(gen)
    gen.set_defaults(func=_generate)

    serve = sub.add_parser("serve", help="启动 HTTP 服务器 / start the HTTP server")
    ServerArgs.add_cli_args(serve)
    serve.set_defaults(func=_serve)

    add_course_parser(sub)  # minisgl course list / start / grade（learning_guide/assignments/）
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        return ns.func(ns) or 0
    except (ValueError, FileNotFoundError) as e:
        print(f"minisgl: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
