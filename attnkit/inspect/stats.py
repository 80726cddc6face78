"""Statistics of every head's attention, exact at any length: entropy, sink, distance profile,
attention received, largest weight — streamed over tiles of query rows from ``q``, ``k`` and lse.

``attention_stats(cap)`` never holds more than one tile of about ``CELL_BUDGET`` probabilities
per head group (never a head's ``Sq × Sk`` pattern). The result keeps sums and counts, so the
statistics of many captures (texts of a data set, ranks of a distributed run) add up exactly:
``a + b`` or ``AttentionStats.combine([...])``.

Definitions (every real query of every sequence counts once; positions are token indices in the
captured sequence):

- ``entropy``: mean over queries of ``-Σ_j p_j log p_j`` (nats);
- ``sink``: mean weight on key position 0;
- ``distance``: mean attention mass by query–key distance ``|i - j|`` in log2 bins (bin 0:
  distance 0; bin ``b >= 1``: distances ``2^(b-1) … 2^b - 1``), edges in ``distance_edges``;
- ``max_weight``: mean over queries of the largest weight;
- ``received``: per sequence, the total attention each key receives from the real queries
  (column sums).

A *real* query is one that sees at least one key and, when the call's mask is key padding of a
self-attention (``Sq == Sk``), is not itself a padding position.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch.nn import functional as F

from attnkit.errors import AttnkitError, InputTypeError, OutOfRangeError
from attnkit.inspect.captured import Captured
from attnkit.kernels.api import pattern as _pattern
from attnkit.kernels.masks import MaskSpec

__all__ = ["AttentionStats", "attention_stats", "sequence_stats", "real_queries",
           "distance_edges", "bins_for", "STATISTICS", "CELL_BUDGET"]

CELL_BUDGET = 2 * 1024 * 1024
"""Probabilities computed at once (all heads of one tile together): 8 MB of float32, whatever the
sequence length; the tile's working memory is a small multiple of it."""

STATISTICS = {
    "entropy": "mean over queries of -Σ p·log p over the keys (nats)",
    "sink": "mean weight on key position 0",
    "max_weight": "mean over queries of the largest weight",
    "distance": "mean attention mass by query–key distance |i - j| in log2 bins (bin 0: "
                "distance 0; bin b >= 1: distances 2^(b-1) … 2^b - 1)",
    "received": "per sequence, the total attention each key receives (column sums)",
}
"""Each statistic's definition, in words (stats.json and the docs quote them)."""


def bins_for(n_positions: int) -> int:
    """How many distance bins cover every distance in a sequence of ``n_positions``."""
    return max(n_positions - 1, 0).bit_length() + 1


def distance_edges(n_bins: int) -> torch.Tensor:
    """``(n_bins + 1,)`` long: bin ``b`` holds distances ``edges[b] <= d < edges[b + 1]``
    (``[0, 1, 2, 4, 8, …]``)."""
    return torch.tensor([0] + [2 ** b for b in range(n_bins)], dtype=torch.long)


_SUMS = ("entropy_sum", "sink_sum", "max_weight_sum", "distance_sum")


