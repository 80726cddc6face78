"""Rank every head of a model by a relation: which keys should a query attend to?

A ``Relation`` supplies inputs (``Example``s) and, for each, its ``Targets``: items made of query
positions and the key positions that count for them. A head's score for an item is the mean over
the item's queries of the attention they put on the item's keys; its score for the relation is the
mean over every item of every input. Weights are computed exactly from the captured ``q``, ``k``
and log-sum-exp at the listed cells only (``Captured.weights_at``), so scoring costs what the
relation lists, not ``S × S``, at any length.

Baselines are the scores of heads nobody trained: uniform attention over the keys the model lets
each query see, and whatever controls the relation names (e.g. "all attention on the previous
token").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from attnkit.errors import AttnkitError
from attnkit.inspect.capture import capture
from attnkit.inspect.captured import visible_counts, visible_pairs
from attnkit.inspect.families import describe
from attnkit.runtime import torch_threads

__all__ = ["Targets", "Example", "Relation", "Control", "HeadRanking", "rank_heads",
           "register_relation", "relation_named", "RELATIONS", "UNIFORM"]

UNIFORM = "uniform over the keys each query may see"
"""The baseline every ranking reports: a head spreading each query's attention evenly."""


@dataclass(frozen=True)
class Targets:
    """Which keys count for which queries in one input, as weighted ``(query, key)`` pairs.

    Item ``n``'s score is ``Σ weight[p] · attention(query[p] → key[p])`` over its pairs
    (``item[p] == n``); the weights are ``1 / (the item's number of queries)``, so an item scores
    the mean over its queries of the attention they put on its keys. All tensors ``(P,)``.
    """

    query: torch.Tensor
    key: torch.Tensor
    item: torch.Tensor
    weight: torch.Tensor
    n_items: int

    @classmethod
    def from_groups(cls, groups: Iterable[tuple[Sequence[int], Sequence[int]]]) -> Targets:
        """One item per ``(queries, keys)`` group: every query of the group against every key."""
        query, key, item, weight = [], [], [], []
        n = 0
        for queries, keys in groups:
            queries, keys = list(queries), list(keys)
            if not queries or not keys:
                continue
            for r in queries:
                query += [r] * len(keys)
                key += keys
            item += [n] * (len(queries) * len(keys))
            weight += [1.0 / len(queries)] * (len(queries) * len(keys))
            n += 1
        return cls(torch.tensor(query, dtype=torch.long), torch.tensor(key, dtype=torch.long),
                   torch.tensor(item, dtype=torch.long),
                   torch.tensor(weight, dtype=torch.float64), n)

    @classmethod
    def from_pairs(cls, query: torch.Tensor, key: torch.Tensor) -> Targets:
        """One item per distinct query, whose keys are all the keys paired with it: its score is
        the total attention the query puts on them."""
        query, key = torch.as_tensor(query).long(), torch.as_tensor(key).long()
        distinct, item = torch.unique(query, return_inverse=True)
        return cls(query, key, item, torch.ones(len(query), dtype=torch.float64), len(distinct))


@dataclass(frozen=True)
class Example:
    """One input of a relation: the model's keyword inputs (batch of one), the ``targets`` that
    are scored, and optional ``extra`` views (named ``Targets`` scored the same way)."""

    inputs: dict[str, torch.Tensor]
    targets: Targets
    extra: dict[str, Targets] = field(default_factory=dict)


Control = Callable[[Targets, int], torch.Tensor]
"""A hypothetical head: ``control(targets, seq_len) -> (P,)`` weights it would put on the pairs."""


class Relation(Protocol):
    """What a detector looks for. ``examples`` makes its inputs for a model and tokenizer;
    ``controls`` names hypothetical heads whose scores are reported beside the uniform
    baseline; ``inputs`` says in words what the inputs were. A relation may also name its
    ``primary`` baseline (the one ``x baseline`` divides by; default: its first control)."""

    name: str
    description: str
    controls: dict[str, Control]

    def examples(self, model: nn.Module, tokenizer: Any) -> list[Example]: ...

    def inputs(self) -> str: ...


RELATIONS: dict[str, Callable[[], Relation]] = {}
"""name → factory of every registered relation (see ``register_relation``)."""


