"""Images of one split, of one size or of several, kept in one flat pixel buffer.

A split may mix image sizes (per-image COLMAP cameras, nerfstudio's per-frame ``w``/``h``, photos from two
phones). Its pixels are stored image after image, each row by row, with each image's width and height: no padding,
and a pixel has one flat index, which is what training draws (``locate`` maps it back to image, column and row).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class Images:
    """N images [H_i, W_i, *C] as one buffer ``pixels`` [sum of H_i W_i, *C] with ``widths`` and ``heights`` [N].

    ``images[i]`` is image ``i`` as a [H, W, *C] view of the buffer; ``stacked()`` gives all of them as one
    [N, H, W, *C] view where they share one size.
    """

    def __init__(self, pixels: torch.Tensor, widths: torch.Tensor, heights: torch.Tensor):
        self.pixels, self.widths, self.heights = pixels, widths.long(), heights.long()
        counts = self.widths * self.heights
        self.offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])  # [N + 1]: where each image starts
        if pixels.shape[0] != int(self.offsets[-1]):
            raise ValueError(f"{pixels.shape[0]} pixels for images holding {int(self.offsets[-1])}")
        # one size for all (the usual case): a flat index splits by division, without a search
        self.uniform = len(counts) > 0 and bool((self.widths == self.widths[0]).all() and
                                                (self.heights == self.heights[0]).all())

    @classmethod
    def empty(cls, sizes: Sequence[tuple[int, int]], channels: tuple[int, ...], dtype: torch.dtype) -> "Images":
        """Uninitialised images of ``sizes`` (width, height), to be filled in place (``images[i][...] = ...``)."""
        widths, heights = (torch.tensor([s[k] for s in sizes], dtype=torch.long).reshape(-1) for k in (0, 1))
        return cls(torch.empty(int((widths * heights).sum()), *channels, dtype=dtype), widths, heights)

    @classmethod
    def stack(cls, images: Sequence[torch.Tensor]) -> "Images":
        """Images [H_i, W_i, *C] (of any sizes) copied into one buffer."""
        pixels = torch.cat([im.reshape(-1, *im.shape[2:]) for im in images])
        return cls(pixels, torch.tensor([im.shape[1] for im in images]), torch.tensor([im.shape[0] for im in images]))

    @classmethod
    def cat(cls, parts: Sequence["Images"]) -> "Images":
        """The images of ``parts``, one after the other."""
        return cls(torch.cat([p.pixels for p in parts]), torch.cat([p.widths for p in parts]),
                   torch.cat([p.heights for p in parts]))

    def __len__(self) -> int:
        return len(self.widths)

    def __getitem__(self, i: int) -> torch.Tensor:
        """Image ``i`` as a [H, W, *C] view of the buffer."""
        i = range(len(self))[i]  # negative indices; IndexError past the end
        w, h = self.size(i)
        start = int(self.offsets[i])
        return self.pixels[start:start + w * h].view(h, w, *self.pixels.shape[1:])

    def size(self, i: int) -> tuple[int, int]:
        """(width, height) of image ``i``."""
        return int(self.widths[i]), int(self.heights[i])

    def stacked(self) -> torch.Tensor:
        """All images as one [N, H, W, *C] view; ValueError where their sizes differ."""
        if not self.uniform:
            raise ValueError("images of different sizes do not stack")
        return self.pixels.view(len(self), int(self.heights[0]), int(self.widths[0]), *self.pixels.shape[1:])

    def locate(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image, column and row (int64) of flat pixel indices ``idx``."""
        if self.uniform:
            w, count = self.widths[0], self.widths[0] * self.heights[0]
            image, rest = idx // count, idx % count
        else:
            image = torch.searchsorted(self.offsets[1:], idx, right=True)
            w, rest = self.widths[image], idx - self.offsets[image]
        return image, rest % w, rest // w

    def flat(self, image: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Flat pixel indices of column ``x``, row ``y`` of images ``image`` (int64): the inverse of ``locate``."""
        return self.offsets[image] + y * self.widths[image] + x
