"""attnkit.distributed in one script: run it on W processes with

    torchrun --nproc-per-node 2 docs/distributed_example.py

(gloo on CPUs; the README shows the part between the markers, and the tests run this file.)
"""

# --- README example starts ---
import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForCausalLM

import attnkit
import attnkit.distributed as akd

dist.init_process_group("gloo")  # torchrun set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT
torch.manual_seed(0)  # the same whole tensors on every rank, for the check below
q, k, v = (torch.randn(1, 8, 4096, 64) for _ in range(3))

# exact attention over a sequence split between the ranks (each holds 4096 / W positions)
parts = [akd.shard(t, layout="zigzag") for t in (q, k, v)]  # (1, 8, 4096 / W, 64) each
out_local, lse_local = akd.attention(*parts, layout="zigzag", mode="ring", causal=True,
                                     return_lse=True)
out = akd.unshard(out_local, layout="zigzag")  # the whole (1, 8, 4096, 64), on every rank
assert torch.allclose(out, attnkit.attention(q, k, v, causal=True), atol=1e-5)

# a Hugging Face model, context-parallel: each rank feeds its shard of the tokens
model = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128,
                                     num_hidden_layers=2, num_attention_heads=8,
                                     num_key_value_heads=2)).eval()
ids = torch.randint(0, 100, (1, 1024))
with torch.no_grad(), akd.context_parallel(model, layout="zigzag") as cp:
    with attnkit.capture(model, layers=[1], heads=[0]) as cap:  # whole-sequence records
        logits = cp.unshard(model(input_ids=cp.shard(ids)).logits)  # (1, 1024, 100)
with torch.no_grad():
    one = model(input_ids=ids).logits  # one process's forward (the model runs "sdpa" again)
assert torch.allclose(logits, one, atol=1e-4)
print(f"rank {cp.rank} of {cp.size}: logits equal, pattern {tuple(cap.pattern(1, 0).shape)}")
dist.destroy_process_group()
# --- README example ends ---