def register_relation(name: str, factory: Callable[[], Relation]) -> None:
    """Make ``find_heads(relation=name)`` build its relation with ``factory()``."""
    RELATIONS[name] = factory


def relation_named(name: str) -> Relation:
    """The registered relation ``name``, or an error listing the known ones."""
    if name not in RELATIONS:
        raise AttnkitError(f"unknown relation {name!r}; known relations: "
                           + ", ".join(repr(k) for k in RELATIONS))
    return RELATIONS[name]()


@dataclass(frozen=True)
class HeadRanking:
    """Every head scored for one relation.

    ``scores (L, H)`` float64: the mean item score of each head (layers and heads numbered by
    ``layers``/``heads``). ``baselines``: the scores of hypothetical heads — the first is the
    primary one (``x baseline`` in the table) — always including ``UNIFORM``. ``extra``: further
    views of the same attention ``(L, H)``, each with its own ``extra_baselines`` and item count.
    """

    relation: str
    description: str
    model_name: str
    inputs: str
    layers: list[int]
    heads: list[int]
    scores: torch.Tensor
    baselines: dict[str, float]
    n_inputs: int
    n_items: int
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    extra_baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    extra_items: dict[str, int] = field(default_factory=dict)

    @property
    def ranking(self) -> list[tuple[int, int, float]]:
        """``(layer, head, score)`` of every head, best first."""
        cells = [(lay, hd, float(self.scores[a, b])) for a, lay in enumerate(self.layers)
                 for b, hd in enumerate(self.heads)]
        return sorted(cells, key=lambda t: -t[2])

    @property
    def best(self) -> tuple[int, int]:
        """``(layer, head)`` of the top-ranked head."""
        layer, head, _ = self.ranking[0]
        return layer, head

    @property
    def baseline(self) -> float:
        """The primary baseline (the first of ``baselines``)."""
        return next(iter(self.baselines.values()))

    def score(self, layer: int, head: int, view: str | None = None) -> float:
        """One head's score (or its score in the extra view ``view``)."""
        table = self.scores if view is None else self.extra[view]
        return float(table[self.layers.index(layer), self.heads.index(head)])

    def table(self, top: int | None = 10) -> str:
        """The ranking as text: the baselines, then rank, layer, head, score, score / baseline and
        each extra view's score."""
        rows = self.ranking if top is None else self.ranking[:top]
        pad = max([len(n) for n in self.baselines] + [40]) + 2
        lines = [f"{self.relation}: {self.description}",
                 f"model {self.model_name}; {self.n_items} items in {self.n_inputs} inputs "
                 f"({self.inputs})"]
        lines += [f"baseline, {name + ':':<{pad}} {value:.3f}"
                  for name, value in self.baselines.items()]
        for view, baselines in self.extra_baselines.items():
            lines += [f"{view} ({self.extra_items[view]} items), baseline {name}: {value:.3f}"
                      for name, value in baselines.items()]
        header = f"{'rank':>4} {'layer':>5} {'head':>4} {'score':>6} {'x baseline':>10}"
        header += "".join(f" {view:>{max(len(view), 6)}}" for view in self.extra)
        lines += ["", header]
        for i, (layer, head, score) in enumerate(rows, 1):
            ratio = score / self.baseline if self.baseline > 0 else float("inf")
            line = f"{i:>4} {layer:>5} {head:>4} {score:>6.3f} {ratio:>10.1f}"
            line += "".join(f" {self.score(layer, head, view):>{max(len(view), 6)}.3f}"
                            for view in self.extra)
            lines.append(line)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        """JSON-ready: the relation, model, inputs, baselines and the (top) ranking."""
        rows = self.ranking if top is None else self.ranking[:top]
        return {
            "relation": self.relation, "description": self.description,
            "model": self.model_name, "inputs": self.inputs, "n_inputs": self.n_inputs,
            "n_items": self.n_items, "baselines": dict(self.baselines),
            "extra_baselines": {k: dict(v) for k, v in self.extra_baselines.items()},
            "ranking": [{"layer": lay, "head": hd, "score": sc,
                         **{view: self.score(lay, hd, view) for view in self.extra}}
                        for lay, hd, sc in rows],
        }


