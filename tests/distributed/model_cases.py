"""What each rank runs for the context-parallel model tests (see ``worker.py``).

Small Llama-, Mistral-, Gemma 2- and GPT-OSS-style models built from configs (random weights,
float64), the same on every rank; each rank feeds its shard through ``akd.context_parallel``
and the gathered logits, gradients and captured patterns are compared with one process running
the model on "attnkit".
"""

from __future__ import annotations

import torch
import torch.distributed as dist

import attnkit
import attnkit.distributed as akd
import attnkit.hf  # noqa: F401  (registers "attnkit")
from tests.distributed.attention_cases import _err, _outcome

FLOAT32_NORMS = ("gemma2",)


def _model(kind: str, dtype=torch.float64):
    import transformers as t

    torch.manual_seed(0)
    common = dict(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  attn_implementation="attnkit")
    if kind == "mistral":  # sliding-window attention
        model = t.MistralForCausalLM(t.MistralConfig(sliding_window=5, **common))
    elif kind == "gemma2":  # soft-capping at 1.0 on scores of a few units (weights 10x larger)
        model = t.Gemma2ForCausalLM(t.Gemma2Config(
            head_dim=8, attn_logit_softcapping=1.0, final_logit_softcapping=None,
            initializer_range=0.2, sliding_window=4, query_pre_attn_scalar=8, **common))
    elif kind == "gpt_oss":  # sinks (drawn a few units wide, so they matter), sliding window
        model = t.GptOssForCausalLM(t.GptOssConfig(
            head_dim=8, num_local_experts=2, num_experts_per_tok=1, sliding_window=4,
            layer_types=["sliding_attention", "full_attention"], experts_implementation="eager",
            **common))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("sinks"):
                    p.copy_(torch.randn(p.shape) * 2)
    elif kind == "llama dropout":
        model = t.LlamaForCausalLM(t.LlamaConfig(attention_dropout=0.1, **common))
        return model.to(dtype).train()
    else:
        model = t.LlamaForCausalLM(t.LlamaConfig(**common))
    return model.to(dtype).eval()


def _inputs(world: int, padded: bool):
    gen = torch.Generator().manual_seed(1)
    n = 8 * world
    ids = torch.randint(0, 50, (2, n), generator=gen)
    mask = torch.ones(2, n, dtype=torch.long)
    if padded:
        mask[1, :5] = 0  # left padding of the second sequence
    return ids, mask


def hf(cases: list[dict]) -> dict:
    world = dist.get_world_size()
    out = {}
    for case in cases:
        kind, layout, mode, padded = case["model"], case["layout"], case["mode"], case["padded"]
        dtype = getattr(torch, case.get("dtype", "float64"))
        model = _model(kind, dtype)
        ids, mask = _inputs(world, padded)
        with akd.context_parallel(model, layout=layout, mode=mode) as cp:
            kwargs = {"attention_mask": cp.shard(mask)} if padded else {}
            logits_local = model(input_ids=cp.shard(ids), **kwargs).logits
            logits = cp.unshard(logits_local)
            weight = torch.randn(logits.shape, generator=torch.Generator().manual_seed(2),
                                 dtype=logits.dtype)
            (logits_local * cp.shard(weight)).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        for g in grads.values():
            dist.all_reduce(g)  # each rank's shard of the loss: the whole gradient is the sum
        restored = model.config._attn_implementation
        model.zero_grad()
        one = model(input_ids=ids, attention_mask=mask if padded else None).logits
        (one * weight).sum().backward()
        params = dict(model.named_parameters())
        # Gemma 2 computes its RMSNorms in float32 whatever the model's dtype: their weights'
        # gradients carry float32 rounding of sums over the sequence, taken in another order
        # on shards; they are held to float32's precision, everything else to float64's
        norms = [n for n in params if kind in FLOAT32_NORMS and "norm" in n]
        result = {"logits": _err(logits, one), "restored": restored,
                  "grads": max(_err(grads[n], p.grad) for n, p in params.items()
                               if n not in norms)}
        if norms:
            result["norm_grads_relative"] = max(
                _err(grads[n], params[n].grad) / params[n].grad.abs().max().item() for n in norms)
        if dtype != torch.float64:  # the oracle: next to the same model's error in dtype
            ref = _model(kind, torch.float64)
            ref64 = ref(input_ids=ids, attention_mask=mask if padded else None).logits
            result["logits_vs_64"] = _err(logits, ref64)
            result["one_vs_64"] = _err(one, ref64)
        out[f"{kind} {layout} {mode} padded={padded} {dtype}"] = result
    # a control that must fail: every rank feeding positions 0..n-1 (no global positions)
    model = _model("llama")
    ids, _ = _inputs(world, False)
    with akd.context_parallel(model, layout="zigzag") as cp:
        local = cp.shard(ids)
        wrong = cp.unshard(model(input_ids=local,
                                 position_ids=torch.arange(local.shape[1])[None]).logits)
    out["control: positions 0..n-1 on every rank"] = {"logits": _err(wrong,
                                                                     model(input_ids=ids).logits)}
    return out


