"""minisgl：一个用来学习的 SGLang 风格 LLM 推理引擎。A small SGLang-style LLM engine to learn from.

>>> import minisgl
>>> with minisgl.Engine() as engine:
...     print(engine.generate("床前明月光", {"max_new_tokens": 16, "temperature": 0})["text"])
"""
from minisgl.sampling.sampling_params import SamplingParams

__version__ = "0.1.0"


def __getattr__(name):
    # 延迟导入：`import minisgl` 不必加载 torch 模型代码。Lazy: importing minisgl stays light.
    if name == "Engine":
        from minisgl.engine import Engine

        return Engine
    raise AttributeError(name)


__all__ = ["Engine", "SamplingParams", "__version__"]
