"""The explorer app in-process (Starlette TestClient), and `attnkit serve` bound to 127.0.0.1."""

import os
import socket
import subprocess
import sys
import time

import pytest
import torch
from fastapi.testclient import TestClient

import attnkit
from attnkit.inspect import patterns
from attnkit.viz.server import MAX_TOKENS, create_app

TEXT = "a fluffy blue creature roamed the verdant forest"


@pytest.fixture(scope="module")
def minilm():
    return attnkit.load_model("minilm")


@pytest.fixture(scope="module")
def client(minilm):
    model, tokenizer = minilm
    return TestClient(create_app("minilm", model=model, tokenizer=tokenizer))


@pytest.fixture(scope="module")
def sentence(client):
    body = client.post("/api/capture", json={"text": TEXT}).json()
    assert body["n"] == 13 and body["tokens"][:3] == ["[CLS]", "a", "fluffy"]
    return body


def test_view_matches_the_capture(client, sentence, minilm):
    model, tokenizer = minilm
    cap = attnkit.models.run_and_capture(model, tokenizer, TEXT)
    view = client.get("/api/view", params={"id": sentence["id"], "layer": 3, "head": 7}).json()
    assert (view["row_block"], view["col_block"]) == (1, 1)  # short: exact weights
    got = torch.tensor(view["values"])
    torch.testing.assert_close(got, cap.pattern(3, 7), atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(got.sum(-1), torch.ones(13), atol=1e-4, rtol=0)
    zoom = client.get("/api/view", params={"id": sentence["id"], "layer": 3, "head": 7, "r0": 2,
                                           "r1": 5, "c0": 0, "c1": 4}).json()
    torch.testing.assert_close(torch.tensor(zoom["values"]), cap.pattern(3, 7)[2:5, 0:4],
                               atol=1e-7, rtol=1e-5)
    top = client.get("/api/top", params={"id": sentence["id"], "layer": 3, "head": 7,
                                         "query": 4, "k": 3}).json()
    assert top["token"] == "creature"
    assert [x["key"] for x in top["keys"]] == torch.topk(cap.pattern(3, 7)[4], 3).indices.tolist()


def test_page_is_served_with_a_strict_policy(client):
    r = client.get("/")
    assert r.status_code == 200 and "attnkit explorer" in r.text
    policy = r.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "http://" not in r.text and "https://" not in r.text
    assert client.get("/api/info").json()["max_tokens"] == 512  # MiniLM's own limit


@pytest.mark.parametrize("path, params, status, message", [
    ("/api/view", {"layer": 6, "head": 0}, 400,
     "layer 6 is out of range: minilm has 6 layers (0..5)"),
    ("/api/view", {"layer": 0, "head": 12}, 400,
     "head 12 is out of range: minilm has 12 heads per layer (0..11)"),
    ("/api/view", {"layer": 0, "head": 0, "r0": 5, "r1": 99}, 400, "rows range 5..99 is outside"),
    ("/api/top", {"layer": 0, "head": 0, "query": 13}, 400, "query 13 is out of range"),
    ("/api/view", {"layer": 0, "head": 0, "id": "nope"}, 404, "unknown capture id"),
])
def test_bad_requests_get_clear_4xx(client, sentence, path, params, status, message):
    r = client.get(path, params={"id": sentence["id"], **params})
    assert r.status_code == status
    assert message in r.json()["detail"]


def test_bad_texts(client):
    r = client.post("/api/capture", json={"text": "  "})
    assert r.status_code == 422 and r.json()["detail"] == "the text is empty; type a sentence first"
    r = client.post("/api/capture", json={"text": "word " * 600})
    assert r.status_code == 413
    assert r.json()["detail"] == ("the text is 602 tokens but this explorer takes at most 512 "
                                  "tokens with minilm; shorten it")


@pytest.fixture(scope="module")
def long_client(minilm):
    """A small random BERT with 16,384 positions (built from a config, no download)."""
    from transformers import BertConfig, BertModel

    import attnkit.hf  # noqa: F401

    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=MAX_TOKENS + 64)
    model = BertModel(config, add_pooling_layer=False).eval()
    model.set_attn_implementation("attnkit")
    return TestClient(create_app("tiny-bert", model=model, tokenizer=minilm[1]))


def test_long_input_is_explored_without_the_full_pattern(long_client, monkeypatch):
    text = "word " * (MAX_TOKENS - 2)  # + [CLS] and [SEP] = 16,384 tokens exactly
    body = long_client.post("/api/capture", json={"text": text}).json()
    assert body["n"] == MAX_TOKENS
    largest = []
    tile = patterns.HeadPattern.tile

    def watched(self, rows=slice(None), cols=slice(None)):
        out = tile(self, rows, cols)
        largest.append(out.numel())
        return out

    monkeypatch.setattr(patterns.HeadPattern, "tile", watched)
    view = long_client.get("/api/view", params={"id": body["id"], "layer": 1, "head": 1,
                                                "reduce": "mean"}).json()
    assert (view["row_block"], view["col_block"]) == (64, 64)
    values = torch.tensor(view["values"])  # (256, 256): mean over 64 x 64 blocks
    assert values.shape == (256, 256)
    # every query row sums to one, so the block means of one block row sum to 1 / 64
    torch.testing.assert_close(values.sum(-1), torch.full((256,), 1 / 64), atol=1e-4, rtol=0)
    assert max(largest) <= patterns.ROW_BUDGET < MAX_TOKENS ** 2
    # zoom down to single tokens
    zoom = long_client.get("/api/view", params={"id": body["id"], "layer": 1, "head": 1,
                                                "r0": 9000, "r1": 9010, "c0": 100,
                                                "c1": 120}).json()
    assert (zoom["row_block"], zoom["col_block"]) == (1, 1)
    assert torch.tensor(zoom["values"]).shape == (10, 20)
    r = long_client.post("/api/capture", json={"text": "word " * (MAX_TOKENS - 1)})
    assert r.status_code == 413
    assert "16,385 tokens but this explorer takes at most 16,384" in r.json()["detail"]


def test_serve_binds_to_localhost_by_default():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "attnkit", "serve", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        import psutil

        deadline = time.time() + 120
        listening = []
        while time.time() < deadline and not listening:
            assert proc.poll() is None, proc.stdout.read()
            listening = [c.laddr for c in psutil.Process(proc.pid).net_connections("inet")
                         if c.status == psutil.CONN_LISTEN]
            time.sleep(0.5)
        assert [(a.ip, a.port) for a in listening] == [("127.0.0.1", port)]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("argv, message", [
    (["serve", "--port", "70000"], "--port 70000 is not a port number; use 1..65535"),
    (["serve", "--model", "no/such-model-here", "--port", "8799"],
     "unknown model 'no/such-model-here'"),
])
def test_serve_errors(capsys, argv, message):
    from attnkit.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("attnkit serve: error: ") and message in err
