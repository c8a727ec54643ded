"""Confidence intervals: Wilson score intervals for proportions, seeded percentile bootstrap for means.

Proportions (agreement, accuracy, worst-case accuracy) are counts of images, so their interval is the Wilson
score interval, which stays inside [0, 1] and behaves at 0 and 1. Mean errors are means of skewed per-image
values; their interval is a percentile bootstrap over the images (the per-image records), with a fixed seed so
that a result is reproducible.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import numpy as np

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
WILSON = "wilson"
BOOTSTRAP = f"bootstrap-percentile ({BOOTSTRAP_RESAMPLES} resamples of the images, seed {BOOTSTRAP_SEED})"


def half_width(value: Any, low: Any, high: Any) -> float | None:
    """The larger half-width of the interval ``[low, high]`` around ``value``: what a ``±`` shows (None when
    one of them is missing or not finite, or the interval is empty)."""
    try:
        v, lo, hi = float(value), float(low), float(high)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(t) for t in (v, lo, hi)) or hi - lo <= 0:
        return None
    return max(hi - v, v - lo, 0.0)


def z_value(confidence: float) -> float:
    """The two-sided normal quantile of ``confidence`` (1.96 for 0.95)."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(successes: np.ndarray | float, n: float, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of ``successes / n`` (elementwise); ``(nan, nan)`` when ``n`` is 0."""
    k = np.asarray(successes, dtype=np.float64)
    if n <= 0:
        nan = np.full_like(k, np.nan)
        return nan, nan
    z = z_value(confidence)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(np.clip(p * (1 - p) / n + z * z / (4 * n * n), 0, None))
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


def bootstrap_mean(values: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the column means of ``values`` ``(N, G)``: the same resampled images for
    every column, so the intervals of two elements come from one set of resamples.

    A resample is a multinomial count of each image; its means are one matrix product, in blocks of resamples
    so that memory stays at about 2 MB per block whatever the number of images.
    """
    v = np.asarray(values, dtype=np.float64)
    n = v.shape[0]
    if n == 0:
        nan = np.full(v.shape[1:], np.nan)
        return nan, nan
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    block = max(1, min(BOOTSTRAP_RESAMPLES, (1 << 18) // n))  # ~2 MB of int64 counts per block
    means = []
    for start in range(0, BOOTSTRAP_RESAMPLES, block):
        rows = min(block, BOOTSTRAP_RESAMPLES - start)
        picks = rng.integers(0, n, (rows, n)) + n * np.arange(rows)[:, None]
        counts = np.bincount(picks.ravel(), minlength=rows * n).reshape(rows, n)  # times each image is drawn
        means.append(counts @ v.reshape(n, -1) / n)
    flat = np.concatenate(means).reshape(BOOTSTRAP_RESAMPLES, *v.shape[1:])
    alpha = (1 - confidence) / 2
    return np.quantile(flat, alpha, axis=0), np.quantile(flat, 1 - alpha, axis=0)
