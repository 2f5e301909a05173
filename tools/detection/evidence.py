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
    #: Threads of the Fourier transforms (-1: every core); the numbers do not depend on it. A
    #: search of every slice uses one: on a 2-ms transform, a second thread costs more CPU time
    #: than it saves (median 22 vs 26 ms a 512² slice on two cores).
    workers: int = -1

    @cached_property
    def sigmas(self) -> tuple[float, ...]:
        return sigmas_for(self.work)

    @cached_property
    def _spectrum(self) -> tuple[np.ndarray, int, tuple[int, int]]:
        pad = int(min(3 * max(self.sigmas), 160))
        rows, cols = self.work.image.shape
        # Pad by reflection (no wrap-around at the borders), up to sizes the FFT likes.
        shape = (sp_fft.next_fast_len(rows + 2 * pad, real=True), sp_fft.next_fast_len(cols + 2 * pad, real=True))
        padded = np.pad(self.work.evidence_image, ((pad, shape[0] - rows - pad), (pad, shape[1] - cols - pad)), mode="reflect")
        return sp_fft.rfft2(padded, workers=self.workers), pad, shape

    @cached_property
    def stack(self) -> np.ndarray:
        spectrum, pad, shape = self._spectrum
        rows, cols = self.work.image.shape
        transfers = _log_transfers(shape, self.sigmas)
        # Each level written into its place (float64 -> float32 as ``astype`` rounds), one buffer
        # for the filtered spectra: the same numbers without a copy per level.
        stack = np.empty((len(transfers), rows, cols), dtype=np.float32)
        product = np.empty(spectrum.shape, dtype=np.result_type(spectrum, *transfers))  # complex128, as ``*`` gives
        for layer, transfer in zip(stack, transfers, strict=True):
            np.multiply(spectrum, transfer, out=product)
            layer[...] = sp_fft.irfft2(product, s=shape, workers=self.workers)[pad:pad + rows, pad:pad + cols]
        if self.work.sign < 0:  # signed so that lesions are positive (negation is exact)
            np.negative(stack, out=stack)
        return stack

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
    def search_window(self) -> tuple[slice, slice]:
        """The search mask's bounding box grown by a pixel (within the image): every pixel of
        the mask, with its eight neighbours; the whole image when the mask is empty."""
        search = self.work.search
        rows, cols = np.nonzero(search.any(axis=1))[0], np.nonzero(search.any(axis=0))[0]
        if rows.size == 0:
            return slice(0, search.shape[0]), slice(0, search.shape[1])
        return (slice(max(int(rows[0]) - 1, 0), int(rows[-1]) + 2),
                slice(max(int(cols[0]) - 1, 0), int(cols[-1]) + 2))

    @cached_property
    def border_map(self) -> np.ndarray:
        """Distance (working px) from each pixel to the outside of the search mask.

        Computed within ``search_window`` only: its edge is outside the mask wherever it is not
        the image's, so the nearest outside pixel of every pixel in it lies in it too, and the
        distance is the same as over the whole image (zero elsewhere, which is outside the mask).
        """
        search = self.work.search
        window = self.search_window
        if search[window].all():  # nothing outside the mask in the window: it is the whole image
            return ndi.distance_transform_edt(search)
        border = np.zeros(search.shape, dtype=np.float64)
        border[window] = ndi.distance_transform_edt(search[window])
        return border


@lru_cache(maxsize=4)
def _frequencies_squared(shape: tuple[int, int]) -> np.ndarray:
    """|f|² on the grid of ``rfft2`` of an image of ``shape`` (cycles per px)."""
    fy = sp_fft.fftfreq(shape[0])[:, None]
    fx = sp_fft.rfftfreq(shape[1])[None, :]
    frequencies = fy * fy + fx * fx
    frequencies.setflags(write=False)
    return frequencies


@lru_cache(maxsize=4)
def _log_transfers(shape: tuple[int, int], sigmas: tuple[float, ...]) -> tuple[np.ndarray, ...]:
    """The transfer function of -σ²∇²G_σ for each σ on the ``rfft2`` grid of ``shape``: the same
    for every slice of a series, so computed once for it (about 5 ms a slice at 512²)."""
    f2 = _frequencies_squared(shape)
    transfers = []
    for sigma in sigmas:
        # -σ²∇²G_σ: responds positively to bright blobs of radius ≈ σ√2.
        transfer = (sigma * sigma) * (4 * np.pi**2 * f2) * np.exp(-2 * np.pi**2 * sigma**2 * f2)
        transfer.setflags(write=False)
        transfers.append(transfer)
    return tuple(transfers)


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
    inside_mean = inside_values.mean() if inside_values.size else None
    level = float(inside_mean) if inside_mean is not None else 0.0
    if inside_mean is None or ring_values.size < 4:
        contrast, cnr, dark_ring = 0.0, 0.0, 0.0
    else:
        contrast = work.sign * float(inside_mean - np.median(ring_values))
        cnr = contrast / max(float(ring_values.std()), 0.01)
        dark_ring = float(np.count_nonzero(ring_values < space.dark_level)) / ring_values.size
    return Evidence(response=response, contrast=contrast, cnr=cnr, inside=bool(work.search[yi, xi]),
                    border=float(space.border_map[yi, xi]) / radius, dark_ring=dark_ring, level=level)

