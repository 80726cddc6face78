"""The explorer app in-process (Starlette TestClient, as a browser on 127.0.0.1 would call it):
views, K·Q, words, the overview and comparisons equal what the capture computes; capture files
are served with no model; every error is a documented 4xx; other Host names are turned away."""

import json

import pytest
import torch
from fastapi.testclient import TestClient

import attnkit
from attnkit.inspect import patterns
from attnkit.inspect.running import run_and_capture
from attnkit.viz.server import MAX_TOKENS, create_app
from attnkit.viz.views import align, pool_words, word_spans

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
    ("/api/why", {"layer": 0, "head": 0, "query": 13, "key": 0}, 400,
     "query 13 is out of range: layer 0 has 13 query positions"),
    ("/api/why", {"layer": 0, "head": 0, "query": 1, "key": 10, "words": 1}, 400,
     "key word 10 is out of range: the text has 10 words (0..9)"),
    ("/api/why", {"layer": 0, "head": 0, "query": 1, "key": 1, "id": "nope"}, 404,
     "unknown capture id"),
    ("/api/overview", {"layer": 6}, 400, "layer 6 is out of range"),
    ("/api/session", {"id": "nope"}, 404, "unknown capture id"),
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
    want = {"/api/capture": [409, 413, 422], "/api/session": [404, 422],
            "/api/view": [400, 404, 422], "/api/top": [400, 404, 422],
            "/api/why": [400, 404, 422], "/api/overview": [400, 404, 422],
            "/api/compare": [400, 404, 422]}
    documented = {path: sorted(int(c) for c in paths[path]["post" if path == "/api/capture"
                                                            else "get"]["responses"]
                               if c != "200") for path in want}
    assert documented == want
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


# ---- K·Q, words, the overview, comparisons ---------------------------------------------------

@pytest.fixture(scope="module")
def cap(minilm):
    return run_and_capture(*minilm, TEXT)


def test_why_is_the_captures_why(client, sentence, cap):
    body = client.get("/api/why", params={"id": sentence["id"], "layer": 2, "head": 3,
                                          "query": 4, "key": 2}).json()
    want = json.loads(json.dumps(cap.why(2, 3, 4, 2).to_dict()))  # as JSON carries it
    assert body.pop("words") is None
    assert body == want
    assert (body["query_token"], body["key_token"]) == ("creature", "fluffy")


def test_words_view_top_and_why(client, sentence, cap):
    spans = word_spans(cap.tokens)
    assert sentence["words"]["spans"] == [list(s) for s in spans]
    assert sentence["words"]["tokens"][5:8] == ["roamed", "the", "verdant"]
    view = client.get("/api/view", params={"id": sentence["id"], "layer": 1, "head": 4,
                                           "words": 1}).json()
    want = pool_words(cap.pattern(1, 4), spans)  # (10, 10)
    torch.testing.assert_close(torch.tensor(view["values"]), want, atol=1e-6, rtol=1e-5)
    top = client.get("/api/top", params={"id": sentence["id"], "layer": 1, "head": 4,
                                         "query": 7, "k": 3, "words": 1}).json()
    assert top["token"] == "verdant"
    assert [x["key"] for x in top["keys"]] == torch.topk(want[7], 3).indices.tolist()
    # a cell of words: the K·Q of its pieces with the largest weight
    body = client.get("/api/why", params={"id": sentence["id"], "layer": 1, "head": 4,
                                          "query": 7, "key": 5, "words": 1}).json()
    block = cap.pattern(1, 4)[8:11, 5:7]  # "ve ##rdan ##t" reading "roam ##ed"
    i, j = divmod(int(block.argmax()), 2)
    assert body["words"]["pieces"] == [8 + i, 5 + j] == [body["query"], body["key"]]
    assert body["weight"] == pytest.approx(float(block.max()), abs=1e-6)
    assert (body["words"]["query_word"], body["words"]["key_word"]) == ("verdant", "roamed")


def test_overview_of_every_head(client, sentence, cap):
    body = client.get("/api/overview", params={"id": sentence["id"], "layer": 4,
                                               "size": 8}).json()
    assert body["heads"] == list(range(12)) and body["block"] == 2
    assert body["sampled_rows"] is None
    for head in (0, 11):
        want = patterns.pooled(patterns.from_capture(cap, 4, head), size=8).values
        torch.testing.assert_close(torch.tensor(body["values"][head]), want, atol=1e-4,
                                   rtol=1e-3)


