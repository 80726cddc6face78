"""Why a key answers a query: the notes' ``K_i · Q_j`` for one cell of a real model's pattern.

``cap.why(layer, head, query, key)`` returns a ``Why``: the head's query and key vectors, their
per-dimension products, the dot product, the scale, the bias, the score, where the softmax puts
the cell among the query's other keys, and — for models with rotary position embeddings — the
products grouped by the pairs of dimensions rotated together. Computed in float64 from the
captured ``q``, ``k`` and log-sum-exp, the same inputs every pattern is recomputed from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from attnkit.errors import AttnkitError, OutOfRangeError
from attnkit.inspect.rotary import Rotary

if TYPE_CHECKING:
    from attnkit.inspect.captured import Captured

__all__ = ["Why", "Competitor", "Band", "why"]

TOP = 8  # competing keys reported by default


@dataclass(frozen=True)
class Competitor:
    """One of the keys the query weighs: position, token, score and weight."""

    key: int
    token: str | None
    score: float
    weight: float


@dataclass(frozen=True)
class Band:
    """One rotary frequency band: the pair of dims ``dims`` rotated together at ``frequency``
    radians per position (None when unknown); ``product`` is their share of ``q · k``
    (``q_i k_i + q_j k_j``); ``q_norm``/``k_norm`` the lengths of the two 2-D pieces."""

    pair: int
    dims: tuple[int, int]
    frequency: float | None
    product: float
    q_norm: float
    k_norm: float


@dataclass(frozen=True)
class Why:
    """The notes' ``K_i · Q_j`` for query ``query`` and key ``key`` of one head.

    ``q``, ``k``: ``(d_key,)`` float64, the vectors the model used (after rotary embeddings);
    ``products = q * k``; ``dot = products.sum()``; ``score = dot * scale + bias`` (``bias`` is
    None when the head has none; a model that soft-caps its logits, ``softcap`` not None, scores
    ``softcap * tanh(dot * scale / softcap) + bias``), or ``-inf`` when the key is ``masked``
    (``mask_reason`` says why; its ``weight`` is then 0). ``weight = exp(score - lse)``, the
    cell of the pattern (with attention sinks the lse includes the sink).
    ``rank`` is 1 + the number of keys the query scores higher (None when masked) among its
    ``n_visible`` keys; ``competitors`` the query's best keys, best first. ``bands``: for rotary
    models, one ``Band`` per pair of rotated dims, pair order; ``unrotated`` is the rest of the
    dot product (dims the rotary embedding leaves alone; 0.0 when it rotates all).
    """

    layer: int
    head: int
    query: int
    key: int
    batch: int
    query_token: str | None
    key_token: str | None
    q: torch.Tensor
    k: torch.Tensor
    products: torch.Tensor
    dot: float
    scale: float
    softcap: float | None
    bias: float | None
    masked: bool
    mask_reason: str | None
    score: float
    lse: float
    weight: float
    rank: int | None
    n_visible: int
    competitors: tuple[Competitor, ...]
    bands: tuple[Band, ...] | None = None
    unrotated: float | None = None
    rotary: Rotary | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``score`` is None when masked; infinities never appear)."""
        def num(x: float | None) -> float | None:
            return None if x is None or not math.isfinite(x) else float(x)

        return {
            "layer": self.layer, "head": self.head, "query": self.query, "key": self.key,
            "batch": self.batch, "query_token": self.query_token, "key_token": self.key_token,
            "q": self.q.tolist(), "k": self.k.tolist(), "products": self.products.tolist(),
            "dot": self.dot, "scale": self.scale, "softcap": self.softcap, "bias": self.bias,
            "masked": self.masked,
            "mask_reason": self.mask_reason, "score": num(self.score), "lse": num(self.lse),
            "weight": self.weight, "rank": self.rank, "n_visible": self.n_visible,
            "competitors": [{"key": c.key, "token": c.token, "score": num(c.score),
                             "weight": c.weight} for c in self.competitors],
            "bands": None if self.bands is None else [
                {"pair": b.pair, "dims": list(b.dims), "frequency": b.frequency,
                 "product": b.product, "q_norm": b.q_norm, "k_norm": b.k_norm}
                for b in self.bands],
            "unrotated": self.unrotated,
            "rotary": None if self.rotary is None else self.rotary.describe(),
        }

    def text(self, top: int = 6) -> str:
        """A few lines for the terminal: the arithmetic and the largest contributions."""
        def name(tok: str | None, i: int) -> str:
            return f"{tok!r} ({i})" if tok is not None else f"position {i}"

        lines = [f"layer {self.layer} head {self.head}: key {name(self.key_token, self.key)} "
                 f"answering query {name(self.query_token, self.query)}"]
        order = torch.argsort(self.products.abs(), descending=True)[:top].tolist()
        parts = ", ".join(f"dim {i}: {self.q[i]:+.3f} x {self.k[i]:+.3f} = "
                          f"{self.products[i]:+.3f}" for i in order)
        lines.append(f"  largest products q_i k_i: {parts}")
        bias = "" if self.bias is None else f" + bias {self.bias:+.4f}"
        capped = ("" if self.softcap is None
                  else f", soft-capped {self.softcap:g}·tanh(·/{self.softcap:g})")
        lines.append(f"  q . k = {self.dot:+.4f} (sum of {self.q.numel()} products) x scale "
                     f"{self.scale:.4f}{capped}{bias} = score {self.score:+.4f}")
        if self.masked:
            lines.append(f"  masked ({self.mask_reason}): the query cannot see this key; "
                         "weight 0")
        else:
            lines.append(f"  weight {self.weight:.4f} = exp(score - lse {self.lse:.4f}); "
                         f"rank {self.rank} of {self.n_visible} keys")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()


