"""Per-request state that pipeline steps read and update."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import pyvips

from imagesvc.errors import Cancelled, DeadlineExceeded
from imagesvc.geometry import Affine, Box
from imagesvc.regions.masks import RegionMap
from imagesvc.settings import Settings


@dataclass(frozen=True, slots=True)
class DetectedObject:
    class_name: str
    confidence: float
    box: Box  # oriented source-image pixels
    model: str = ""  # the Triton model that found it


@dataclass(frozen=True, slots=True)
class Degradation:
    reason: str  # UPPER_SNAKE, e.g. DETECTION_UNAVAILABLE
    operation: str  # proto oneof field name; "" for the request as a whole
    message: str


@dataclass(slots=True)
class StepContext:
    """What a step may know beyond its own options.

    Contract: a step that changes geometry composes its mapping into ``transform`` (source ->
    current pixels), so ``objects_in`` stays right after resizes, crops, turns and flips.
    """

    settings: Settings
    deadline: float  # time.monotonic() value
    source_size: tuple[int, int]  # oriented source width, height
    transform: Affine = field(default_factory=Affine)
    # Set when shrink-on-load decoded the source smaller than it is: the size the first resize
    # must compute its geometry from, so results do not depend on the decoder's shrink factor.
    logical_size: tuple[int, int] | None = None
    # True once the pipeline reads from memory, so steps needing random access can re-read.
    in_memory: bool = False
    objects: list[DetectedObject] | None = None  # None: detection has not run
    detection_failure: str | None = None  # reason when detection was unavailable
    # Background / skin / clothes (imagesvc.regions.masks.RegionMap), when the request needs
    # them and segmentation ran; set before ``objects`` (a step needing regions needs
    # detections too, and waits for those).
    regions: RegionMap | None = None
    regions_failure: str | None = None  # reason when segmentation was unavailable
    # Class weights from the detection models' classes files (object gravity's defaults).
    class_weights: Mapping[str, float] = field(default_factory=dict)
    degradations: list[Degradation] = field(default_factory=list)
    cancelled: bool = False
    # The image every libvips computation of the request reads through right now (see watch).
    killable: pyvips.Image | None = None
    # Images computations running beside the pipeline read through (the detector's input,
    # decoded from the source while the pipeline runs): killed together with ``killable``.
    side: list[pyvips.Image] = field(default_factory=list)
    killed: bool = False
    # A step's ``prepare`` left this for its ``run``: (the step's options, what it computed).
    prepared: tuple[object, object] | None = None
    # Set by the engine before a ``prepare``: fewer requests hold a worker than there are
    # workers, so the step may compute ahead what it may turn out not to need.
    spare_worker: bool = False

    def check_deadline(self) -> None:
        if self.cancelled:
            raise Cancelled("the caller cancelled the request")
        if self.killed or time.monotonic() >= self.deadline:
            raise DeadlineExceeded("the deadline passed while the image was being processed")

    def watch(self, image: pyvips.Image) -> pyvips.Image:
        """Name the image the next computation derives from; returns it.

        libvips checks an image's kill flag whenever a region of it is computed, so killing the
        input of a step stops whatever the step computes from it (a copy to memory, a smart
        crop, the encode), within a tile. Called before each step, the encode, and after each
        copy to memory (a computation on the copy no longer reads the old input).
        """
        self.killable = image
        if self.killed:
            image.set_kill(True)
        return image

    def watch_side(self, image: pyvips.Image) -> pyvips.Image:
        """Name the image a computation running beside the pipeline (on another worker
        thread) derives from; returns it. ``kill`` stops it as it stops the pipeline's."""
        self.side.append(image)
        if self.killed:
            image.set_kill(True)
        return image

    def kill(self) -> None:
        """Stop libvips mid-computation (from any thread, e.g. the deadline timer); the
        computation then fails with an error that ``check_deadline`` turns into
        DeadlineExceeded or Cancelled. Images watched later are killed as they are named."""
        self.killed = True
        image = self.killable
        if image is not None:
            image.set_kill(True)
        for image in list(self.side):
            image.set_kill(True)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def map(self, transform: Affine) -> None:
        self.transform = self.transform.then(transform)

    def random_access(self, image: pyvips.Image) -> pyvips.Image:
        """The image in a form that may be read more than once (sequential loads may not)."""
        return image if self.in_memory else self.materialise(image)

    def materialise(self, image: pyvips.Image) -> pyvips.Image:
        """Compute the image into memory (killable), and watch the copy from then on."""
        self.in_memory = True
        return self.watch(self.watch(image).copy_memory())

    def degrade(self, reason: str, operation: str, message: str) -> None:
        item = Degradation(reason, operation, message)
        if item not in self.degradations:
            self.degradations.append(item)

    def objects_in(
        self, image: pyvips.Image, classes: frozenset[str] | None
    ) -> list[tuple[DetectedObject, Box]]:
        """Detections of the given classes (None: all) with their boxes in the current image,
        clipped to it; objects cropped away are left out."""
        found = []
        for obj in self.objects or ():
            if classes is not None and obj.class_name not in classes:
                continue
            box = self.transform.box(obj.box).clip(image.width, image.height)
            if box is not None:
                found.append((obj, box))
        return found
