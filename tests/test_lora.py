"""多 LoRA 服务：与 peft + transformers 逐 token 相同。Multi-LoRA serving equals peft + transformers token for token.

Random tiny Qwen3 / Llama checkpoints, random PEFT adapters (non-zero B, ranks 4 / 8 / 2, different
target modules, one rsLoRA), float32 on the CPU: each adapter alone, one batch mixing two adapters and
the base model, a single adapter slot (swapping), chunked prefill with pages. Also: the radix cache
never shares a prefix across adapters, unknown adapters are clear errors (Engine, HTTP 400/404),
and the Triton segmented matmuls equal the torch reference under TRITON_INTERPRET=1.
"""
import asyncio

import pytest
import torch

from minisgl import Engine as _Engine
from tests.conftest import assert_pool_whole

peft = pytest.importorskip("peft", reason="peft is not installed (pip install -e '.[dev]')")

MAX_NEW = 12
# 名字 → (r, lora_alpha, 目标模块, use_rslora)。Name → recipe.
ADAPTERS = {
    "all": (4, 8, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], False),
    "qv-down": (8, 4, ["q_proj", "v_proj", "down_proj"], True),  # 拼接层缺一部分（k）/ a stacked layer lacks k
    "mlp": (2, 4, ["gate_proj", "up_proj"], False),
}
TEXTS = ["床前明月光", "Shall I compare thee", "推理引擎把请求分批"]


def Engine(path, **kw):
    return _Engine(path, device="cpu", dtype="float32", **kw)


def make_adapter(base_path: str, path: str, r: int, alpha: int, targets, use_rslora: bool, seed: int) -> str:
    """用 peft 造一个随机适配器（B 不为 0）并 save_pretrained。A random PEFT adapter with non-zero B."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, use_rslora=use_rslora,
                     task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # peft 把 B 初始化为 0（增量为 0）：换成随机值 / peft inits B to zero
        for name, p in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(path)
    return path


_PEFT = {}


def peft_greedy(base_path: str, adapter_path, ids, max_new: int = MAX_NEW):
    """peft + transformers 的贪心输出（adapter_path=None：基座）。The reference greedy output."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    key = (base_path, adapter_path)
    if key not in _PEFT:
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
        _PEFT[key] = (PeftModel.from_pretrained(model, adapter_path) if adapter_path else model).eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        out = _PEFT[key].generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new,
                                  do_sample=False)
    return out[0, x.shape[1]:].tolist()


@pytest.fixture(scope="module")
def adapters(checkpoint, tmp_path_factory):
    """qwen3 检查点 + 三个适配器：(基座路径, {名字: 目录})。The qwen3 checkpoint and three adapters."""
    base = checkpoint("qwen3")
    root = tmp_path_factory.mktemp("lora")
    paths = {name: make_adapter(base, str(root / name), *recipe, seed=i)
             for i, (name, recipe) in enumerate(ADAPTERS.items())}
    return base, paths


@pytest.fixture(scope="module")
def engine(adapters):
    base, paths = adapters
    e = Engine(base, lora_paths=[f"{n}={p}" for n, p in paths.items()])
    yield e
    e.shutdown()


def _record_forwards(engine):
    """记下每次前向里的适配器集合。Record the set of adapters of every forward pass."""
    manager = engine.scheduler.model_runner.lora_manager
    seen, prepare = [], manager.prepare

    def spy(fb):
        seen.append(set(fb.lora_ids) if fb.lora_ids else {None})
        return prepare(fb)

    manager.prepare = spy
    return seen, lambda: setattr(manager, "prepare", prepare)


# ======== 与 peft 逐 token 相同 / Token for token equal to peft ========
def test_each_adapter_matches_peft(engine, adapters):
    base, paths = adapters
    changed = set()
    for text in TEXTS:
        ids = engine.tokenizer.encode(text)
        ref_base = peft_greedy(base, None, ids)
        params = {"max_new_tokens": MAX_NEW, "temperature": 0}
        assert engine.generate(input_ids=ids, sampling_params=params)["output_ids"] == ref_base
        for name, path in paths.items():
            out = engine.generate(input_ids=ids, sampling_params=params, lora_path=name)
            ref = peft_greedy(base, path, ids)
            assert out["output_ids"] == ref, (name, text)
            if ref != ref_base:
                changed.add(name)
    assert changed == set(paths), "every adapter should change some output (else the test proves little)"
    assert_pool_whole(engine)


