"""The explorer app in-process (Starlette TestClient, as a browser on 127.0.0.1 would call it):
views equal the capture, every error is a documented 4xx, other Host names are turned away."""

import pytest
import torch
from fastapi.testclient import TestClient

from attnkit.inspect import patterns
from attnkit.inspect.running import run_and_capture
from attnkit.viz.server import MAX_TOKENS, create_app

TEXT = "a fluffy blue creature roamed the verdant forest"



@pytest.fixture(scope="module")
def client(minilm):
    model, tokenizer = minilm
    return TestClient(create_app("minilm", model=model, tokenizer=tokenizer),
                      base_url="http://127.0.0.1:8765")


@pytest.fixture(scope="module")
def sentence(client):
    body = client.post("/api/capture", json={"text": TEXT}).json()
    assert body["n"] == 13 and body["tokens"][:3] == ["[CLS]", "a", "fluffy"]
    return body


def test_view_matches_the_capture(client, sentence, minilm):
    model, tokenizer = minilm
    cap = run_and_capture(model, tokenizer, TEXT)
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
    r = client.post("/api/capture", json={"text": "x" * 60_000})
    assert r.status_code == 413 and "60,000 characters, far over the limit" in r.json()["detail"]
    # a lone surrogate (valid JSON, not valid Unicode text): a clear 422, not a 500
    r = client.post("/api/capture", content=b'{"text": "a \\ud800 b"}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and "lone surrogate" in r.json()["detail"]


@pytest.mark.parametrize("path, params, message", [
    ("/api/view", {"layer": "one", "head": 0}, "query.layer: Input should be a valid integer"),
    ("/api/top", {"layer": 0, "head": 0}, "query.query: Field required"),
    ("/api/view", {"layer": 0, "head": 0, "reduce": "median"}, "query.reduce: String should "
                                                              "match pattern"),
])
def test_malformed_parameters_are_422_with_one_message(client, sentence, path, params, message):
    r = client.get(path, params={"id": sentence["id"], **params})
    assert r.status_code == 422 and message in r.json()["detail"]
    assert client.post("/api/capture", json={"words": "x"}).json()["detail"] == \
        "text: Field required"


def test_other_host_names_are_turned_away(minilm):
    """DNS rebinding: a page on evil.example whose name now points at 127.0.0.1 sends
    Host: evil.example; the explorer answers only its own names."""
    model, tokenizer = minilm
    app = create_app("minilm", model=model, tokenizer=tokenizer)
    for host in ("127.0.0.1:8765", "localhost:8765", "[::1]:8765"):
        assert TestClient(app, base_url=f"http://{host}").get("/api/info").status_code == 200
    evil = TestClient(app, base_url="http://evil.example:8765")
    assert evil.get("/api/info").status_code == 400
    assert evil.post("/api/capture", json={"text": TEXT}).status_code == 400
    anywhere = TestClient(create_app("minilm", model=model, tokenizer=tokenizer,
                                     allowed_hosts=["*"]), base_url="http://evil.example")
    assert anywhere.get("/api/info").status_code == 200


def test_openapi_documents_the_errors_really_sent(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    documented = {path: sorted(int(c) for c in paths[path][verb]["responses"] if c != "200")
                  for path, verb in (("/api/capture", "post"), ("/api/view", "get"),
                                     ("/api/top", "get"))}
    assert documented == {"/api/capture": [413, 422], "/api/view": [400, 404, 422],
                          "/api/top": [400, 404, 422]}
    problem = paths["/api/view"]["get"]["responses"]["404"]["content"]["application/json"]
    assert problem["schema"]["$ref"].endswith("/Problem")
    assert spec["components"]["schemas"]["Problem"]["required"] == ["detail"]


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
    return TestClient(create_app("tiny-bert", model=model, tokenizer=minilm[1]),
                      base_url="http://127.0.0.1:8765")


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
