"""第 08 章的基数树例子：真的跑引擎，打印每一步之后的 RadixCache。

The worked example of chapter 08: run the real engine (a tiny random Qwen3 made on the spot, CPU,
offline) on a few requests that share prefixes, and print the radix tree after each event with
``RadixCache.pretty_print()`` plus a decoded view (each node's tokens as text).

    python docs/scripts/radix_example.py > docs/scripts/radix_example.txt

The chapter embeds docs/scripts/radix_example.txt; tests/test_docs.py re-runs this script and
checks that the embedded text is still what the code prints.
"""
from __future__ import annotations

import tempfile

import torch

torch.set_num_threads(1)

from minisgl.engine import Engine  # noqa: E402
from minisgl.io_struct import TokenizedGenerateReqInput  # noqa: E402
from minisgl.sampling.sampling_params import SamplingParams  # noqa: E402
from minisgl.testing import make_tiny_checkpoint  # noqa: E402

GREEDY = {"max_new_tokens": 3, "temperature": 0}


def decoded_tree(cache, tok) -> str:
    """每个节点的 token 解码成文字（repr 让空格和半个字符可见）。Each node's tokens as text."""
    lines = []

    def walk(node, indent):
        for child in sorted(node.children.values(), key=lambda n: n.id):
            lines.append(f"{'  ' * indent}└─ {tok.decode(child.key)!r} "
                         f"(tokens={len(child.key)}, lock={child.lock_ref})")
            walk(child, indent + 1)

    walk(cache.root_node, 0)
    return "\n".join(lines)


def show(title: str, engine: Engine) -> None:
    cache = engine.scheduler.tree_cache
    alloc = engine.scheduler.token_to_kv_pool_allocator
    print(f"### {title}")
    print(f"free KV slots = {alloc.available_size()} / {alloc.size}")
    print(cache.pretty_print())
    print("decoded:")
    print(decoded_tree(cache, engine.tokenizer))
    print()


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        path = make_tiny_checkpoint(d, arch="qwen3")
        # 小池子（256 个槽位）让数字好读。A small pool (256 slots) keeps the numbers readable.
        with Engine(path, max_total_tokens=256, page_size=1) as engine:
            tok = engine.tokenizer
            a, b, c = "床前明月光，疑是地上霜。", "床前明月光，低头思故乡。", "Shall I compare thee"
            for prompt in (a, b, c):
                out = engine.generate(prompt, GREEDY)
                m = out["meta_info"]
                print(f"request {prompt!r}: prompt_tokens={m['prompt_tokens']}, "
                      f"cached_tokens={m['cached_tokens']}, output_ids={out['output_ids']}")
                show(f"after {prompt!r} finished", engine)

            # 单步运行调度器：请求运行时它的路径被锁住。Step the scheduler: a running request locks its path.
            sched = engine.scheduler
            ids = tok.encode(a)
            sched.add_request(TokenizedGenerateReqInput("running", a, ids, SamplingParams(**GREEDY)))
            step = sched.step()
            print(f"one step: {step!r}; the running request's prefix is locked (lock=1)")
            show("while a request with prompt A is running", engine)
            sched.run_until_idle()

            freed = sched.tree_cache.evict(8)
            print(f"evict(8) freed {freed} slots: unlocked leaves go, least recently used first")
            show("after evict(8)", engine)


if __name__ == "__main__":
    main()