def test_mixed_batch_matches_peft(engine, adapters):
    """一个 batch 里混着两个适配器和基座：一次前向算完。Two adapters and the base in one forward."""
    base, paths = adapters
    prompts = [engine.tokenizer.encode(t) for t in TEXTS + ["白日依山尽", "To be, or not to be"]]
    loras = ["all", None, "qv-down", "all", None]
    seen, undo = _record_forwards(engine)
    try:
        outs = engine.generate(input_ids=prompts, sampling_params={"max_new_tokens": MAX_NEW, "temperature": 0},
                               lora_path=loras)
    finally:
        undo()
    for ids, name, out in zip(prompts, loras, outs):
        assert out["output_ids"] == peft_greedy(base, paths[name] if name else None, ids), name
    assert {"all", "qv-down", None} in seen, f"no forward mixed both adapters and the base: {seen}"
    assert_pool_whole(engine)


def test_one_slot_swaps_adapters(adapters):
    """max_loras_per_batch=1：每个 batch 至多一个适配器，靠换入换出轮流服务。One slot: adapters take turns."""
    base, paths = adapters
    eng = Engine(base, lora_paths=paths, max_loras_per_batch=1)
    prompts = [eng.tokenizer.encode(t) for t in TEXTS]
    loras = ["all", "mlp", None]
    seen, _ = _record_forwards(eng)
    outs = eng.generate(input_ids=prompts, sampling_params={"max_new_tokens": MAX_NEW, "temperature": 0},
                        lora_path=loras)
    for ids, name, out in zip(prompts, loras, outs):
        assert out["output_ids"] == peft_greedy(base, paths[name] if name else None, ids), name
    assert all(len(s - {None}) <= 1 for s in seen), seen
    manager = eng.scheduler.model_runner.lora_manager
    again = eng.generate(input_ids=prompts[0], sampling_params={"max_new_tokens": 4, "temperature": 0},
                         lora_path="all")
    assert again["output_ids"] == outs[0]["output_ids"][:4]
    assert manager.num_loads >= 3, "all → mlp → all must swap the single slot"
    assert_pool_whole(eng)


def test_llama_chunked_pages_matches_peft(checkpoint, tmp_path):
    """Llama，page_size 4，分块 prefill 8：前缀缓存按页、按适配器命名空间工作。Pages + chunks, Llama."""
    base = checkpoint("llama")
    path = make_adapter(base, str(tmp_path / "ad"), 4, 16, ["q_proj", "k_proj", "o_proj", "up_proj"], False, seed=7)
    eng = Engine(base, lora_paths={"ad": path}, page_size=4, chunked_prefill_size=8)
    ids = eng.tokenizer.encode("床前明月光，疑是地上霜。举头望明月，低头思故乡。")
    params = {"max_new_tokens": MAX_NEW, "temperature": 0}
    ref = peft_greedy(base, path, ids)
    outs = eng.generate(input_ids=[ids, ids, ids], sampling_params=params, lora_path=["ad", None, "ad"])
    assert outs[0]["output_ids"] == ref and outs[2]["output_ids"] == ref
    assert outs[1]["output_ids"] == peft_greedy(base, None, ids)
    assert eng.generate(input_ids=ids, sampling_params=params, lora_path="ad")["output_ids"] == ref
    assert_pool_whole(eng)


