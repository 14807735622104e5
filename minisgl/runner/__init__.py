"""模型执行。Model execution: ModelRunner, ForwardBatch, attention backends (chapter 07)."""
from minisgl.runner.forward_batch import ForwardBatch, ForwardMode

__all__ = ["ForwardBatch", "ForwardMode"]
