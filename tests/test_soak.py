"""浸泡测试：32 个客户端在限定时间里混合发流式、非流式、中途断开、abort 与坏输入。

Soak test: 32 concurrent clients for a bounded time (SOAK_SECONDS, default 45 s; e.g.
``SOAK_SECONDS=120 pytest tests/test_soak.py`` for two minutes) mix streaming and non-streaming
requests, early disconnects, /abort_request and bad input against one live server. At the end:
zero 5xx, every request answered (each client counts what it sent and what came back), the
server still healthy, and a whole KV pool (only evictable cache left; full after /flush_cache).
The loops are bounded in count and time and talk only to 127.0.0.1.
"""
import asyncio
import json
import os
import random
import time

import httpx

from tests.test_reliability import assert_pool_whole
from tests.test_server import ServerProc

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "45"))
CLIENTS = 32
MAX_REQUESTS_PER_CLIENT = 400  # 次数上限（与时间上限一起）/ a count bound besides the time bound
BAD_BODIES = [{"prompt": "hi", "max_tokens": -1}, {"messages": []}, {"prompt": "hi", "top_p": 7},
              {"prompt": [10 ** 9]}, {"prompt": "hi", "nope": 1}]


async def client(http: httpx.AsyncClient, url: str, seed: int, deadline: float, tally: dict) -> None:
    rng = random.Random(seed)
    for n in range(MAX_REQUESTS_PER_CLIENT):
        if time.monotonic() > deadline:
            return
        kind = rng.choice(["stream", "plain", "chat", "leave", "abort", "bad"])
        tally["sent"] += 1
        params = {"max_new_tokens": rng.randint(1, 24), "temperature": rng.choice([0, 0.8]), "ignore_eos": True}
        prompt = f"客人 {seed}-{n}：" + rng.choice(["床前明月光", "Shall I compare thee", "春眠不觉晓"])
        if kind in ("stream", "leave", "abort"):
            rid = f"soak-{seed}-{n}"
            body = {"text": prompt, "stream": True, "rid": rid,
                    "sampling_params": {**params, "max_new_tokens": 200 if kind != "stream" else params["max_new_tokens"]}}
            events = []
            async with http.stream("POST", url + "/generate", json=body) as r:
                tally["5xx"] += r.status_code >= 500
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        events.append(line[6:])
                        if kind == "leave" and len(events) == 2:
                            break  # 离开 with：连接关闭，服务器应当 abort / leaving closes the connection
                        if kind == "abort" and len(events) == 2:
                            a = await http.post(url + "/abort_request", json={"rid": rid})
                            tally["5xx"] += a.status_code >= 500
            if kind == "leave":
                tally["answered"] += len(events) >= 1
            else:
                ok = events and events[-1] == "[DONE]" and "finish_reason" in json.loads(events[-2])["meta_info"]
                tally["answered"] += bool(ok)
        elif kind == "plain":
            r = await http.post(url + "/generate", json={"text": prompt, "sampling_params": params})
            tally["5xx"] += r.status_code >= 500
            tally["answered"] += r.status_code == 200 and "finish_reason" in r.json()["meta_info"]
        elif kind == "chat":
            r = await http.post(url + "/v1/chat/completions", json={
                "messages": [{"role": "user", "content": prompt}], "max_tokens": params["max_new_tokens"],
                "stream": False})
            tally["5xx"] += r.status_code >= 500
            tally["answered"] += r.status_code == 200 and r.json()["choices"][0]["finish_reason"] is not None
        else:
            path = "/v1/chat/completions" if "messages" in (b := rng.choice(BAD_BODIES)) else "/v1/completions"
            r = await http.post(url + path, json=b)
            tally["5xx"] += r.status_code >= 500
            tally["answered"] += 400 <= r.status_code < 500 and bool(r.json()["error"]["message"])


def test_soak(checkpoint, tmp_path):
    s = ServerProc(checkpoint("qwen3"), tmp_path, "--max-running-requests", "16").wait_ready()
    tally = {"sent": 0, "answered": 0, "5xx": 0}
    try:
        async def main():
            deadline = time.monotonic() + SOAK_SECONDS
            async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=64)) as http:
                await asyncio.gather(*[client(http, s.url, i, deadline, tally) for i in range(CLIENTS)])

        asyncio.run(main())
        print(f"soak: {tally}")
        assert tally["5xx"] == 0, tally
        assert tally["sent"] >= CLIENTS and tally["answered"] == tally["sent"], tally  # 没有丢失的请求 / none lost
        assert httpx.get(s.url + "/health", timeout=30).status_code == 200
        assert_pool_whole(s.url)
        assert "Traceback" not in s.output()
    finally:
        s.stop()
