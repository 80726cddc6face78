"""Seeded fuzz: every backend against the float64 reference on thousands of random calls.

The rule (DESIGN.md "Testing rules", its floors spelled out). For each result R of a call —
the output, the lse, a ``pattern()`` slice, the output and lse of two key halves merged with
``merge``, and the gradients dq, dk, dv, dbias, dsinks of a loss on the output and/or the lse,
taken directly and through ``merge`` — let R64 be the float64 reference's result on the same inputs
(rounded once to the input dtype) and ``err(X) = max |X - R64|`` over the entries where R64 is
finite; its infinite entries (lse = -inf) must be matched exactly and NaN never passes. The
backend passes when

    err(backend) <= factor * err(reference backend run in the input dtype) + floor

with factor 2 for forward results and 3 for gradients. The floor is the sum of:

- 1e-6 for forward results; for gradients 1e-5 * max(1, largest float64 gradient of the call)
  (oracle.py says why);
- the result's one rounding to the dtype it is returned in, eps/2 * max|R64|: the reference in
  the input dtype can be exact (a row that sees one key), a half-precision result cannot;
- the rounding of the scores. A float32 dot product is off by up to about 2**-24 times the
  sum of the magnitudes of its terms, in any implementation, and which of two implementations
  that luck favours is chance (at scale 1e4 each backend measured up to 4x the other's error,
  seed by seed). With S the largest ``|scale| sum_d |q_d k_d| + |bias|`` the call can see, a
  probability moves by up to 2 S 2**-24 of itself: 2 S 2**-24 max|v| for outputs, S 2**-24 for
  lse, 2 S 2**-24 for probabilities, and for dv 2 S 2**-24 max|dO| times the most
  probability one key gathers (P summed over the queries and heads that read it);
- the score gradients: each dS_ij may be off by eps * P_ij, from the scores' rounding (above,
  times the size of dP and of the lse's weight) and from the FlashAttention-2 backward's
  ``dP - rowsum(dO * O)``, two float32 sums of the same Dv products in different orders
  (sqrt(Dv) 2**-24 |dO_i| |v_j| apart; the materialized reference subtracts sum(P dP) and can
  be exact). So ``eps = 2 * 2**-24 * ((2 S + sqrt(Dv)) max|dO_i| max|v_j| + 2 S max|w|)``
  (w: the loss's weights on the lse), which dq gathers as |scale| eps max|k|, dk as
  |scale| eps max|q| times the most probability one key gathers, dbias as eps times P summed
  as dbias sums dS, dsinks as eps times the sink's probability summed over its rows;
- for ``pattern()`` the limit its docstring states for a float32 lse: max(P |lse|) 2**-24;
  and, for an lse the fused kernel made, that kernel's own float32 dot products, which
  ``pattern()`` cannot repeat (it repeats blockwise's): 2 sqrt(D) S 2**-24 of each probability;
- through ``merge``, the parts' outputs rounded to the input dtype: merge's gradient to a part's
  lse carries ``dO . round(O_part)``, while the part's backward takes ``dO . O_part`` from its
  float32 output (more exact alone), so each row's dS may be off by a further
  ``eps/2 sum_d |dO_d| |O_part,d|`` (summed over the parts; for dsinks, the part given the
  sinks) times P — a half-precision term that matters where the gradient itself cancels, as
  dsinks can.

Soft-capping only shrinks scores (S stays a bound); with dropout a kept probability is scaled by
``1 / (1 - p)``, and so are the floors of what it multiplies (outputs, dP, dv, patterns). The
dropout mask is the same in every backend (a function of the seed and the position), so the
float64 reference computes the same dropped call. A merge gets the sinks in its first half only
(merge's rule: count them once); with dropout there is no merge check (each partial call's key
positions start at 0, so its mask is not the whole call's).

These floors are nothing at ordinary scores (S ~ 10) and the main term at scale 1e3 or a bias
of 1e4, where no float32 computation is better than a few parts in 1e4; a wrong probability,
a missing gradient term or a half-precision rounding inside the kernel is far above them.
For half-precision inputs blockwise and fused (with autograd, as here) must also equal their own
float32 call on the same values, rounded once (to within one unit in the last place): stricter
than the rule, whose half-precision baseline is loose. A case whose reference in the input dtype
overflows (inf or NaN where float64 is finite) gives no baseline; the backend must then still be
finite and match the infinities. The accuracy at huge lse beyond these floors is pinned by
test_precision.py.

Cases are drawn from ``random.Random(seed)`` and a seeded ``torch.Generator``: a failure prints
the case and the one line that reruns it. The default run draws 300 cases; the marker
``fuzz_long`` (run with ``ATTNKIT_FUZZ_LONG=1``) draws 1,800 more.
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass

import pytest
import torch

import attnkit
from attnkit.kernels import dropout
from attnkit.kernels.api import validate
from attnkit.kernels.reference import reference_pattern, visibility
from tests.kernels.tiles import small_blocks, small_tiles

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
U = 2.0**-24  # half a unit in the last place of a float32 score: the kernels' work dtype
DEFAULT_SEEDS = range(0, 300)
LONG_SEEDS = range(300, 2100)
CHUNK = 100


@dataclass(frozen=True)
class Case:
    """One random call; ``make_case(seed)`` rebuilds it exactly."""

    seed: int
    backend: str  # "blockwise", "fused", their "... small tiles" (threads, key splits, several
    # blocks of pieces) or "sdpa"
    dtype: str
    b: int
    hq: int
    hkv: int
    sq: int
    sk: int
    d: int
    dv: int
    causal: bool
    window: tuple[int | None, int | None] | None
    mask: str  # none | keys | full | heads, "+empty" adds rows that see nothing
    bias: str  # none | heads | keys | big+ | big- | -inf rows
    scale: float | None
    qk_std: float
    strided: bool
    loss: str  # out | out+lse | lse
    cut: int  # keys [0, cut) and [cut, Sk) for merge; 0 skips it
    rows: object  # a slice or a list of positions for pattern()
    cols: object
    softcap: float | None = None
    sinks: float = 0.0  # standard deviation of the sink logits; 0: no sinks
    dropout_p: float = 0.0

    def rerun(self) -> str:
        return (f"python -c 'from tests.kernels.test_fuzz import check, make_case; "
                f"print(check(make_case({self.seed})))'")


def make_case(seed: int, max_len: int = 64) -> Case:
    r = random.Random(seed)
    backend = r.choices(["blockwise", "blockwise small tiles", "sdpa", "fused",
                         "fused small tiles"], [4, 4, 2, 3, 3])[0]
    dtype = r.choices(list(DTYPES), [2, 1, 1])[0]
    hkv = r.randint(1, 3)
    hq = hkv * r.randint(1, 3)
    long = r.random() < 0.15  # now and then lengths that cross several small tiles
    sq = r.randint(1, 3 * max_len if long else max_len)
    sk = r.randint(1, 3 * max_len if long else max_len)
    d, dv = r.choice([r.randint(1, 16), r.randint(17, 80)]), r.randint(1, 40)
    causal = r.random() < 0.4
    window = None
    if r.random() < 0.35:
        side = lambda: None if r.random() < 0.3 else r.randint(0, 20)  # noqa: E731
        window = (side(), side())
    mask = r.choice(["none", "none", "keys", "full", "heads"])
    if mask != "none" and r.random() < 0.4:
        mask += "+empty"
    bias = r.choice(["none", "none", "heads", "keys", "big+", "big-", "-inf rows"])
    scale = r.choices([None, 1e3, 1e-3, round(r.uniform(0.05, 3.0), 3)], [5, 1.5, 1, 2])[0]
    # half precision keeps its own scores in range (fp16 overflows past 65504)
    qk_std = 0.3 if scale == 1e3 and dtype == "float16" else 1.0
    if backend == "sdpa":  # draw only what SDPA can do exactly (it refuses the rest)
        window = None
        if causal:
            sk, mask, bias = sq, "none", "none"
    loss = "out" if backend == "sdpa" else r.choice(["out", "out+lse", "lse"])
    cut = r.randint(1, sk - 1) if backend != "sdpa" and sk >= 2 else 0
    rows = r.choice([slice(None), slice(r.randint(0, sq - 1), sq), slice(None, None, -1),
                     slice(sq - 1, None, -r.randint(1, 3)),
                     [r.randint(-sq, sq - 1) for _ in range(r.randint(1, 4))]])
    start = r.randint(0, sk - 1)
    cols = r.choice([slice(None), slice(start, r.randint(start, sk)),
                     [r.randint(0, sk - 1) for _ in range(r.randint(1, 5))]])
    batch, strided = r.randint(1, 2), r.random() < 0.3
    # the softmax options, drawn last so the cases above stay what they were (sdpa refuses them)
    softcap = r.choice([0.5, 5.0, 50.0]) if r.random() < 0.25 else None
    sinks = r.choice([1.0, 5.0]) if r.random() < 0.25 else 0.0
    dropout_p = r.choice([0.1, 0.5]) if r.random() < 0.2 else 0.0
    if backend == "sdpa" or backend.startswith("fused"):  # (they refuse these options)
        softcap, sinks, dropout_p = None, 0.0, 0.0
    if dropout_p:
        cut = 0
    return Case(seed, backend, dtype, batch, hq, hkv, sq, sk, d, dv, causal, window, mask, bias,
                scale, qk_std, strided, loss, cut, rows, cols, softcap, sinks, dropout_p)


# ---- inputs ------------------------------------------------------------------------------------


def make_inputs(case: Case):
    """float64 tensors already rounded to the case's dtype: q, k, v, options, dO, lse weights."""
    g = torch.Generator().manual_seed(case.seed)
    dtype = DTYPES[case.dtype]

    def rounded(t):
        return t.to(dtype).double()

    def rand(h, s, e, std=1.0):
        if case.strided:  # (B, S, H, E) memory seen as (B, H, S, E), as a model's projections
            t = torch.randn(case.b, s, h, e, generator=g, dtype=torch.float64).transpose(1, 2)
        else:
            t = torch.randn(case.b, h, s, e, generator=g, dtype=torch.float64)
        return rounded(t * std)

    q = rand(case.hq, case.sq, case.d, case.qk_std)
    k = rand(case.hkv, case.sk, case.d, case.qk_std)
    v = rand(case.hkv, case.sk, case.dv)
    opts = {"causal": case.causal, "window": case.window, "scale": case.scale,
            "softcap": case.softcap}
    if case.dropout_p:
        opts["dropout_p"], opts["dropout_seed"] = case.dropout_p, case.seed
    b, hq, sq, sk = case.b, case.hq, case.sq, case.sk
    kind = case.mask.split("+")[0]
    if kind != "none":
        shape = {"keys": (b, 1, 1, sk), "full": (sq, sk), "heads": (b, hq, sq, sk)}[kind]
        mask = torch.rand(shape, generator=g) > 0.3
        if case.mask.endswith("+empty"):
            if kind == "keys":
                mask[0] = False  # the whole first sequence is padding
            else:
                mask[..., torch.randint(0, sq, (max(1, sq // 4),), generator=g), :] = False
        opts["mask"] = mask
    if case.bias != "none":
        shape = (b, 1, 1, sk) if case.bias == "keys" else (1, hq, sq, sk)
        bias = torch.randn(shape, generator=g, dtype=torch.float64)
        if case.bias in ("big+", "big-"):
            bias = bias + (1e4 if case.bias == "big+" else -1e4)
        if case.bias == "-inf rows":
            bias[torch.rand(shape, generator=g) < 0.2] = float("-inf")
            bias[..., torch.randint(0, sq, (max(1, sq // 4),), generator=g), :] = float("-inf")
        opts["bias"] = rounded(bias)
    if case.sinks:
        opts["sinks"] = rounded(torch.randn(hq, generator=g, dtype=torch.float64) * case.sinks)
    grad_out = rand(hq, sq, case.dv)
    lse_weights = torch.randn(b, hq, sq, generator=g, dtype=torch.float64)
    return q, k, v, opts, grad_out, lse_weights


# ---- one backend's results -----------------------------------------------------------------


def run_backend(backend: str, dtype, q, k, v, opts, grad_out, lse_weights, loss: str) -> dict:
    """Output, lse and the gradients of the case's loss, for one backend in ``dtype``."""
    name = backend.split()[0]
    with_lse = name != "sdpa"
    leaves = {name: t.detach().to(dtype).requires_grad_() for name, t in zip("qkv", (q, k, v))}
    opts = dict(opts)
    for option in ("bias", "sinks"):
        if option in opts:
            opts[option] = opts[option].detach().to(dtype)
            if option == "sinks" or bias_gets_grad(name):
                opts[option] = leaves[option] = opts[option].requires_grad_()
    result = attnkit.attention(leaves["q"], leaves["k"], leaves["v"], return_lse=with_lse,
                               backend=name, **opts)
    out, lse = result if with_lse else (result, None)
    return {"out": out, "lse": lse,
            **grads_of(leaves, out, lse, grad_out.to(dtype), lse_weights, loss)}


def bias_gets_grad(backend: str) -> bool:
    """The fused kernel gives a bias no gradient (it refuses one that needs it)."""
    return backend != "fused"


def tiles(backend: str, workers: int = 2):
    """The tile sizes of a case's backend: small ones for "... small tiles"."""
    if not backend.endswith("small tiles"):
        return contextlib.nullcontext()
    return small_tiles(workers) if backend.startswith("blockwise") else small_blocks()


def grads_of(leaves: dict, out, lse, grad_out, lse_weights, loss: str) -> dict:
    """``{"dq": .., "dk": .., "dv": .., "dbias"?: .., "dsinks"?: ..}`` of the case's loss."""
    total = 0.0
    if "out" in loss:
        total = total + (out.float() * grad_out.float()).sum()
    if "lse" in loss:  # lse = -inf rows (no key seen) have no gradient to give
        total = total + (lse.masked_fill(torch.isneginf(lse), 0.0) * lse_weights.to(lse.dtype)
                         ).sum()
    grads = torch.autograd.grad(total, list(leaves.values()), allow_unused=True)
    return {f"d{name}": torch.zeros_like(t) if g is None else g
            for (name, t), g in zip(leaves.items(), grads)}


def run_split(backend: str, dtype, q, k, v, opts, grad_out, lse_weights, loss: str, cut: int):
    """The same call as two key halves merged with ``merge``. Causal and window become an
    explicit mask first: each half would otherwise align them on its own keys. The sinks go to
    the first half only (counted once)."""
    spec, scale = validate(q, k, v, **opts)
    seen = visibility(spec, q.device)  # (B|1, Hq|1, Sq, Sk) or None
    leaves = {name: t.detach().to(dtype).requires_grad_() for name, t in zip("qkv", (q, k, v))}
    bias = opts["bias"].detach().to(dtype) if "bias" in opts else None
    for option in ("bias", "sinks"):
        if option in opts and (option == "sinks" or bias_gets_grad(backend)):
            leaves[option] = opts[option].detach().to(dtype).requires_grad_()
    bias = leaves.get("bias", bias)
    q_, k_, v_ = leaves["q"], leaves["k"], leaves["v"]
    halves = []
    for keys in (slice(0, cut), slice(cut, None)):
        part = {"scale": scale, "softcap": spec.softcap}
        if seen is not None:
            part["mask"] = seen[..., keys]
        if bias is not None:
            part["bias"] = bias[..., keys]
        if "sinks" in leaves and keys.start == 0:
            part["sinks"] = leaves["sinks"]
        halves.append(attnkit.attention(q_, k_[:, :, keys], v_[:, :, keys], return_lse=True,
                                        backend=backend, **part))
    out, lse = attnkit.merge(*halves[0], *halves[1])
    # merge reads each part's output rounded to the dtype, (B, Hq, Sq) per part: the bound on
    # how far dO . round(O_part) can be from dO . O_part
    eps_out = torch.finfo(dtype).eps / 2
    mismatch = [eps_out * (grad_out.abs() * h[0].detach().double().abs()).sum(dim=-1)
                for h in halves]
    return {"out": out, "lse": lse, "mismatch": mismatch,
            **grads_of(leaves, out, lse, grad_out.to(dtype), lse_weights, loss)}


# ---- the rule -----------------------------------------------------------------------------------


def deviation(x: torch.Tensor, exact: torch.Tensor) -> float:
    """max |x - exact| over exact's finite entries; inf when x has NaN or its infinities differ."""
    x = x.detach().double()
    if torch.isnan(x).any() or not torch.equal(torch.isinf(x), torch.isinf(exact)):
        return math.inf
    if not torch.equal(x[torch.isinf(x)], exact[torch.isinf(exact)]):
        return math.inf
    finite = torch.isfinite(exact)
    return (x[finite] - exact[finite]).abs().max().item() if finite.any() else 0.0


def magnitude(t: torch.Tensor) -> float:
    finite = t[torch.isfinite(t)]
    return finite.abs().max().item() if finite.numel() else 0.0


def judge(what: str, fast, baseline, exact, factor: float, floor: float, failures: list) -> None:
    err_fast, err_base = deviation(fast, exact), deviation(baseline, exact)
    bound = factor * err_base + floor
    if not err_fast <= bound:  # also catches NaN and mismatched infinities (err_fast = inf)
        failures.append(f"{what}: error {err_fast:.3g} > {factor} x {err_base:.3g} "
                        f"(reference in dtype) + floor {floor:.3g}")


def floors(case: Case, q, k, v, opts, grad_out, lse_weights, scale: float, exact: dict,
           p64: torch.Tensor, mismatch: list | None = None) -> dict[str, float]:
    """The floor of each result (the module docstring's list); ``p64`` is the float64 pattern
    ``(B, Hq, Sq, Sk)``; ``mismatch``, one ``(B, Hq, Sq)`` per part: for results through
    ``merge``, how far the rounding of that part's output can move each row's ``dO . O``
    (``run_split``)."""
    eps_out = torch.finfo(DTYPES[case.dtype]).eps / 2
    big_s = largest_score(q, k, opts, scale)
    kept = 1.0 / (1.0 - case.dropout_p)  # what dropout scales a kept probability by
    mag = {name: magnitude(t) for name, t in exact.items() if t is not None}
    found = {"out": 1e-6 + eps_out * mag["out"] + 2 * big_s * U * magnitude(v) * kept,
             "lse": 1e-6 + U * mag["lse"] + big_s * U,
             "pattern": 1e-6 + 2 * big_s * U * kept}
    # each score's gradient dS_ij may be off by eps * P_ij: from the scores' rounding (dP and
    # the lse weight times 2 S U) and from dP - rowsum(dO * O), two float32 sums of the same
    # Dv products in different orders (about sqrt(Dv) U |dO_i| |v_j| apart)
    a = 0.0
    if "out" in case.loss:
        a = magnitude(grad_out.norm(dim=-1)) * magnitude(v.norm(dim=-1)) * kept
    w = magnitude(lse_weights) if "lse" in case.loss else 0.0
    eps = 2 * U * ((2 * big_s + math.sqrt(case.dv)) * a + 2 * big_s * w)
    merged = mismatch is not None and "out" in case.loss
    if merged:
        # merge reads each part's output rounded to the dtype: its d lse_part carries
        # dO . round(O_part) while the part's backward takes dO . O_part from its float32 output
        eps_plain = eps
        eps = eps + magnitude(sum(mismatch))
    g = case.hq // case.hkv
    per_key = p64.view(case.b, case.hkv, g, case.sq, case.sk).sum(dim=(2, 3))  # (B, Hkv, Sk)
    grad_names = [name for name in ("dq", "dk", "dv", "dbias", "dsinks") if name in mag]
    scale_g = max(mag[name] for name in grad_names)
    common = {name: 1e-5 * max(1.0, scale_g) + eps_out * mag[name] for name in grad_names}
    found["dq"] = common["dq"] + abs(scale) * eps * magnitude(k)  # rows of P sum to 1
    found["dk"] = common["dk"] + abs(scale) * eps * magnitude(q) * magnitude(per_key)
    found["dv"] = common["dv"] + 2 * big_s * U * magnitude(grad_out) * magnitude(per_key) * kept
    if "dsinks" in common:
        # the sink's share of each row: what the keys leave (all of it where none is seen)
        p_sink = (1.0 - p64.sum(dim=-1)).clamp(min=0.0)  # (B, Hq, Sq)
        found["dsinks"] = common["dsinks"] + eps * magnitude(p_sink.sum(dim=(0, 2)))
        if merged:  # row by row, and only the part given the sinks (the first) reaches them
            eps_rows = eps_plain + mismatch[0]  # (B, Hq, Sq)
            found["dsinks"] = common["dsinks"] + magnitude((p_sink * eps_rows).sum(dim=(0, 2)))
    if "dbias" in common:
        bias = opts["bias"]
        summed = [dim for dim in range(4) if bias.shape[dim] == 1 and p64.shape[dim] != 1]
        into_one = p64.sum(dim=summed) if summed else p64  # P summed as dbias sums dS
        found["dbias"] = common["dbias"] + eps * magnitude(into_one)
    return found


def largest_score(q, k, opts, scale: float) -> float:
    """S: among the scores the call can see, the largest sum of the magnitudes of what a score
    adds up, ``|scale| * sum_d |q_d k_d| + |bias|`` (float64): a float32 dot product's rounding
    is relative to that, not to the (possibly cancelled) score itself."""
    spec, _ = validate(q, k, k, **opts)
    groups = q.shape[1] // k.shape[1]
    kk = k.repeat_interleave(groups, dim=1)  # (B, Hq, Sk, D)
    s = q.abs() @ kk.abs().transpose(-1, -2) * abs(scale)  # (B, Hq, Sq, Sk)
    if "bias" in opts:
        s = s + opts["bias"].abs()
    seen = visibility(spec, q.device)
    if seen is not None:
        s = s.masked_fill(~seen, float("inf"))
    return magnitude(s)


def check(case: Case) -> list[str]:
    """Every comparison of one case; the list of failures (empty when it passes)."""
    dtype = DTYPES[case.dtype]
    q, k, v, opts, grad_out, lse_weights = make_inputs(case)
    spec, scale = validate(q, k, v, **opts)
    args = (q, k, v, opts, grad_out, lse_weights, case.loss)
    exact = run_backend("reference", torch.float64, *args)
    base = run_backend("reference", dtype, *args)
    with tiles(case.backend):
        fast = run_backend(case.backend, dtype, *args)
    p64, lse64 = reference_pattern(q, k, spec, scale)  # (B, Hq, Sq, Sk)
    floor = floors(case, q, k, v, opts, grad_out, lse_weights, scale, exact, p64)

    failures: list[str] = []
    forward = ["out", "lse"] if fast["lse"] is not None else ["out"]
    grads = [name for name in ("dq", "dk", "dv", "dbias", "dsinks") if name in exact
             and name in fast]
    for name in forward:
        judge(name, fast[name], base[name], exact[name], 2, floor[name], failures)
    for name in grads:
        judge(name, fast[name], base[name], exact[name], 3, floor[name], failures)
    if dtype != torch.float32 and case.backend != "sdpa":
        check_rounded_once(case, args, fast, failures)
    if fast["lse"] is not None:
        check_pattern(case, q, k, v, opts, fast["lse"], p64, lse64, scale, floor["pattern"],
                      failures)
    if case.cut:
        split = lambda backend, dt: run_split(backend, dt, *args, case.cut)  # noqa: E731
        base_split = split("reference", dtype)
        with tiles(case.backend):
            fast_split = split(case.backend.split()[0], dtype)
        for name in ("out", "lse"):
            judge(f"merged {name}", fast_split[name], base_split[name], exact[name], 2,
                  floor[name], failures)
        floor = floors(case, q, k, v, opts, grad_out, lse_weights, scale, exact, p64,
                       base_split["mismatch"])
        for name in grads:
            judge(f"{name} through merge", fast_split[name], base_split[name], exact[name], 3,
                  floor[name], failures)
    return failures


def check_rounded_once(case: Case, args, fast: dict, failures: list) -> None:
    """Blockwise and fused (with autograd) compute half-precision inputs in float32: their
    results must be the float32 call's rounded once (within one unit in the last place).
    Stricter than the rule, whose half-precision baseline is loose. Blockwise's small tiles are
    compared on one worker: on two, the threads add their tiles' dK and dV in either order, and
    where those sums cancel the float32 results of two runs differ by more than a
    half-precision unit of the (small) total."""
    dtype = DTYPES[case.dtype]
    if case.backend == "blockwise small tiles":
        with tiles(case.backend, workers=1):
            fast = run_backend(case.backend, dtype, *args)
            single = run_backend(case.backend, torch.float32, *args)
    else:
        with tiles(case.backend):
            single = run_backend(case.backend, torch.float32, *args)
    finfo = torch.finfo(dtype)
    for name, x in fast.items():
        if x is None:
            continue
        ref = single[name].detach().double()
        ulp = (finfo.eps if x.dtype == dtype else 4 * U) * ref.abs()
        ulp = ulp + finfo.smallest_normal * finfo.eps  # the spacing of subnormals
        off = (x.detach().double() - ref).abs().nan_to_num(math.inf)
        off[torch.isinf(ref) & (x.detach().double() == ref)] = 0.0  # lse = -inf on both
        if not (off <= ulp).all():
            failures.append(f"{name} in {case.dtype} is not the float32 result rounded once: "
                            f"{(off - ulp).max().item():.3g} beyond one unit")


def check_pattern(case, q, k, v, opts, lse, exact, lse64, scale, floor, failures) -> None:
    """pattern() from the backend's lse, against slices of the float64 and in-dtype patterns."""
    dtype = DTYPES[case.dtype]
    qd, kd = q.to(dtype), k.to(dtype)
    opts_d = {**opts, "bias": opts["bias"].to(dtype)} if "bias" in opts else dict(opts)
    if "sinks" in opts:
        opts_d["sinks"] = opts["sinks"].to(dtype)
    spec_d, _ = validate(qd, kd, v.to(dtype), **opts_d)
    naive, _ = reference_pattern(qd, kd, spec_d, scale)
    rows = list(range(case.sq))[case.rows] if isinstance(case.rows, slice) else case.rows
    cols = list(range(case.sk))[case.cols] if isinstance(case.cols, slice) else case.cols
    got = attnkit.pattern(qd, kd, lse, rows=case.rows, cols=case.cols, **opts_d)
    if case.dropout_p:  # pattern() then gives the weights after dropout, as eager returns them
        kept = dropout.keep_mask(case.seed, case.dropout_p, *exact.shape)
        exact = exact * kept * dropout.keep_scale(case.dropout_p)
        naive = naive * kept * dropout.keep_scale(case.dropout_p)

    def part(p):
        return p[:, :, rows][..., cols]

    lse_rounding = (exact * lse64.abs().nan_to_num(0.0, 0.0, 0.0)[..., None]).max().item() * U
    if case.backend.startswith("fused"):  # scores rounded by another float32 dot product
        floor += 2 * math.sqrt(case.d) * largest_score(q, k, opts, scale) * U
    judge("pattern", got, part(naive), part(exact), 2, floor + lse_rounding, failures)


def run_seeds(seeds) -> None:
    report = []
    for seed in seeds:
        case = make_case(seed)
        failures = check(case)
        if failures:
            report.append(f"{case}\n  rerun: {case.rerun()}\n  " + "\n  ".join(failures))
    assert not report, f"{len(report)} of {len(seeds)} cases failed:\n" + "\n".join(report)


@pytest.mark.parametrize("first", range(DEFAULT_SEEDS.start, DEFAULT_SEEDS.stop, CHUNK))
def test_fuzz(first):
    run_seeds(range(first, first + CHUNK))


@pytest.mark.fuzz_long
@pytest.mark.parametrize("first", range(LONG_SEEDS.start, LONG_SEEDS.stop, CHUNK))
def test_fuzz_long(first):
    run_seeds(range(first, first + CHUNK))