@dataclass(frozen=True)
class AttentionStats:
    """Sums and counts of every head's statistics over the real queries seen so far.

    ``queries (L, H)``: how many real queries were counted for each head; ``entropy_sum``,
    ``sink_sum``, ``max_weight_sum`` ``(L, H)`` and ``distance_sum (L, H, n_bins)`` their sums
    (float64); ``received (L, H, B, Sk)`` float64 per sequence (None once statistics of sequences
    of other lengths were combined without it, or after ``without_received``). The means are
    the properties ``entropy``, ``sink``, ``max_weight`` and ``distance`` (0 for a head that saw
    no real query, never NaN). ``layers``/``heads`` number the rows and columns as the model
    does.
    """

    layers: list[int]
    heads: list[int]
    queries: torch.Tensor
    entropy_sum: torch.Tensor
    sink_sum: torch.Tensor
    max_weight_sum: torch.Tensor
    distance_sum: torch.Tensor
    sequences: int
    received: torch.Tensor | None = None

    # ---- the means -------------------------------------------------------------------------

    def _mean(self, total: torch.Tensor) -> torch.Tensor:
        count = self.queries.reshape(self.queries.shape + (1,) * (total.dim() - 2))
        return torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))

    @property
    def entropy(self) -> torch.Tensor:
        """``(L, H)`` float64: mean over real queries of ``-Σ p log p`` (nats)."""
        return self._mean(self.entropy_sum)

    @property
    def sink(self) -> torch.Tensor:
        """``(L, H)`` float64: mean weight on key position 0."""
        return self._mean(self.sink_sum)

    @property
    def max_weight(self) -> torch.Tensor:
        """``(L, H)`` float64: mean over real queries of the largest weight."""
        return self._mean(self.max_weight_sum)

    @property
    def distance(self) -> torch.Tensor:
        """``(L, H, n_bins)`` float64: mean mass per query–key distance bin (sums to 1 over bins
        for a head that saw real queries); bins in ``distance_edges``."""
        return self._mean(self.distance_sum)

    @property
    def n_bins(self) -> int:
        return self.distance_sum.shape[-1]

    @property
    def distance_edges(self) -> torch.Tensor:
        """``(n_bins + 1,)``: bin ``b`` holds distances ``edges[b] <= |i - j| < edges[b + 1]``."""
        return distance_edges(self.n_bins)

    # ---- combining -------------------------------------------------------------------------

    def with_bins(self, n_bins: int) -> AttentionStats:
        """The same statistics with ``n_bins`` distance bins (more bins are empty)."""
        if n_bins < self.n_bins:
            raise AttnkitError(f"cannot drop distance bins: these statistics have {self.n_bins}, "
                               f"asked for {n_bins}")
        padded = F.pad(self.distance_sum, (0, n_bins - self.n_bins))
        return _replace(self, distance_sum=padded)

    def without_received(self) -> AttentionStats:
        """The same statistics without the per-sequence ``received`` (which grows with data)."""
        return _replace(self, received=None)

    def __add__(self, other: AttentionStats) -> AttentionStats:
        if not isinstance(other, AttentionStats):
            return NotImplemented
        if (self.layers, self.heads) != (other.layers, other.heads):
            raise AttnkitError(f"cannot combine statistics of layers {self.layers}, heads "
                               f"{self.heads} with those of layers {other.layers}, heads "
                               f"{other.heads}; compute both over the same layers and heads")
        n = max(self.n_bins, other.n_bins)
        a, b = self.with_bins(n), other.with_bins(n)
        received = None
        if a.received is not None and b.received is not None:
            width = max(a.received.shape[-1], b.received.shape[-1])
            received = torch.cat([F.pad(a.received, (0, width - a.received.shape[-1])),
                                  F.pad(b.received, (0, width - b.received.shape[-1]))], dim=2)
        sums = {name: getattr(a, name) + getattr(b, name) for name in ("queries", *_SUMS)}
        return AttentionStats(a.layers, a.heads, sequences=a.sequences + b.sequences,
                              received=received, **sums)

    @classmethod
    def combine(cls, parts: Iterable[AttentionStats]) -> AttentionStats:
        """The statistics of all ``parts`` together (sums and counts added)."""
        parts = list(parts)
        if not parts:
            raise AttnkitError("nothing to combine: give at least one AttentionStats")
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return total

    # ---- reading and writing ---------------------------------------------------------------

    def to_dict(self, means: bool = True) -> dict[str, Any]:
        """JSON-ready: layers, heads, the sums and counts (float64, exact through JSON) and, with
        ``means``, the means and bin edges. ``received`` is left out (it is per sequence)."""
        out: dict[str, Any] = {"layers": list(self.layers), "heads": list(self.heads),
                               "sequences": self.sequences, "queries": self.queries.tolist()}
        out.update({name: getattr(self, name).tolist() for name in _SUMS})
        if means:
            out["distance_edges"] = self.distance_edges.tolist()
            out["means"] = {name: getattr(self, name).tolist()
                            for name in ("entropy", "sink", "max_weight", "distance")}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttentionStats:
        """The statistics written by ``to_dict`` (its means are recomputed, not read)."""
        try:
            tensors = {name: torch.tensor(data[name], dtype=torch.float64)
                       for name in ("queries", *_SUMS)}
            stats = cls(list(data["layers"]), list(data["heads"]),
                        sequences=int(data["sequences"]), **tensors)
        except (KeyError, TypeError, ValueError) as err:
            raise AttnkitError(f"not statistics written by AttentionStats.to_dict: {err}") \
                from None
        lh = (len(stats.layers), len(stats.heads))
        if any(getattr(stats, n).shape[:2] != lh for n in ("queries", *_SUMS)) or \
                stats.distance_sum.dim() != 3:
            raise AttnkitError(f"statistics of {lh[0]} layers x {lh[1]} heads hold tensors of "
                               "other shapes; the file is damaged")
        return stats

    def rows(self) -> list[dict[str, Any]]:
        """One dict per head: layer, head, queries, entropy, sink, max_weight and the share of
        each distance bin (``distance_<lo>-<hi>``)."""
        edges = self.distance_edges.tolist()
        names = [f"distance_{lo}" if hi - lo == 1 else f"distance_{lo}-{hi - 1}"
                 for lo, hi in zip(edges[:-1], edges[1:])]
        out = []
        for a, layer in enumerate(self.layers):
            for b, head in enumerate(self.heads):
                row = {"layer": layer, "head": head, "queries": int(self.queries[a, b]),
                       "entropy": float(self.entropy[a, b]), "sink": float(self.sink[a, b]),
                       "max_weight": float(self.max_weight[a, b])}
                row.update({n: float(v) for n, v in zip(names, self.distance[a, b].tolist())})
                out.append(row)
        return out