def _uniform(targets: Targets, options: dict[str, Any], n_queries: int,
             n_keys: int) -> torch.Tensor:
    """``(P,)`` weights of a head attending evenly to every key its query may see."""
    counts = visible_counts(options, n_queries, n_keys)[0]  # (Sq,) of the first head
    seen = visible_pairs(options, targets.query, targets.key, n_queries, n_keys)[0]  # (P,)
    at = counts[targets.query].double()
    return torch.where(seen & (at > 0), 1.0 / at.clamp_min(1), torch.zeros_like(at))


_SMALL = 50_000_000  # parameters: below this, one thread beats several waiting on each other


def rank_heads(model: nn.Module, tokenizer: Any, relation: Relation, *,
               model_name: str | None = None, examples: list[Example] | None = None,
               progress: bool = False) -> HeadRanking:
    """Score every head of ``model`` for ``relation`` on its examples (or ``examples``)."""
    info = describe(model)
    examples = relation.examples(model, tokenizer) if examples is None else list(examples)
    if not examples or sum(e.targets.n_items for e in examples) == 0:
        raise AttnkitError(f"the inputs of relation {relation.name!r} hold no item to score "
                           "(no query with a key that counts)")
    small = sum(p.numel() for p in model.parameters()) < _SMALL
    with torch_threads(1 if small else torch.get_num_threads()), torch.no_grad():
        return _rank(model, info.name if model_name is None else model_name, relation,
                     examples, progress)


def _rank(model: nn.Module, name: str, relation: Relation, examples: list[Example],
          progress: bool) -> HeadRanking:
    views = ["", *examples[0].extra]  # "" is the main targets
    totals: dict[str, torch.Tensor] = {}
    items = dict.fromkeys(views, 0)
    base: dict[str, dict[str, float]] = {v: {} for v in views}
    layers: list[int] = []
    heads: list[int] = []
    for example in tqdm(examples, desc=f"find-heads {relation.name}", disable=not progress,
                        leave=False):
        with capture(model) as cap:
            model(**example.inputs)
        layers, heads = cap.layers, cap.heads
        n_queries, n_keys = cap.queries(layers[0]).shape[2], cap.keys(layers[0]).shape[2]
        for view in views:
            targets = example.targets if view == "" else example.extra[view]
            if targets.n_items == 0:
                continue
            weights = torch.stack([cap.weights_at(layer, targets.query, targets.key)
                                   for layer in layers]).double()  # (L, H, P)
            per_item = torch.zeros(len(layers), len(heads), targets.n_items, dtype=torch.float64)
            per_item.index_add_(2, targets.item, weights * targets.weight)  # (L, H, items)
            total = totals.setdefault(view, torch.zeros(len(layers), len(heads),
                                                        dtype=torch.float64))
            total += per_item.sum(-1)
            items[view] += targets.n_items
            first = cap.options(layers[0])
            controls = {**relation.controls,
                        UNIFORM: lambda t, s, o=first, sq=n_queries, sk=n_keys: _uniform(t, o, sq,
                                                                                          sk)}
            for control, fn in controls.items():
                w = fn(targets, n_keys).double() * targets.weight  # (P,)
                base[view][control] = base[view].get(control, 0.0) + float(w.sum())
    scores = totals[""] / items[""]
    extra = {v: totals[v] / items[v] for v in views[1:] if items[v]}
    averaged = {v: {c: s / max(items[v], 1) for c, s in base[v].items()} for v in views}
    primary = getattr(relation, "primary", None)
    for v in views:
        if primary in averaged[v]:  # the primary baseline first
            averaged[v] = {primary: averaged[v][primary],
                           **{c: s for c, s in averaged[v].items() if c != primary}}
    return HeadRanking(
        relation=relation.name, description=relation.description, model_name=name,
        inputs=relation.inputs(), layers=layers, heads=heads, scores=scores,
        baselines=averaged[""], n_inputs=len(examples), n_items=items[""], extra=extra,
        extra_baselines={v: averaged[v] for v in extra}, extra_items={v: items[v] for v in extra})