def test_compare_two_texts(client, sentence, cap, minilm):
    other_text = "a fluffy red creature roamed the verdant forest"
    other = client.post("/api/capture", json={"text": other_text}).json()
    body = client.get("/api/compare", params={"a": sentence["id"], "b": other["id"],
                                              "layer": 0, "head": 5}).json()
    pairs = align(sentence["tokens"], other["tokens"])
    assert body["aligned"] == 12 == len(pairs) and body["pairs"] == [list(p) for p in pairs]
    assert "blue" not in body["tokens"] and "red" not in body["tokens"]
    theirs = run_and_capture(*minilm, other_text)
    ia, ib = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    want = cap.pattern(0, 5)[ia][:, ia] - theirs.pattern(0, 5)[ib][:, ib]
    torch.testing.assert_close(torch.tensor(body["view"]["values"]), want, atol=1e-6, rtol=0)
    same = client.get("/api/compare", params={"a": sentence["id"], "b": sentence["id"],
                                              "layer": 0, "head": 5}).json()
    assert torch.tensor(same["view"]["values"]).abs().max() == 0


@pytest.fixture(scope="module")
def saved(cap, tmp_path_factory):
    return cap.save(tmp_path_factory.mktemp("explorer") / "run.safetensors", model_name="minilm")


def test_capture_files_are_served_with_no_model(saved, cap, monkeypatch):
    import attnkit.viz.server as server

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(server, "load_model", no_model)
    some = attnkit.load_capture(saved)
    some._records = {k: v for k, v in some._records.items() if k in (1, 3)}  # layers 1 and 3
    app = create_app(None, captures={"run.safetensors": attnkit.load_capture(saved),
                                     "some.safetensors": some})
    files = TestClient(app, base_url="http://127.0.0.1:8765")
    about = files.get("/api/info").json()
    assert about["can_run"] is False and about["model"] is None
    assert [f["name"] for f in about["files"]] == ["run.safetensors", "some.safetensors"]
    first, second = (f["id"] for f in about["files"])
    session = files.get("/api/session", params={"id": first}).json()
    assert session["tokens"] == cap.tokens and session["layers"] == list(range(6))
    view = files.get("/api/view", params={"id": first, "layer": 5, "head": 1}).json()
    torch.testing.assert_close(torch.tensor(view["values"]), cap.pattern(5, 1), atol=1e-7,
                               rtol=1e-5)  # JSON carries 6 significant digits
    r = files.post("/api/capture", json={"text": TEXT})
    assert r.status_code == 409
    assert r.json()["detail"] == ("this explorer serves capture files and has no model loaded "
                                  "to run a text; start it with attnkit serve --model NAME to "
                                  "run texts")
    r = files.get("/api/view", params={"id": second, "layer": 2, "head": 0})
    assert r.status_code == 400
    assert r.json()["detail"] == "layer 2 is out of range: some.safetensors holds layers 1, 3"
    r = files.get("/api/compare", params={"a": first, "b": second, "layer": 2, "head": 0})
    assert r.status_code == 400 and "some.safetensors holds layers 1, 3" in r.json()["detail"]
    same = files.get("/api/compare", params={"a": first, "b": second, "layer": 3,
                                             "head": 0}).json()
    assert same["aligned"] == 13 and torch.tensor(same["view"]["values"]).abs().max() == 0


def test_files_stay_while_texts_come_and_go(saved, minilm):
    model, tokenizer = minilm
    app = create_app("minilm", model=model, tokenizer=tokenizer,
                     captures={"run.safetensors": attnkit.load_capture(saved)})
    c = TestClient(app, base_url="http://127.0.0.1:8765")
    file_id = c.get("/api/info").json()["files"][0]["id"]
    ids = [c.post("/api/capture", json={"text": f"text number {i}"}).json()["id"]
           for i in range(6)]
    assert c.get("/api/session", params={"id": ids[0]}).status_code == 404  # the oldest text
    assert c.get("/api/session", params={"id": ids[-1]}).status_code == 200
    assert c.get("/api/session", params={"id": file_id}).status_code == 200
