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