# ======== 前缀缓存按适配器分开 / The prefix cache is split by adapter ========
def test_radix_cache_not_shared_across_adapters(engine, adapters):
    """同一个 prompt 在不同适配器下 K/V 不同：不能互相命中；同一适配器能命中，且输出仍然正确。

    The same prompt under another adapter has other K/V: no hit across adapters (the base model
    included); a hit within one adapter, and the output stays right.
    """
    base, paths = adapters
    engine.flush_cache()
    ids = engine.tokenizer.encode("举头望明月，低头思故乡。" * 2)
    params = {"max_new_tokens": 4, "temperature": 0}

    def cached(lora):
        out = engine.generate(input_ids=ids, sampling_params=params, lora_path=lora)
        assert out["output_ids"] == peft_greedy(base, paths[lora] if lora else None, ids, 4), lora
        return out["meta_info"]["cached_tokens"]

    assert cached(None) == 0
    assert cached("all") == 0, "an adapter must not reuse the base model's KV"
    assert cached("qv-down") == 0, "another adapter must not reuse the first adapter's KV"
    assert cached("all") >= len(ids) - 1, "the same adapter reuses its own prefix"
    assert cached(None) >= len(ids) - 1
    tree = engine.scheduler.tree_cache
    namespaces = sorted(str(k[0]) if isinstance(k, tuple) else "base" for k in tree.root_node.children)
    assert namespaces == ["all", "base", "qv-down"], namespaces
    from minisgl.viz import radix_tree_svg, radix_tree_text

    drawing = radix_tree_text(tree, engine.tokenizer)
    assert "[all] " in drawing and "[qv-down] " in drawing, drawing
    assert "[all] " in radix_tree_svg(tree, engine.tokenizer)
    assert_pool_whole(engine)


@pytest.mark.parametrize("page_size", [1, 4])
def test_radix_namespace_unit(page_size):
    from minisgl.mem_cache import RadixCache, ReqToTokenPool, TokenToKVPoolAllocator
    from minisgl.mem_cache.radix_cache import namespaced, split_namespace

    alloc = TokenToKVPoolAllocator(128, page_size)
    cache = RadixCache(ReqToTokenPool(4, 64), alloc, page_size)
    key = list(range(10, 18))
    for ns in (None, "a", "b"):
        value = alloc.alloc_extend([0], [len(key)], [-1])
        assert cache.insert(key, value, namespace=ns) == 0, f"namespace {ns} must start empty"
    assert cache.total_size() == 3 * len(key)
    for ns in (None, "a", "b"):
        assert len(cache.match_prefix(key, namespace=ns)[0]) == len(key)
    assert len(cache.match_prefix(key, namespace="c")[0]) == 0
    _, node = cache.match_prefix(key[:4], namespace="a")  # 在命名空间里拆节点 / split inside a namespace
    assert split_namespace(node.key) == ("a", key[:4]) and node.parent is cache.root_node
    assert namespaced(key, None) is key and split_namespace(namespaced(key, "a")) == ("a", key)
    assert cache.evictable_size() + cache.protected_size() == cache.total_size()
    assert cache.evict(10**6) == 3 * len(key) and cache.total_size() == 0
    assert alloc.available_size() == alloc.size


# ======== 错误 / Errors ========
def test_unknown_adapter_is_a_clear_error(engine, checkpoint):
    with pytest.raises(ValueError, match=r"unknown LoRA adapter 'nope'.*all, mlp, qv-down"):
        engine.generate("床前", {"max_new_tokens": 2}, lora_path="nope")
    with pytest.raises(ValueError, match=r"prompt 1: unknown LoRA adapter 'bad'"):
        engine.generate(["床前", "明月"], {"max_new_tokens": 2}, lora_path=["all", "bad"])
    with pytest.raises(ValueError, match="values of lora_path"):
        engine.generate(["床前", "明月"], {"max_new_tokens": 2}, lora_path=["all"])
    plain = Engine(checkpoint("qwen3"))
    with pytest.raises(ValueError, match="no adapters are loaded"):
        plain.generate("床前", {"max_new_tokens": 2}, lora_path="all")
    # 绕过分词层直接进调度器：以 abort 结束，不抛异常。Straight into the scheduler: an abort, not a crash.
    from minisgl.io_struct import TokenizedGenerateReqInput
    from minisgl.sampling.sampling_params import SamplingParams

    req = engine.scheduler.add_request(TokenizedGenerateReqInput("x", None, [1, 2], SamplingParams(max_new_tokens=2),
                                                                 lora_path="nope"))
    assert req.finished_reason.to_json()["type"] == "abort" and "nope" in req.finished_reason.message
    engine.scheduler.run_until_idle()