def _replace(stats: AttentionStats, **changes: Any) -> AttentionStats:
    values = {f.name: getattr(stats, f.name) for f in fields(stats)}
    return AttentionStats(**{**values, **changes})


# ---- computing them ---------------------------------------------------------------------------


def attention_stats(cap: Captured, layers: Sequence[int] | None = None,
                    heads: Sequence[int] | None = None) -> AttentionStats:
    """Exact statistics of every head of ``cap`` (a capture, live or loaded), streamed over tiles.

    Args:
        cap: what ``attnkit.capture`` recorded.
        layers, heads: the model's layer and head numbers to measure (None: every captured one).

    Returns:
        ``AttentionStats`` with ``entropy``, ``sink``, ``max_weight`` ``(L, H)``, ``distance
        (L, H, n_bins)`` averaged over every real query of every sequence, and ``received
        (L, H, B, Sk)``. Equal to the same numbers computed from eager ``output_attentions``
        (float32 rounding); memory: one tile of about ``CELL_BUDGET`` probabilities at a time.
    """
    return AttentionStats.combine(sequence_stats(cap, layers, heads))


def sequence_stats(cap: Captured, layers: Sequence[int] | None = None,
                   heads: Sequence[int] | None = None) -> list[AttentionStats]:
    """``attention_stats`` of each sequence of ``cap`` on its own (``received (L, H, 1, Sk)``):
    what a data set keeps per text, so that a rerun can skip it."""
    if not isinstance(cap, Captured):
        raise InputTypeError(f"attention_stats takes a capture (attnkit.capture(...)); got "
                             f"{type(cap).__name__}")
    layers = _choose("layer", layers, cap.layers)
    heads = _choose("head", heads, cap.heads)
    sq, sk = cap.queries(layers[0]).shape[2], cap.keys(layers[0]).shape[2]
    n_bins = bins_for(max(sq, sk))
    out = []
    for batch in range(cap.batch_size):
        parts = [_one_sequence(*cap.pattern_inputs(layer, heads, batch), n_bins)
                 for layer in layers]
        sums = {name: torch.stack([part[name] for part in parts])  # (L, H, …)
                for name in ("queries", *_SUMS)}
        received = torch.stack([part["received"] for part in parts])[:, :, None]  # (L, H, 1, Sk)
        out.append(AttentionStats(list(layers), list(heads), sequences=1, received=received,
                                  **sums))
    return out


def _choose(what: str, chosen: Sequence[int] | None, captured: list[int]) -> list[int]:
    if chosen is None:
        if not captured:
            raise AttnkitError("the capture holds nothing: run the model inside "
                               "`with attnkit.capture(model) as cap:` first")
        return list(captured)
    if isinstance(chosen, (int, str)) or not hasattr(chosen, "__iter__"):
        raise InputTypeError(f"{what}s must be a list of the model's {what} numbers or None; "
                             f"got {chosen!r}")
    chosen = list(chosen)
    bad = [x for x in chosen if isinstance(x, bool) or not isinstance(x, int)
           or x not in captured]
    if bad or not chosen or len(set(chosen)) != len(chosen):
        raise OutOfRangeError(f"{what}s {chosen!r}: give distinct captured {what}s (captured: "
                              f"{captured})")
    return chosen


