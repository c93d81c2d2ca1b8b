"""The VEEGAN/PacGAN mode-coverage protocol (../shared/PROTOCOLS.md).

Each sample is assigned to its nearest mode (L2). It is high quality (HQ) if it lies within
the dataset's radius of that mode (in the dataset's norm). A mode is captured if it is the
nearest mode of at least one HQ sample. The reverse KL compares the histogram of HQ samples
over modes with the uniform distribution over modes.
"""
from __future__ import annotations

import torch


def nearest_modes(samples: torch.Tensor, modes: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Index of the nearest mode (L2) of every sample, computed in chunks to bound memory."""
    return torch.cat([torch.cdist(part, modes).argmin(dim=1) for part in samples.split(chunk)])


def mode_coverage(samples: torch.Tensor, modes: torch.Tensor, radius: float, hq_norm: str = "l2") -> dict:
    """Score ``samples`` against ``modes``.

    :return: ``modes_captured`` (int), ``hq_percent`` (share of HQ samples, in %),
        ``reverse_kl`` (KL(HQ histogram ‖ uniform), nats; ``None`` when no sample is HQ),
        ``mode_counts`` (HQ samples per mode, a list), ``nearest_counts`` (samples per nearest
        mode, HQ or not: where the generator puts its mass), ``n_modes`` and ``n_samples``.
    """
    samples = samples.detach().float().to(modes.device)
    if not torch.isfinite(samples).all():
        # a diverged generator: nothing it made is near a mode
        nothing = torch.zeros(len(modes), dtype=torch.long)
        return _scores(nothing, nothing, len(samples))
    nearest = nearest_modes(samples, modes)
    offsets = samples - modes[nearest]
    distance = offsets.norm(dim=1) if hq_norm == "l2" else offsets.abs().amax(dim=1)
    high_quality = distance <= radius
    counts = torch.bincount(nearest[high_quality], minlength=len(modes))
    return _scores(counts.cpu(), torch.bincount(nearest, minlength=len(modes)).cpu(), len(samples))


def _scores(counts: torch.Tensor, nearest_counts: torch.Tensor, n_samples: int) -> dict:
    n_hq = int(counts.sum())
    if n_hq:
        share = counts.double() / n_hq
        present = share > 0
        reverse_kl = float((share[present] * (share[present] * len(counts)).log()).sum())
    else:
        reverse_kl = None
    return {
        "modes_captured": int((counts > 0).sum()),
        "n_modes": len(counts),
        "n_samples": n_samples,
        "hq_percent": 100.0 * n_hq / n_samples,
        "reverse_kl": reverse_kl,
        "mode_counts": counts.tolist(),
        "nearest_counts": nearest_counts.tolist(),
    }
