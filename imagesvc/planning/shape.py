"""The shape of an image as planning sees it: size, bands and sample size, no pixels."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Shape:
    width: int
    height: int
    bands: int  # colour (1 or 3) plus alpha, after vips.normalise
    sample_bytes: int  # 1 (8-bit) or 2 (16-bit)

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def megapixels(self) -> float:
        return self.pixels / 1e6

    @property
    def has_alpha(self) -> bool:
        return self.bands in (2, 4)

    @property
    def nbytes(self) -> int:
        """Bytes of the image held in memory (a libvips memory image)."""
        return self.pixels * self.bands * self.sample_bytes

    def sized(self, width: int, height: int) -> Shape:
        return replace(self, width=width, height=height)

    def turned(self) -> Shape:
        return replace(self, width=self.height, height=self.width)

    def with_bands(self, bands: int) -> Shape:
        return replace(self, bands=bands)

    @classmethod
    def of(cls, image) -> Shape:
        """The shape of a (normalised) pyvips image."""
        return cls(image.width, image.height, image.bands, 2 if image.format == "ushort" else 1)