def why(cap: Captured, layer: int, head: int, query: int, key: int, batch: int = 0,
        top: int = TOP) -> Why:
    """``Why`` for one cell of ``cap`` (see ``Captured.why``)."""
    from attnkit.inspect.captured import soft_capped, visible_pairs

    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise AttnkitError(f"top must be a positive int; got {top!r}")
    q_all, k_all, lse_all, opts = cap._inputs(layer, [head], batch)
    sq, sk = q_all.shape[2], k_all.shape[2]
    for name, pos, size in (("query", query, sq), ("key", key, sk)):
        if isinstance(pos, bool) or not isinstance(pos, int) or not 0 <= pos < size:
            raise OutOfRangeError(f"{name} {pos!r} is out of range: layer {layer} has {size} "
                                  f"{name} positions (0..{size - 1})")
    q = q_all[0, 0, query].double().cpu()  # (D,)
    keys = k_all[0, 0].double().cpu()  # (Sk, D)
    scale = float(opts["scale"])
    dots = keys @ q  # (Sk,) every key's q . k for this query, float64
    softcap = opts["softcap"]
    scores = soft_capped(dots * scale, softcap)
    bias_row = None
    if opts["bias"] is not None:
        b = opts["bias"][0, 0].double().cpu()  # (Sq|1, Sk|1)
        bias_row = torch.broadcast_to(b[query if b.shape[0] > 1 else 0], (sk,))  # (Sk,)
        scores = scores + bias_row
    cpu_opts = {**opts, "mask": None if opts["mask"] is None else opts["mask"].cpu()}
    positions = torch.arange(sk)
    seen = visible_pairs(cpu_opts, torch.full((sk,), query), positions, sq, sk)[0]  # (Sk,)
    lse = float(lse_all[0, 0, query])
    lse_inf = math.isinf(lse) and lse < 0  # a query that sees no key
    weights = torch.exp(scores - (math.inf if lse_inf else lse)).masked_fill(~seen, 0.0)
    row = torch.where(seen, scores, torch.full_like(scores, -math.inf))  # (Sk,)

    tokens = cap.tokens_of(batch)

    def token(i: int) -> str | None:
        return None if tokens is None or i >= len(tokens) else tokens[i]

    masked = not bool(seen[key])
    products = q * keys[key]  # (D,)
    order = torch.argsort(row, descending=True, stable=True)[:min(top, int(seen.sum()))]
    competitors = tuple(Competitor(int(j), token(int(j)), float(row[j]), float(weights[j]))
                        for j in order.tolist())
    bands, unrotated, rotary = _bands(cap.rotary, layer, q, keys[key])
    return Why(
        layer=layer, head=head, query=query, key=key, batch=batch,
        query_token=token(query), key_token=token(key),
        q=q, k=keys[key].clone(), products=products, dot=float(dots[key]), scale=scale,
        softcap=None if softcap is None else float(softcap),
        bias=None if bias_row is None else float(bias_row[key]),
        masked=masked, mask_reason=_reason(cpu_opts, query, key, sq, sk) if masked else None,
        score=float(row[key]), lse=lse, weight=float(weights[key]),
        rank=None if masked else 1 + int((row > row[key]).sum()),
        n_visible=int(seen.sum()), competitors=competitors, bands=bands,
        unrotated=unrotated, rotary=rotary)


def _bands(rotary: Rotary | None, layer: int, q: torch.Tensor, k: torch.Tensor):
    """Products grouped by rotary pair, when ``layer``'s heads were rotated as ``rotary`` says."""
    if rotary is None or not rotary.applies_to(layer, q.numel()):
        return None, None, None
    bands = []
    for p, (i, j) in enumerate(rotary.pairs()):
        freq = None if rotary.frequencies is None else rotary.frequencies[p]
        bands.append(Band(p, (i, j), freq, float(q[i] * k[i] + q[j] * k[j]),
                          float(torch.hypot(q[i], q[j])), float(torch.hypot(k[i], k[j]))))
    rest = float((q[rotary.rotary_dim:] * k[rotary.rotary_dim:]).sum())
    return tuple(bands), rest, rotary


def _reason(opts: dict[str, Any], query: int, key: int, sq: int, sk: int) -> str:
    """Why a hidden key is hidden, in words."""
    from attnkit.inspect.captured import visible_pairs

    diag = query + sk - sq
    window = opts.get("window") or (None, None)
    left, right = window
    if opts.get("causal") and key > diag:
        return "causal: a query cannot see later keys"
    if right is not None and key > diag + right:
        return f"window: at most {right} keys to the right"
    if left is not None and key < diag - left:
        return f"window: at most {left} keys to the left"
    if opts.get("mask") is not None:
        q_, k_ = torch.tensor([query]), torch.tensor([key])
        if not bool(visible_pairs({"mask": opts["mask"]}, q_, k_, sq, sk).all()):
            return "mask: the key is padding or masked out"
    return "hidden"
