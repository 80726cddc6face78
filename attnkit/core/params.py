"""Parameter accounting for attention, as the lesson does it for GPT-3: per matrix, per head, per
layer, in all, and the share of the whole model.

What is counted: the four matrices of each head — ``W_Q``, ``W_K``, value↓ ``W_V_down`` and value↑
``W_V_up`` (the head's block of ``W_O``) — plus bias vectors when ``bias=True``. Layer norms,
embeddings and MLPs are not attention and are not counted. With grouped-query attention
(``n_kv_heads < n_heads``) a key matrix and a value↓ matrix belong to a key/value head and are
shared by ``n_heads / n_kv_heads`` query heads: a layer holds ``n_heads`` copies of ``W_Q`` and
value↑ but only ``n_kv_heads`` copies of ``W_K`` and value↓.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from attnkit.errors import AttnkitError
from attnkit.runtime import check_positive_int

__all__ = ["count_attention_params", "AttentionParams", "Preset", "PRESETS"]


@dataclass(frozen=True)
class Preset:
    """Attention sizes of a known model and, where known, its total parameter count."""

    name: str
    title: str
    d_model: int
    d_key: int
    n_heads: int
    n_layers: int
    n_kv_heads: int | None = None
    d_value: int | None = None
    bias: bool = False
    model_params: int | None = None
    source: str = ""


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("gpt3", "GPT-3 175B", 12288, 128, 96, 96, model_params=175_181_291_520,
               source="the lesson's count: weight matrices only, no biases"),
        Preset("gpt2", "GPT-2 (124M)", 768, 64, 12, 12, bias=True, model_params=124_439_808,
               source="Hugging Face GPT2LMHeadModel, tied embeddings"),
        Preset("minilm", "all-MiniLM-L6-v2", 384, 32, 12, 6, bias=True, model_params=22_713_216,
               source="Hugging Face BertModel with pooler"),
        Preset("llama3-8b", "Llama 3 8B", 4096, 128, 32, 32, n_kv_heads=8,
               model_params=8_030_261_248, source="Hugging Face LlamaForCausalLM, untied"),
    )
}


@dataclass(frozen=True)
class AttentionParams:
    """The result of ``count_attention_params``; integers throughout.

    ``per_matrix``: parameters of one ``W_Q``, ``W_K``, ``W_V_down``, ``W_V_up``.
    ``per_head``: one query head's four matrices (with grouped heads, ``W_K`` and ``W_V_down`` are
    shared with the other heads of its group). ``per_layer``: every matrix of a layer counted once
    (``n_heads`` × (W_Q + W_V_up) + ``n_kv_heads`` × (W_K + W_V_down)) plus ``biases_per_layer``.
    ``total``: ``n_layers`` × ``per_layer``. ``share``: ``total / model_params`` when known.
    """

    d_model: int
    d_key: int
    d_value: int
    n_heads: int
    n_kv_heads: int
    n_layers: int
    bias: bool
    per_matrix: dict[str, int] = field(default_factory=dict)
    copies_per_layer: dict[str, int] = field(default_factory=dict)
    per_head: int = 0
    biases_per_layer: int = 0
    per_layer: int = 0
    total: int = 0
    model_params: int | None = None
    title: str | None = None

    @property
    def share(self) -> float | None:
        """Fraction of the whole model's parameters that attention holds, if the model is known."""
        return None if not self.model_params else self.total / self.model_params

    @property
    def full_value_matrix(self) -> int:
        """Parameters of an unfactored ``d_model × d_model`` value matrix (why it is factored)."""
        return self.d_model * self.d_model

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "model": self.title, "d_model": self.d_model, "d_key": self.d_key,
            "d_value": self.d_value, "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads,
            "n_layers": self.n_layers, "bias": self.bias, "per_matrix": dict(self.per_matrix),
            "copies_per_layer": dict(self.copies_per_layer), "per_head": self.per_head,
            "biases_per_layer": self.biases_per_layer, "per_layer": self.per_layer,
            "total": self.total, "model_params": self.model_params, "share": self.share,
            "full_value_matrix": self.full_value_matrix,
        }

    def table(self) -> str:
        """A human-readable table: per matrix, per head, per layer, total, share."""
        name = self.title or "custom model"
        kv = "" if self.n_kv_heads == self.n_heads else f", {self.n_kv_heads} key/value heads"
        lines = [f"Attention parameters of {name}: d_model {self.d_model:,}, d_key {self.d_key:,}"
                 f"{'' if self.d_value == self.d_key else f', d_value {self.d_value:,}'}, "
                 f"{self.n_heads} heads{kv}, {self.n_layers} layers", ""]
        shapes = {"W_Q": (self.d_model, self.d_key), "W_K": (self.d_model, self.d_key),
                  "W_V_down": (self.d_model, self.d_value), "W_V_up": (self.d_value, self.d_model)}
        roles = {"W_Q": "query", "W_K": "key", "W_V_down": "value↓", "W_V_up": "value↑"}
        rows = [("matrix", "shape", "each", "copies", "per layer")]
        for m, (r, c) in shapes.items():
            copies = self.copies_per_layer[m]
            rows.append((f"{m} ({roles[m]})", f"{r:,} × {c:,}", f"{self.per_matrix[m]:,}",
                         f"× {copies}", f"{copies * self.per_matrix[m]:,}"))
        if self.bias:
            rows.append(("biases (b_Q, b_K, b_V, b_O)", "vectors", "", "",
                         f"{self.biases_per_layer:,}"))
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        for row in rows:
            cells = [c.rjust(w) if i >= 2 else c.ljust(w)
                     for i, (c, w) in enumerate(zip(row, widths, strict=True))]
            lines.append("  ".join(cells).rstrip())
        lines.append("")
        summary = [("per head (W_Q + W_K + value↓ + value↑)", self.per_head),
                   (f"per layer ({self.n_heads} heads{kv}{' + biases' if self.bias else ''})",
                    self.per_layer),
                   (f"all {self.n_layers} layers", self.total)]
        width = max(len(label) for label, _ in summary)
        digits = max(len(f"{n:,}") for _, n in summary)
        lines += [f"{label.ljust(width)}  {n:>{digits},}" for label, n in summary]
        if self.share is not None:
            lines.append(f"share of the model's {self.model_params:,} parameters: "
                         f"{100 * self.share:.1f}%")
        lines.append("")
        if self.n_kv_heads != self.n_heads:
            group = self.n_heads // self.n_kv_heads
            lines.append(f"Grouped heads: each W_K and value↓ belongs to a key/value head and is "
                         f"shared by {group} query heads; the layer counts it once. 'Per head' "
                         "counts the four matrices one query head uses.")
        lines.append(f"An unfactored value matrix (d_model × d_model) would be "
                     f"{self.full_value_matrix:,} per head; value↓ · value↑ is "
                     f"{self.per_matrix['W_V_down'] + self.per_matrix['W_V_up']:,}.")
        lines.append("Not counted: layer norms, embeddings, MLPs.")
        return "\n".join(lines)