def hf_errors() -> dict:
    """What context_parallel refuses, each on every rank."""
    world = dist.get_world_size()
    model = _model("llama")
    ids, mask = _inputs(world, False)
    out = {}
    with akd.context_parallel(model, layout="zigzag") as cp:
        local = cp.shard(ids)
        out["labels"] = _outcome(lambda: model(input_ids=local, labels=local))
        out["use_cache"] = _outcome(lambda: model(input_ids=local, use_cache=True))
        out["whole mask"] = _outcome(lambda: model(input_ids=local, attention_mask=mask))
        out["odd shard"] = _outcome(lambda: model(input_ids=local[:, :3]))
        out["output_attentions"] = _outcome(lambda: model(input_ids=local,
                                                          output_attentions=True))
        out["then"] = _outcome(lambda: model(input_ids=local))
    out["not hf"] = _outcome(lambda: akd.context_parallel(torch.nn.Linear(2, 2)).__enter__())
    training = _model("llama dropout")
    with akd.context_parallel(training, layout="zigzag") as cp:
        out["dropout"] = _outcome(lambda: training(input_ids=cp.shard(ids)))
    return out


def capture(where: str, kind: str = "mistral", layer: int = 1) -> dict:
    """Capture a context-parallel forward on every rank (``where="all"``) or on rank 0 only;
    compare the captured q, k, lse and patterns of ``layer`` with one process's capture."""
    world, rank = dist.get_world_size(), dist.get_rank()
    model = _model(kind)
    ids, mask = _inputs(world, padded=True)
    records = where == "all" or rank == 0
    result = {}
    with akd.context_parallel(model, layout="zigzag") as cp, torch.no_grad():
        if records:
            with attnkit.capture(model, layers=[layer], heads=[0, 3]) as cap:
                model(input_ids=cp.shard(ids), attention_mask=cp.shard(mask))
        else:
            model(input_ids=cp.shard(ids), attention_mask=cp.shard(mask))
    result["records"] = records
    if not records:
        return result
    with torch.no_grad(), attnkit.capture(model, layers=[layer], heads=[0, 3]) as one:
        model(input_ids=ids, attention_mask=mask)
    result.update({
        "layers": cap.layers, "heads": cap.heads,
        "q": _err(cap.queries(layer), one.queries(layer)),
        "k": _err(cap.keys(layer), one.keys(layer)),
        "lse": _err(cap.lse(layer), one.lse(layer)),
        "pattern": max(_err(cap.pattern(layer, h, batch=b), one.pattern(layer, h, batch=b))
                       for h in (0, 3) for b in (0, 1)),
        "rows": _err(cap.pattern(layer, 3, rows=[2, 9, 15]),
                      one.pattern(layer, 3, rows=[2, 9, 15])),
        "options": {k: str(v) for k, v in cap.options(layer).items() if k != "mask"},
        "seq_len": [cap.seq_len(0), cap.seq_len(layer), one.seq_len(layer)],
    })
    # outside the block the model runs "attnkit" again, and a capture does not see a
    # context-parallel model switched by hand
    result["outside"] = _outcome(lambda: model.set_attn_implementation(
        "attnkit-context-parallel") or model(input_ids=ids))
    model.set_attn_implementation("attnkit")
    return result
