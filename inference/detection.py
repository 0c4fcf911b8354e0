"""What a detector returns to the service."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Detection:
    """One detected object, in pixel coordinates of the image passed to ``detect``.

    ``left``/``top`` is the box's top-left corner and ``width``/``height`` its size, in
    continuous pixel units (pixel ``i`` covers ``[i, i + 1)``), clipped to the image.
    ``confidence`` is in [0, 1]. ``model`` is the Triton model that found it (after a
    merge of several models' boxes, the one whose box scored best).
    """

    class_name: str
    confidence: float
    left: float
    top: float
    width: float
    height: float
    model: str = ""

    @property
    def right(self) -> float:
        return self.left + self.width

    @property
    def bottom(self) -> float:
        return self.top + self.height