def count_attention_params(
    d_model: int,
    *,
    d_key: int | None = None,
    n_heads: int = 1,
    n_layers: int = 1,
    n_kv_heads: int | None = None,
    d_value: int | None = None,
    bias: bool = False,
    model_params: int | None = None,
    title: str | None = None,
) -> AttentionParams:
    """Count the attention parameters of a transformer, the way the lesson counts GPT-3's.

    Args:
        d_model: embedding size (every argument after it by keyword).
        d_key: per-head query/key size; default ``d_model // n_heads``.
        n_heads: query heads per layer.
        n_layers: layers.
        n_kv_heads: key/value heads per layer (grouped-query attention); default ``n_heads``.
        d_value: per-head value↓ output size; default ``d_key``.
        bias: also count ``b_Q, b_K, b_V`` per head and ``b_O`` per layer.
        model_params: the whole model's parameter count, to report attention's share.
        title: a name for the table.

    Example: ``count_attention_params(12288, d_key=128, n_heads=96, n_layers=96).total ==
    57_982_058_496``.
    """
    for name, size in (("d_model", d_model), ("n_heads", n_heads), ("n_layers", n_layers),
                       ("d_key", d_key), ("n_kv_heads", n_kv_heads), ("d_value", d_value),
                       ("model_params", model_params)):
        check_positive_int(f"count_attention_params: {name}", size,
                           allow_none=name in ("d_key", "n_kv_heads", "d_value", "model_params"))
    if d_key is None:
        if d_model % n_heads:
            raise AttnkitError(f"d_model={d_model} is not divisible by n_heads={n_heads}; pass "
                               "d_key= explicitly")
        d_key = d_model // n_heads
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    if n_heads % n_kv_heads:
        raise AttnkitError(f"n_heads={n_heads} is not a multiple of n_kv_heads={n_kv_heads}; each "
                           "key/value head must serve the same number of query heads")
    d_value = d_key if d_value is None else d_value
    per_matrix = {"W_Q": d_model * d_key, "W_K": d_model * d_key,
                  "W_V_down": d_model * d_value, "W_V_up": d_value * d_model}
    copies = {"W_Q": n_heads, "W_K": n_kv_heads, "W_V_down": n_kv_heads, "W_V_up": n_heads}
    biases = (n_heads * d_key + n_kv_heads * (d_key + d_value) + d_model) if bias else 0
    per_layer = sum(per_matrix[m] * copies[m] for m in per_matrix) + biases
    return AttentionParams(
        d_model=d_model, d_key=d_key, d_value=d_value, n_heads=n_heads, n_kv_heads=n_kv_heads,
        n_layers=n_layers, bias=bool(bias), per_matrix=per_matrix, copies_per_layer=copies,
        per_head=sum(per_matrix.values()), biases_per_layer=biases, per_layer=per_layer,
        total=per_layer * n_layers, model_params=model_params, title=title,
    )


def count_preset(name: str, **overrides: int | bool | None) -> AttentionParams:
    """``count_attention_params`` for a preset (``gpt3``, ``gpt2``, ``minilm``, ``llama3-8b``).

    ``overrides`` replace the preset's sizes (d_model, d_key, d_value, n_heads, n_layers,
    n_kv_heads, bias); the model's share is then no longer known and is dropped.
    """
    if name not in PRESETS:
        raise AttnkitError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    preset = PRESETS[name]
    changed = {k: v for k, v in overrides.items() if v is not None and getattr(preset, k) != v}
    if changed:
        what = ", ".join(f"{k}={v}" for k, v in changed.items())
        preset = replace(preset, **changed, model_params=None, title=f"{preset.title} with {what}")
    return count_attention_params(preset.d_model, d_key=preset.d_key, n_heads=preset.n_heads,
                                  n_layers=preset.n_layers, n_kv_heads=preset.n_kv_heads,
                                  d_value=preset.d_value, bias=preset.bias,
                                  model_params=preset.model_params, title=preset.title)
