"""服务器的生与死、门卫与 Engine(mode="server")。Server start/stop, guards, and Engine(mode="server")."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from minisgl import Engine
from minisgl.server.launch import is_loopback
from tests.test_server import ServerProc, pid_alive

GREEDY = {"max_new_tokens": 12, "temperature": 0}
KEY = "sk-test-123"


def wait_gone(pids, timeout=15):
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if pid_alive(p)]


def ipc_dir_of(server):
    return server.output().split("ZMQ sockets in ")[1].split()[0]


# ======== 关机 / shutdown ========
def test_sigterm_stops_everything(checkpoint, tmp_path):
    s = ServerProc(checkpoint("qwen3"), tmp_path).wait_ready()
    children = s.children()
    ipc_dir = ipc_dir_of(s)
    assert len(children) >= 2 and os.path.isdir(ipc_dir)
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(30) == 0, s.output()
    assert wait_gone(children) == [], "orphan child processes"
    assert not os.path.exists(ipc_dir), "ipc files left behind"
    s.stop()


def test_ctrl_c_to_the_process_group(checkpoint, tmp_path):
    # 终端里的 Ctrl-C 发给整个进程组：子进程忽略它，由父进程收尾。
    # A terminal Ctrl-C hits the whole group: the children ignore it and the parent shuts down.
    s = ServerProc(checkpoint("qwen3"), tmp_path, new_session=True).wait_ready()
    children, ipc_dir = s.children(), ipc_dir_of(s)
    os.killpg(s.proc.pid, signal.SIGINT)
    assert s.proc.wait(30) == 0, s.output()
    assert wait_gone(children) == [] and not os.path.exists(ipc_dir)
    assert "Traceback" not in s.output()
    s.stop()


def test_dead_child_takes_the_server_down(checkpoint, tmp_path):
    s = ServerProc(checkpoint("qwen3"), tmp_path).wait_ready()
    children, ipc_dir = s.children(), ipc_dir_of(s)
    workers = [p for p in children if b"spawn_main" in open(f"/proc/{p}/cmdline", "rb").read()]
    assert len(workers) == 2
    body = {"text": "床前", "stream": True, "sampling_params": {"max_new_tokens": 400, "ignore_eos": True}}
    with httpx.stream("POST", s.url + "/generate", json=body, timeout=30) as r:
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        os.kill(workers[0], signal.SIGKILL)
        events = [line[6:] for line in lines if line.startswith("data: ")]
    # 在途的请求拿到错误而不是挂住。The in-flight request gets an error instead of hanging.
    assert events[-1] == "[DONE]"
    reason = json.loads(events[-2])["meta_info"]["finish_reason"]
    assert reason["type"] == "abort" and "died unexpectedly" in reason["message"]
    assert s.proc.wait(30) == 1
    assert "died unexpectedly" in s.output()
    assert wait_gone(children) == [] and not os.path.exists(ipc_dir)
    s.stop()


def test_busy_port_fails_fast(checkpoint, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "minisgl", "serve", "--model-path", checkpoint("qwen3"),
                            "--port", str(port)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in r.stderr


def test_loopback_rule():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("127.1.2.3")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("::")


# ======== 门卫：API key、请求体上限、排队上限 / guards ========
@pytest.fixture(scope="module")
def guarded(checkpoint, tmp_path_factory):
    s = ServerProc(checkpoint("qwen3"), tmp_path_factory.mktemp("guarded"), "--api-key", KEY,
                   "--max-queued-requests", "2", "--max-running-requests", "1", "--max-request-bytes", "4096",
                   "--served-model-name", "m")
    try:
        yield s.wait_ready()
    finally:
        s.stop()


AUTH = {"Authorization": f"Bearer {KEY}"}


def test_api_key(guarded):
    assert httpx.get(guarded.url + "/health").status_code == 200  # 健康检查不需要 key / no key for /health
    for path in ("/v1/models", "/get_model_info", "/get_server_info", "/metrics"):
        r = httpx.get(guarded.url + path)
        assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
        assert httpx.get(guarded.url + path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.post(guarded.url + "/generate", json={"text": "hi"}).status_code == 401
    assert httpx.get(guarded.url + "/v1/models", headers=AUTH).status_code == 200
    assert httpx.get(guarded.url + "/get_server_info", headers=AUTH).json()["server_args"]["api_key"] == "***"
    assert httpx.get(guarded.url + "/metrics", headers=AUTH).status_code == 404  # 没开 / not enabled
    from openai import AuthenticationError, OpenAI

    ok = OpenAI(base_url=guarded.url + "/v1", api_key=KEY, max_retries=0)
    assert ok.completions.create(model="m", prompt="床前", max_tokens=3).usage.completion_tokens == 3
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=guarded.url + "/v1", api_key="nope", max_retries=0).models.list()


def test_chunked_body_over_limit(guarded):
    def chunks():
        for _ in range(10):
            yield b'{"text": "' + b"x" * 1000

    r = httpx.post(guarded.url + "/generate", content=chunks(), headers=AUTH)  # 没有 Content-Length / no length
    assert r.status_code == 413 and "--max-request-bytes" in r.json()["error"]["message"]


def test_queue_limit_gives_503(guarded):
    body = {"text": "床前", "sampling_params": {"max_new_tokens": 40, "ignore_eos": True}}
    barrier = threading.Barrier(8)

    def one(_):
        barrier.wait()
        return httpx.post(guarded.url + "/generate", json=body, headers=AUTH, timeout=120)

    with ThreadPoolExecutor(8) as pool:
        rs = list(pool.map(one, range(8)))
    codes = sorted(r.status_code for r in rs)
    assert 503 in codes and 200 in codes and set(codes) <= {200, 503}, codes
    assert all("overloaded" in r.json()["error"]["message"] for r in rs if r.status_code == 503)
    assert httpx.post(guarded.url + "/generate", json=body, headers=AUTH, timeout=120).status_code == 200


# ======== Engine(mode="server") ========
def test_engine_server_mode_matches_inprocess(checkpoint):
    path = checkpoint("qwen3")
    local = Engine(path)
    with Engine(path, mode="server", api_key=KEY) as remote:
        # key 经环境变量传递：命令行里看不到，但服务器要求它。The key travels by environment, not argv.
        assert KEY.encode() not in open(f"/proc/{remote._server.proc.pid}/cmdline", "rb").read()
        assert httpx.get(remote._server.url + "/v1/models").status_code == 401
        assert remote.generate("床前明月光", GREEDY)["text"] == local.generate("床前明月光", GREEDY)["text"]
        batch = remote.generate(["床前", "Shall I"], GREEDY)
        assert [b["output_ids"] for b in batch] == [b["output_ids"] for b in local.generate(["床前", "Shall I"],
                                                                                           GREEDY)]
        chunks = list(remote.generate("Shall I compare thee", GREEDY, stream=True))
        assert "".join(c["text"] for c in chunks) == local.generate("Shall I compare thee", GREEDY)["text"]
        with pytest.raises(ValueError, match="top_p"):
            remote.generate("hi", {"top_p": 2})
        it = remote.generate("床前", {"max_new_tokens": 300, "ignore_eos": True}, stream=True)
        next(it)
        it.close()  # 放弃流：服务器端 abort / abandoning the stream aborts it on the server
        deadline = time.monotonic() + 30
        while remote.get_server_info()["num_running_reqs"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert remote.get_server_info()["protected_kv_tokens"] == 0
        assert remote.flush_cache()
        proc = remote._server.proc
    assert proc.poll() is not None
    local.shutdown()
    with pytest.raises(ValueError, match="mode"):
        Engine(path, mode="cluster")
