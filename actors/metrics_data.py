"""The metrics' data structures: log-bucket histograms, the series rings, bounded label values.

Apart from the MetricsActor (actors/metrics.py) so the arithmetic (buckets, quantiles, ring slots) reads
and tests on its own, without the events that feed it or the exposition that renders it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from ..protocols.text import wire_safe

NONE = "none"  # label for a missing model/category (unpinned task, uncategorised)
OTHER = "other"  # label for values past the cardinality cap
QUANTILES = (0.5, 0.95, 0.99)


# ---- histograms ----------------------------------------------------------------------------------


class LogHistogram:
    """Counts in fixed buckets with upper bounds 2**(k/4) s, k in [K_MIN, K_MAX]; O(1) observe.

    Bucket 0 holds everything ≤ 2**(K_MIN/4) (≈ 1 ms); the last holds everything above 2**(K_MAX/4)
    (≈ 36 h). A quantile is interpolated geometrically inside its bucket and clamped to the observed
    min/max, so its relative error is below one bucket width (2**0.25 ≈ 19 %, typically half that).
    """

    PER_OCTAVE = 4
    K_MIN = -40
    K_MAX = 68
    N = K_MAX - K_MIN + 1  # finite buckets; index N is the overflow bucket

    __slots__ = ("count", "counts", "max", "min", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (self.N + 1)
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    @classmethod
    def index(cls, value: float) -> int:
        if value <= 2.0 ** (cls.K_MIN / cls.PER_OCTAVE):
            return 0
        k = math.ceil(math.log2(value) * cls.PER_OCTAVE - 1e-9)
        return min(max(k - cls.K_MIN, 0), cls.N)

    @classmethod
    def upper(cls, index: int) -> float:
        return math.inf if index >= cls.N else 2.0 ** ((index + cls.K_MIN) / cls.PER_OCTAVE)

    def observe(self, value: float) -> int:
        value = max(0.0, float(value))
        i = self.index(value)
        self.counts[i] += 1
        self.count += 1
        self.sum += value
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        return i

    def quantile(self, q: float) -> float | None:
        return _quantile(enumerate(self.counts), self.count, q, self.min, self.max)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"count": self.count}
        if self.count:
            out.update(mean=self.sum / self.count, min=self.min, max=self.max)
            out.update({f"p{round(q * 100)}": self.quantile(q) for q in QUANTILES})
        else:
            out.update({f"p{round(q * 100)}": None for q in QUANTILES})
        return out

    def cumulative(self, bounds: Iterable[int]) -> list[tuple[str, float]]:
        """Prometheus buckets: (le, cumulative count) at the given bucket indexes, then +Inf."""
        out: list[tuple[str, float]] = []
        running, upto = 0, 0
        for i in bounds:
            while upto <= i:
                running += self.counts[upto]
                upto += 1
            out.append((repr(self.upper(i)), float(running)))
        out.append(("+Inf", float(self.count)))
        return out


def _quantile(items: Iterable[tuple[int, int]], total: int, q: float, lo: float, hi: float) -> float | None:
    """Walk (bucket index, count) pairs in index order to the q-quantile."""
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, n in items:
        if n <= 0:
            continue
        if seen + n >= rank:
            upper = LogHistogram.upper(i)
            lower = LogHistogram.upper(i - 1) if i > 0 else 0.0
            frac = (rank - seen) / n
            if i == 0 or math.isinf(upper):
                value = lower + (min(upper, hi) - lower) * frac
            else:
                value = lower * (upper / lower) ** frac
            return min(max(value, lo), hi)
        seen += n
    return hi


def sparse_quantiles(sparse: Mapping[int, int]) -> dict[str, float | None]:
    total = sum(sparse.values())
    if not total:
        return {f"p{round(q * 100)}": None for q in QUANTILES}
    items = sorted(sparse.items())
    lo = LogHistogram.upper(items[0][0] - 1) if items[0][0] > 0 else 0.0
    hi = LogHistogram.upper(items[-1][0])
    if math.isinf(hi):
        hi = LogHistogram.upper(LogHistogram.N - 1) * 2
    return {f"p{round(q * 100)}": _quantile(items, total, q, lo, hi) for q in QUANTILES}


# Prometheus exposition uses every 4th internal bound (powers of two, 1/16 s .. 9.1 h): exact counts.
PROM_BOUNDS = tuple(LogHistogram.PER_OCTAVE * k - LogHistogram.K_MIN for k in range(-4, 16))


# ---- time series ---------------------------------------------------------------------------------


class Slot:
    """One resolution step of the series: event counts, sparse histograms, summed gauge samples."""

    __slots__ = ("completed", "cost", "failed", "gauges", "key", "run", "samples", "wait")

    def __init__(self, key: int) -> None:
        self.key = key
        self.completed = 0
        self.failed = 0
        self.cost: dict[str, float] = {}
        self.wait: dict[int, int] = {}
        self.run: dict[int, int] = {}
        self.gauges: dict[str, float] = {}
        self.samples = 0


class Ring:
    def __init__(self, size: int, resolution: int) -> None:
        self.size = size
        self.resolution = resolution
        self.slots: list[Slot | None] = [None] * size

    def at(self, t: float) -> Slot:
        key = math.floor(t / self.resolution)
        slot = self.slots[key % self.size]
        if slot is None or slot.key != key:
            slot = self.slots[key % self.size] = Slot(key)
        return slot

    def get(self, key: int) -> Slot | None:
        slot = self.slots[key % self.size]
        return slot if slot is not None and slot.key == key else None


class Bounded:
    """Label values with a cardinality cap: past `cap` distinct values, new ones become "other"."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.seen: set[str] = set()

    def __call__(self, value: Any) -> str:
        if value is None or value == "":
            return NONE
        text = wire_safe(str(value)[:64])  # the exposition is UTF-8: a lone surrogate would fail it
        if text in self.seen:
            return text
        if len(self.seen) >= self.cap:
            return OTHER
        self.seen.add(text)
        return text


class TaskTrack:
    __slots__ = ("category", "model", "ready_at", "started", "state")

    def __init__(self, state: str, ready_at: float | None, model: str, category: str) -> None:
        self.state = state
        self.ready_at = ready_at
        self.started: float | None = None
        self.model = model
        self.category = category


def num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) and value >= 0 else None
