"""Local image evidence for a lesion at a point: blob response, contrast-to-noise, position.

Shared by the detector (to rank its candidates) and by ``verify_coordinates`` (to judge a
proposed location). All measurements are in working-image pixels and signed by the modality's
polarity, so "more evidence" is always a larger number.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
from scipy import fft as sp_fft
from scipy import ndimage as ndi

from tools.detection.working import WorkingImage

SQRT2 = float(np.sqrt(2.0))


def sigmas_for(work: WorkingImage) -> tuple[float, ...]:
    """Blob scales (working px) by modality: nodules are small, breast lesions large."""
    side = max(work.image.shape)
    unit = side / 512.0
    if work.modality == "CT":
        base = (1.5, 2.2, 3.2, 4.5, 6.5, 9.0, 13.0)
    elif work.modality == "US":
        base = (5.0, 7.5, 11.0, 16.0, 24.0, 34.0)
    else:
        base = (2.5, 3.6, 5.2, 7.5, 11.0, 16.0, 23.0)
    return tuple(s * unit for s in base)


@dataclass
class ScaleSpace:
    """Scale-normalised Laplacian-of-Gaussian responses, signed so lesions are positive.

    Computed in the Fourier domain from one forward transform of the (reflect-padded) image:
    a Gaussian of σ multiplies the spectrum by exp(-2π²σ²|f|²), the Laplacian by -4π²|f|².
    Large scales then cost the same as small ones (direct convolution grows with σ).
    """

    work: WorkingImage

    @cached_property
    def sigmas(self) -> tuple[float, ...]:
        return sigmas_for(self.work)

    @cached_property
    def _spectrum(self) -> tuple[np.ndarray, np.ndarray, int, tuple[int, int]]:
        pad = int(min(3 * max(self.sigmas), 160))
        rows, cols = self.work.image.shape
        # Pad by reflection (no wrap-around at the borders), up to sizes the FFT likes.
        shape = (sp_fft.next_fast_len(rows + 2 * pad, real=True), sp_fft.next_fast_len(cols + 2 * pad, real=True))
        padded = np.pad(self.work.evidence_image, ((pad, shape[0] - rows - pad), (pad, shape[1] - cols - pad)), mode="reflect")
        fy = sp_fft.fftfreq(shape[0])[:, None]
        fx = sp_fft.rfftfreq(shape[1])[None, :]
        return sp_fft.rfft2(padded, workers=-1), (fy * fy + fx * fx), pad, shape

    def _filtered(self, transfer: np.ndarray) -> np.ndarray:
        spectrum, _, pad, shape = self._spectrum
        rows, cols = self.work.image.shape
        full = sp_fft.irfft2(spectrum * transfer, s=shape, workers=-1)
        return full[pad:pad + rows, pad:pad + cols].astype(np.float32)

    @cached_property
    def stack(self) -> np.ndarray:
        _, f2, _, _ = self._spectrum
        layers = []
        for sigma in self.sigmas:
            # -σ²∇²G_σ: responds positively to bright blobs of radius ≈ σ√2.
            transfer = (sigma * sigma) * (4 * np.pi**2 * f2) * np.exp(-2 * np.pi**2 * sigma**2 * f2)
            layers.append(self._filtered(transfer))
        return self.work.sign * np.stack(layers)

    @cached_property
    def best(self) -> tuple[np.ndarray, np.ndarray]:
        """Max response over scales and the index of the scale that gave it."""
        return self.stack.max(axis=0), self.stack.argmax(axis=0)

    @cached_property
    def noise(self) -> float:
        """Robust noise of the image inside the search mask (MAD of the finest response)."""
        fine = self.stack[0][self.work.search]
        if fine.size == 0:
            return 1e-3
        return float(max(1.4826 * np.median(np.abs(fine - np.median(fine))), 1e-3))

    @cached_property
    def dark_level(self) -> float:
        """Half the typical tissue value in the search mask: air, bone and fluid lie below it."""
        inside = self.work.evidence_image[self.work.search]
        return 0.5 * float(np.median(inside)) if inside.size else 0.0

    @cached_property
    def border_map(self) -> np.ndarray:
        """Distance (working px) from each pixel to the outside of the search mask."""
        return ndi.distance_transform_edt(self.work.search)


@lru_cache(maxsize=64)
def _distance_template(reach: int) -> np.ndarray:
    """Distances from the centre pixel of a (2·reach+1)² window; shared by all candidates."""
    offsets = np.arange(-reach, reach + 1, dtype=np.float32)
    return np.hypot(offsets[None, :], offsets[:, None])


def disk_and_ring(shape: tuple[int, int], x: float, y: float, radius: float,
                  ring_inner: float = 1.5, ring_outer: float = 2.5) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """Boolean disk of ``radius`` and surrounding ring, within a bounding window.

    Centred on the nearest pixel: half a pixel does not change a mean over a disk, and a
    cached distance template makes this cheap enough to run for hundreds of candidates.
    """
    reach = int(radius * ring_outer) + 1
    xi, yi = int(round(x)), int(round(y))
    # Clamped so that a point far outside the image gives an empty window, not a bad slice.
    r0, r1 = min(max(0, yi - reach), shape[0]), max(min(shape[0], yi + reach + 1), 0)
    c0, c1 = min(max(0, xi - reach), shape[1]), max(min(shape[1], xi + reach + 1), 0)
    r1, c1 = max(r1, r0), max(c1, c0)
    distance = _distance_template(reach)[r0 - yi + reach:r1 - yi + reach, c0 - xi + reach:c1 - xi + reach]
    disk = distance <= radius
    ring = (distance > radius * ring_inner) & (distance <= radius * ring_outer)
    return (slice(r0, r1), slice(c0, c1)), disk, ring


@dataclass(frozen=True)
class Evidence:
    """Measurements at one point and scale (working px)."""

    response: float  # scale-normalised LoG at the point, in noise units
    contrast: float  # mean(disk) - mean(ring), signed by polarity, image units [0, 1]
    cnr: float  # contrast / std(ring)
    inside: bool  # within the search mask
    border: float  # distance to the search-mask border, in units of the radius
    dark_ring: float = 0.0  # fraction of the ring darker than half the tissue level (air, bone, fluid)
    level: float = 0.0  # mean inside the disk, image units [0, 1] (not signed)


def measure(space: ScaleSpace, x: float, y: float, sigma: float) -> Evidence:
    """Evidence for a lesion of scale ``sigma`` centred at working (x, y)."""
    work = space.work
    rows, cols = work.image.shape
    xi, yi = int(round(min(max(x, 0), cols - 1))), int(round(min(max(y, 0), rows - 1)))
    level = int(np.argmin([abs(s - sigma) for s in space.sigmas]))
    response = float(space.stack[level, yi, xi]) / space.noise
    radius = max(sigma * SQRT2, 1.0)
    window, disk, ring = disk_and_ring(work.image.shape, x, y, radius)
    patch = work.evidence_image[window]
    inside_values, ring_values = patch[disk], patch[ring]
    level = float(inside_values.mean()) if inside_values.size else 0.0
    if inside_values.size == 0 or ring_values.size < 4:
        contrast, cnr, dark_ring = 0.0, 0.0, 0.0
    else:
        contrast = work.sign * float(inside_values.mean() - np.median(ring_values))
        cnr = contrast / max(float(ring_values.std()), 0.01)
        dark_ring = float(np.count_nonzero(ring_values < space.dark_level)) / ring_values.size
    return Evidence(response=response, contrast=contrast, cnr=cnr, inside=bool(work.search[yi, xi]),
                    border=float(space.border_map[yi, xi]) / radius, dark_ring=dark_ring, level=level)

