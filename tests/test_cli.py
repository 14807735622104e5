"""命令行：minisgl generate / --help。The command line."""
import subprocess
import sys


def run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "minisgl", *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_sglang_flags():
    out = run("serve", "--help").stdout
    for flag in ("--page-size", "--disable-radix-cache", "--schedule-policy", "--chunked-prefill-size",
                 "--max-running-requests", "--mem-fraction-static", "--disable-cuda-graph", "--api-key",
                 "--enable-metrics", "--tp-size"):
        assert flag in out


def test_generate_prints_continuation(checkpoint):
    r = run("generate", "--model-path", checkpoint("qwen3"), "--prompt", "床前明月光", "--max-new-tokens", "8",
            "--show-meta")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("床前明月光") and len(r.stdout.strip()) > len("床前明月光")
    assert '"completion_tokens": 8' in r.stderr


def test_generate_bad_flag_value_is_clear(checkpoint):
    r = run("generate", "--model-path", checkpoint("qwen3"), "--prompt", "x", "--temperature", "-1")
    assert r.returncode == 2 and "temperature" in r.stderr


def test_missing_model_is_clear(tmp_path):
    r = run("generate", "--model-path", str(tmp_path), "--prompt", "x")
    assert r.returncode == 2 and "config.json" in r.stderr


def test_running_request_cap_defaults(monkeypatch):
    # 上限按设备与显存：CPU 64；≥ 64 GiB 的 GPU 1024，更小的 256；CUDA graph 缺省录到同一个大小，显式值照用。
    # The cap by device and memory: CPU 64; a GPU of >= 64 GiB 1024, a smaller one 256. CUDA graphs are
    # captured up to the same size unless given; explicit values are kept; nonsense is refused by name.
    import types

    import pytest
    import torch

    from minisgl import server_args as sa

    a = sa.ServerArgs(device="cpu").resolve()
    assert a.max_running_requests == 64 and a.cuda_graph_max_bs == 64
    b = sa.ServerArgs(device="cpu", max_running_requests=8, cuda_graph_max_bs=4).resolve()
    assert (b.max_running_requests, b.cuda_graph_max_bs) == (8, 4)
    for gib, want in ((141, 1024), (80, 1024), (24, 256)):
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i, g=gib: types.SimpleNamespace(
            total_memory=g << 30))
        assert sa._default_max_running_requests("cuda") == want
    with pytest.raises(ValueError, match="cuda-graph-max-bs"):
        sa.ServerArgs(device="cpu", cuda_graph_max_bs=0).resolve()
