"""Coordinate bookkeeping between the (oriented) source image and the image a step sees.

Every geometric step composes its own mapping into ``StepContext.transform``, so detections found
once can be drawn or blurred after resizes, crops, rotations and flips, and reported back to the
caller in source-image pixels.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Box:
    left: float
    top: float
    width: float
    height: float

    @property
    def right(self) -> float:
        return self.left + self.width

    @property
    def bottom(self) -> float:
        return self.top + self.height

    def clip(self, width: float, height: float) -> Box | None:
        """The part of the box inside a width x height image, or None when nothing is left."""
        left, top = max(0.0, self.left), max(0.0, self.top)
        right, bottom = min(float(width), self.right), min(float(height), self.bottom)
        if right - left < 1 or bottom - top < 1:
            return None
        return Box(left, top, right - left, bottom - top)


@dataclass(frozen=True, slots=True)
class Affine:
    """x' = a*x + b*y + c ; y' = d*x + e*y + f."""

    a: float = 1.0
    b: float = 0.0
    c: float = 0.0
    d: float = 0.0
    e: float = 1.0
    f: float = 0.0

    @staticmethod
    def scale(sx: float, sy: float) -> Affine:
        return Affine(a=sx, e=sy)

    @staticmethod
    def translate(tx: float, ty: float) -> Affine:
        return Affine(c=tx, f=ty)

    @staticmethod
    def rotate_clockwise(angle: int, width: int, height: int) -> Affine:
        """Rotation of a width x height image by 0/90/180/270 degrees clockwise."""
        angle %= 360
        if angle == 90:
            return Affine(a=0, b=-1, c=height, d=1, e=0, f=0)
        if angle == 180:
            return Affine(a=-1, b=0, c=width, d=0, e=-1, f=height)
        if angle == 270:
            return Affine(a=0, b=1, c=0, d=-1, e=0, f=width)
        return Affine()

    @staticmethod
    def flip(horizontal: bool, vertical: bool, width: int, height: int) -> Affine:
        return Affine(
            a=-1.0 if horizontal else 1.0,
            c=float(width) if horizontal else 0.0,
            e=-1.0 if vertical else 1.0,
            f=float(height) if vertical else 0.0,
        )

    def then(self, other: Affine) -> Affine:
        """The mapping that applies self first, then other."""
        return Affine(
            a=other.a * self.a + other.b * self.d,
            b=other.a * self.b + other.b * self.e,
            c=other.a * self.c + other.b * self.f + other.c,
            d=other.d * self.a + other.e * self.d,
            e=other.d * self.b + other.e * self.e,
            f=other.d * self.c + other.e * self.f + other.f,
        )

    def inverse(self) -> Affine:
        det = self.a * self.e - self.b * self.d
        if det == 0:
            raise ValueError("singular transform")
        a, b, d, e = self.e / det, -self.b / det, -self.d / det, self.a / det
        return Affine(
            a=a, b=b, c=-(a * self.c + b * self.f), d=d, e=e, f=-(d * self.c + e * self.f)
        )

    def point(self, x: float, y: float) -> tuple[float, float]:
        return self.a * x + self.b * y + self.c, self.d * x + self.e * y + self.f

    def box(self, box: Box) -> Box:
        """Axis-aligned bounds of the mapped box (exact for scales, shifts, 90° turns, flips)."""
        corners = [self.point(x, y) for x in (box.left, box.right) for y in (box.top, box.bottom)]
        xs, ys = [x for x, _ in corners], [y for _, y in corners]
        return Box(min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))