def real_queries(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor,
                 options: dict[str, Any]) -> torch.Tensor:
    """``(h, Sq)`` bool: the queries that count — they see a key, and under key padding of a
    self-attention they are not padding themselves (``q (1, h, Sq, D)``, lse ``(1, h, Sq)``)."""
    real = torch.isfinite(lse[0])  # (h, Sq)
    mask = options.get("mask")  # (1, h|1, Sq|1, Sk|1)
    sq, sk = q.shape[2], k.shape[2]
    if mask is not None and mask.shape[2] == 1 and mask.shape[3] == sk and sq == sk:
        real = real & mask[0, :, 0, :].to(real.device)  # padding positions are no queries
    return real


def _one_sequence(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, opts: dict[str, Any],
                  n_bins: int) -> dict[str, torch.Tensor]:
    """Every statistic's sums for one sequence: q ``(1, h, Sq, D)``, k ``(1, h, Sk, D)``,
    lse ``(1, h, Sq)``, streamed over tiles of query rows."""
    h, sq, sk = q.shape[1], q.shape[2], k.shape[2]
    spec = MaskSpec(sq, sk, h, h, causal=bool(opts.get("causal")), window=opts.get("window"))
    real = real_queries(q, k, lse, opts).to(torch.float32)  # (h, Sq)
    out = {"queries": real.double().sum(-1)}
    out.update({name: torch.zeros(h, dtype=torch.float64) for name in _SUMS[:3]})
    out["distance_sum"] = torch.zeros(h, n_bins, dtype=torch.float64)
    out["received"] = torch.zeros(h, sk, dtype=torch.float64)
    reach = torch.tensor([2 ** b - 1 for b in range(n_bins)])  # (n_bins,) widest distance of bin
    rows = max(1, CELL_BUDGET // max(1, h * sk))
    for r0 in range(0, sq, rows):
        r1 = min(r0 + rows, sq)
        c0, c1 = spec.key_range(r0, r1)  # keys some query of the tile may see
        weight = real[:, r0:r1]  # (h, R) 1 for a real query
        if c1 <= c0 or not bool(weight.any()):
            continue
        p = _pattern(q, k, lse, rows=slice(r0, r1), cols=slice(c0, c1), **opts)[0]  # (h, R, C)
        out["entropy_sum"] += (-torch.xlogy(p, p).sum(-1) * weight).sum(-1, dtype=torch.float64)
        out["max_weight_sum"] += (p.amax(-1) * weight).sum(-1, dtype=torch.float64)
        if c0 == 0:
            out["sink_sum"] += (p[..., 0] * weight).sum(-1, dtype=torch.float64)
        out["received"][:, c0:c1] += torch.einsum("hr,hrc->hc", weight, p).double()
        out["distance_sum"] += _distance_mass(p, weight, r0, r1, c0, sk - sq, reach)
    return out


def _distance_mass(p: torch.Tensor, weight: torch.Tensor, r0: int, r1: int, c0: int,
                   offset: int, reach: torch.Tensor) -> torch.Tensor:
    """``(h, n_bins)``: the tile's real-query mass per distance bin. ``p (h, R, C)`` covers
    queries ``r0..r1`` (key position ``row + offset``) and keys ``c0..``.

    Prefix sums along each row give the mass within distance ``t`` of the query,
    ``F(pos + t + 1) - F(pos - t)``; a bin is the difference of two such masses."""
    C = p.shape[-1]
    prefix = F.pad(p.cumsum(-1, dtype=torch.float64), (1, 0))  # (h, R, C + 1): F(x) = Σ_{j<x}
    pos = torch.arange(r0, r1) + offset - c0  # (R,) each query's position among the tile's keys
    hi = (pos[:, None] + reach[None] + 1).clamp(0, C)  # (R, n_bins)
    lo = (pos[:, None] - reach[None]).clamp(0, C)  # (R, n_bins)
    expand = (p.shape[0], *hi.shape)
    within = prefix.gather(-1, hi.expand(expand)) - prefix.gather(-1, lo.expand(expand))
    per_bin = torch.diff(within, dim=-1, prepend=torch.zeros_like(within[..., :1]))
    return (per_bin * weight.double()[..., None]).sum(1)  # (h, n_bins)
