"""A bounded in-memory LRU of detections, so the same bytes are sent to Triton once.

Keyed by the SHA-256 of the source bytes, the classes asked for (None: every class) and the
detector's configuration (its models and thresholds, and the detector input's size): any of
them changes the answer. Values are detections in oriented source pixels (the upright image's),
whatever the request's pipeline does afterwards. Only successful detections are stored: an
outage must not be remembered. Thread-safe: worker threads look entries up, the event loop
stores them.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from imagesvc.context import DetectedObject


@dataclass(frozen=True, slots=True)
class CacheKey:
    digest: bytes  # SHA-256 of the source bytes
    classes: frozenset[str] | None  # None: every class
    detector: Hashable  # the detector's configuration identity

    @classmethod
    def of(
        cls, data: bytes | memoryview, classes: frozenset[str] | None, detector: Hashable
    ) -> CacheKey:
        # hashlib releases the GIL on large buffers: run this on a worker thread.
        return cls(hashlib.sha256(data).digest(), classes, detector)

    def first_pass_only(self) -> CacheKey:
        """The key of a thumbnail's detections (`imagesvc.engine.Engine._thumbnail_placement`:
        an output too small to show small faces): the first pass alone, on a camera-size
        source at a coarser input. Kept apart from the complete answer, which serves every
        request."""
        return CacheKey(self.digest, self.classes, ("first pass only", self.detector))


class DetectionCache:
    """At most ``entries`` results; 0 disables the cache (nothing is hashed or stored)."""

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self._items: OrderedDict[CacheKey, tuple[DetectedObject, ...]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.entries > 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: CacheKey) -> tuple[DetectedObject, ...] | None:
        """The detections stored for ``key``; for a class subset, also those of every class,
        filtered (one Triton call for "all" serves each later subset)."""
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                return found
            if key.classes is None:
                return None
            every = CacheKey(key.digest, None, key.detector)
            found = self._items.get(every)
            if found is None:
                return None
            self._items.move_to_end(every)
            return tuple(obj for obj in found if obj.class_name in key.classes)

    def put(self, key: CacheKey, objects: tuple[DetectedObject, ...]) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._items[key] = objects
            self._items.move_to_end(key)
            while len(self._items) > self.entries:
                self._items.popitem(last=False)
