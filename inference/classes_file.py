"""Classes files: the class names of a detection model, one per line, in the model's output
order, each optionally followed by ``=weight`` (imgproxy Pro's ``IMGPROXY_OBJECT_DETECTION_CLASSES``
format, e.g. ``person=2``). Blank lines and lines starting with ``#`` are skipped; names are
lower-cased and stripped."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ClassEntry:
    name: str
    weight: float | None  # None: no weight given (the service uses 1)


def parse_classes_file(text: str, *, source: str = "classes file") -> tuple[ClassEntry, ...]:
    """The entries of a classes file, in order. Raises ValueError naming ``source`` and the line
    for an empty name, a duplicate name or a weight that is not a finite number > 0."""
    entries: list[ClassEntry] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, weight_text = line.partition("=")
        name = name.strip().lower()
        if not name:
            raise ValueError(f"{source}:{number}: empty class name")
        if name in seen:
            raise ValueError(f"{source}:{number}: class {name!r} listed twice")
        weight = None
        if sep:
            try:
                weight = float(weight_text)
            except ValueError:
                raise ValueError(
                    f"{source}:{number}: weight {weight_text.strip()!r} is not a number"
                ) from None
            if not math.isfinite(weight) or weight <= 0:
                raise ValueError(f"{source}:{number}: weight must be a finite number > 0")
        seen.add(name)
        entries.append(ClassEntry(name, weight))
    return tuple(entries)
