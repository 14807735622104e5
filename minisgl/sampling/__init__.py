"""采样：参数与采样器。Sampling: parameters and the sampler (chapter 09)."""
from minisgl.sampling.sampler import Sampler
from minisgl.sampling.sampling_params import SamplingParams

__all__ = ["Sampler", "SamplingParams"]
