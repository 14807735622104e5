"""调度器。The scheduler: requests, policies, the continuous-batching loop (chapter 06)."""
from minisgl.scheduler.schedule_batch import Req
from minisgl.scheduler.scheduler import Scheduler, StepOutput

__all__ = ["Req", "Scheduler", "StepOutput"]
