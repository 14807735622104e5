"""模型定义与加载。Model definitions and loading (chapter 07)."""
from minisgl.model.config import SUPPORTED_ARCHITECTURES, ModelConfig
from minisgl.model.loader import MODEL_REGISTRY, load_model

__all__ = ["MODEL_REGISTRY", "ModelConfig", "SUPPORTED_ARCHITECTURES", "load_model"]