def test_server_args_and_adapter_checks(adapters, tmp_path):
    import json

    from minisgl.lora import LoRAAdapter
    from minisgl.model import ModelConfig
    from minisgl.server_args import ServerArgs

    base, paths = adapters
    args = ServerArgs(lora_paths=[f"all={paths['all']}", paths["mlp"]]).resolve()
    assert args.lora_adapters() == {"all": paths["all"], paths["mlp"]: paths["mlp"]}  # 只给路径：名字就是路径
    assert ServerArgs(lora_paths={"a": paths["all"]}).resolve().lora_paths == [f"a={paths['all']}"]
    with pytest.raises(ValueError, match="not a directory"):
        ServerArgs(lora_paths=["x=/no/such/dir"]).resolve()
    with pytest.raises(ValueError, match="given twice"):
        ServerArgs(lora_paths=[f"a={paths['all']}", f"a={paths['mlp']}"]).resolve()
    with pytest.raises(ValueError, match="max-loras-per-batch"):
        ServerArgs(max_loras_per_batch=0).resolve()
    with pytest.raises(ValueError, match="tp-size 1"):
        ServerArgs(lora_paths={"a": paths["all"]}, tp_size=2).check()
    from minisgl.lora import LoRAManager

    with pytest.raises(ValueError, match="tp-size 1"):
        LoRAManager({"a": paths["all"]}, None, None, 8, "cpu", torch.float32, tp_size=2)
    # 不支持的 PEFT 选项、别的模型的适配器：点名报错。Unsupported options and foreign adapters name themselves.
    cfg = ModelConfig.from_pretrained(base)
    bad = tmp_path / "dora"
    bad.mkdir()
    src = json.load(open(f"{paths['all']}/adapter_config.json"))
    (bad / "adapter_config.json").write_text(json.dumps({**src, "use_dora": True}))
    (bad / "adapter_model.safetensors").write_bytes(open(f"{paths['all']}/adapter_model.safetensors", "rb").read())
    with pytest.raises(ValueError, match="DoRA"):
        LoRAAdapter.load("dora", str(bad), cfg)
    import dataclasses

    other = dataclasses.replace(cfg, hidden_size=cfg.hidden_size * 2)
    with pytest.raises(ValueError, match="expected .*another model"):
        LoRAAdapter.load("all", paths["all"], other)
    a = LoRAAdapter.load("qv-down", paths["qv-down"], cfg)
    assert a.rank == 8 and a.scaling == pytest.approx(4 / 8**0.5)  # rsLoRA: alpha / sqrt(r)
    assert a.target_modules == {"q_proj", "v_proj", "down_proj"}


