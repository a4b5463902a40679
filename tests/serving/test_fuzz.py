"""Fuzzing POST /predict: whatever the bytes, the service answers 200 or a JSON 4xx with a reason, never a
500, and stays up (issue 14)."""
import base64

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

from imgclass.serving.app import create_app  # noqa: E402

from fuzzing import ANY_BYTES  # noqa: E402
from helpers import local_client  # noqa: E402

_clients = {}


def client_for(run):
    if run not in _clients:
        _clients[run] = local_client(create_app(run, max_upload_mb=0.5, max_pixels=1_000_000))
    return _clients[run]


@settings(max_examples=120)
@given(blob=ANY_BYTES, as_json=st.booleans(), filename=st.text(max_size=40))
def test_predict_answers_every_body_with_json(trained_run, blob, as_json, filename):
    client = client_for(trained_run)
    if as_json:
        r = client.post("/predict", json={"image": base64.b64encode(blob).decode()})
    else:
        r = client.post("/predict", files={"file": (filename or "x", blob, "application/octet-stream")})
    assert r.status_code in (200, 400, 413, 415), (r.status_code, r.text)
    body = r.json()
    assert ("top_k" in body) if r.status_code == 200 else isinstance(body.get("detail"), str) and body["detail"]


@settings(max_examples=60)
@given(body=st.one_of(st.binary(max_size=512), st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["image", "images", "x"]), inner,
                                                                max_size=3), max_leaves=12).map(
    lambda v: __import__("json").dumps(v).encode())))
def test_batch_answers_any_json_with_a_4xx(trained_run, body):
    client = client_for(trained_run)
    r = client.post("/predict/batch", content=body, headers={"content-type": "application/json"})
    assert r.status_code in (200, 400, 413, 415), (r.status_code, r.text)
    assert isinstance(r.json(), dict)
    assert client.get("/health").status_code == 200
