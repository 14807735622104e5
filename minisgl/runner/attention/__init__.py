"""注意力后端。Attention backends: torch reference (CPU) and Triton (GPU) (chapter 07)."""
from minisgl.runner.attention.torch_backend import TorchAttnBackend

__all__ = ["TorchAttnBackend"]