def test_http_model_names_and_errors(adapters):
    """OpenAI 的 model 字段选适配器；/generate 的 lora_path；/v1/models 列出适配器。Routing by model name."""
    from fastapi.testclient import TestClient

    from minisgl.server.http_server import create_app
    from minisgl.server_args import ServerArgs
    from minisgl.tokenizer_manager import normalize_requests
    from minisgl.utils import load_tokenizer

    base, paths = adapters
    args = ServerArgs(model_path=base, served_model_name="tiny", lora_paths=paths).resolve()
    tokenizer = load_tokenizer(base)
    asked = []

    class StubTM:  # 只跑到 normalize，然后给一个结束的更新 / runs up to normalize, then one final update
        metrics, dead = None, None
        context_len, vocab_size = 512, len(tokenizer)
        lora_names = list(paths)

        def __init__(self):
            self.tokenizer = tokenizer

        def normalize(self, obj):
            res = normalize_requests(tokenizer, obj, self.vocab_size, self.context_len, self.lora_names)
            asked.append([r.lora_path for r in res[1]])
            return res

        async def generate(self, reqs, request=None, stream=False):
            for i, r in enumerate(reqs):
                await asyncio.sleep(0)
                meta = {"id": r.rid, "finish_reason": {"type": "length", "length": 1}, "prompt_tokens": 1,
                        "completion_tokens": 1, "cached_tokens": 0}
                yield {"index": i, "rid": r.rid, "text": "x", "output_ids": [5], "meta_info": meta, "finished": True}

    client = TestClient(create_app(StubTM(), args, {}))
    models = client.get("/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["tiny", *paths] and models[1]["parent"] == "tiny"
    for model, want in [("tiny", None), ("all", "all"), ("tiny:mlp", "mlp")]:
        r = client.post("/v1/completions", json={"model": model, "prompt": "床前", "max_tokens": 1})
        assert r.status_code == 200, r.text
        assert asked[-1] == [want] and r.json()["model"] == model
    r = client.post("/v1/chat/completions", json={"model": "tiny:qv-down", "max_tokens": 1,
                                                  "messages": [{"role": "user", "content": "你好"}]})
    assert r.status_code == 200 and asked[-1] == ["qv-down"]
    r = client.post("/v1/completions", json={"model": "tiny:nope", "prompt": "床前"})
    assert r.status_code == 400 and "unknown LoRA adapter 'nope'" in r.json()["error"]["message"]
    r = client.post("/v1/completions", json={"model": "nope", "prompt": "床前"})
    assert r.status_code == 404 and "does not exist" in r.json()["error"]["message"]
    r = client.post("/generate", json={"text": "床前", "lora_path": "mlp"})
    assert r.status_code == 200 and asked[-1] == ["mlp"]
    r = client.post("/generate", json={"text": "床前", "lora_path": "nope"})
    assert r.status_code == 400 and "unknown LoRA adapter 'nope'" in r.json()["error"]["message"]


# ======== Triton 分段矩阵乘 vs 参考实现 / Triton segmented matmul vs the reference ========
def test_triton_sgemm_matches_reference():
    import os

    pytest.importorskip("triton")
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1 (set in tests/conftest.py)")
    from minisgl.lora import triton_ops
    from minisgl.lora.ops import LoRABatchInfo, sgemm_lora_a_ref, sgemm_lora_b_ref

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(0)
    # (输入宽度, 各部分的输出宽度, 秩, 段长, 每段槽位) / (in, part widths, rank, segment lengths, slots)
    cases = [(40, [24, 8, 8], 8, [5, 1, 3, 1], [1, -1, 0, 2]),
             (72, [70], 4, [1, 1, 1, 1, 1], [0, 0, -1, 2, 1]),
             (20, [33, 33], 16, [19, 2], [2, -1])]
    for in_f, widths, rank, seg_lens, slots in cases:
        offsets = [0]
        for w in widths:
            offsets.append(offsets[-1] + w)
        S, P, N = 3, len(widths), sum(seg_lens)
        x = torch.randn(N, in_f, generator=gen).to(dev)
        A = torch.randn(S, P * rank, in_f, generator=gen).to(dev)
        B = torch.randn(S, offsets[-1], rank, generator=gen).to(dev)
        scalings = torch.tensor([0.5, 2.0, 1.25], device=dev)
        base = torch.randn(N, offsets[-1], generator=gen).to(dev)
        info = LoRABatchInfo.build(seg_lens, slots, dev)
        xa_ref = sgemm_lora_a_ref(x, A, info)
        want = sgemm_lora_b_ref(xa_ref, B, info, scalings, offsets, base.clone())
        xa = triton_ops.sgemm_lora_a_fwd(x, A, info)
        got = triton_ops.sgemm_lora_b_fwd(xa, B, info, scalings, offsets,
                                          torch.tensor(offsets, dtype=torch.int32, device=dev), base.clone())
        rows = torch.cat([torch.full((n,), w >= 0) for n, w in zip(seg_lens, slots)]).to(dev)
        torch.testing.assert_close(xa[rows], xa_ref[rows], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        assert torch.equal(got[~rows], base[~rows]), "rows without an adapter must be left untouched"
