"""Request planning: what a request will cost, known from the source's header before any pixel
is decoded.

Each operation module describes its own effect on the image (``estimate``: the output shape,
CPU-seconds, how many rows of context it reads, whether it needs random access); ``plan``
walks a request through them, decides where the engine copies the image to memory so that a
chain of large intermediates never builds up, and ``check_budget`` refuses a request whose
planned pixels, work or memory exceed the per-request budget.
"""

from imagesvc.planning.plan import (
    DetectionInput,
    OpEstimate,
    PlanEnv,
    RequestPlan,
    SourceInfo,
    check_budget,
    plan_request,
)
from imagesvc.planning.shape import Shape

__all__ = [
    "DetectionInput",
    "OpEstimate",
    "PlanEnv",
    "RequestPlan",
    "Shape",
    "SourceInfo",
    "check_budget",
    "plan_request",
]
