"""HTTP 服务器：三个进程（HTTP + 调度 + 反分词），见 launch.py。The HTTP server: three processes; see launch.py.

>>> from minisgl.server.launch import launch_server   # `minisgl serve` 调用它 / used by `minisgl serve`
"""
