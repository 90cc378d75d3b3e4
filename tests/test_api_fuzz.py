"""Property-based API testing: schemathesis generates requests from the app's own OpenAPI schema
(valid and invalid), against an indexed library with an API key; no request may give a 5xx,
every response must match the schema, and requests without the key must be refused. Bounded so
it runs in CI in well under a minute."""

import pytest
import schemathesis
from conftest import png_bytes, scene, write
from hypothesis import HealthCheck, settings

from segsearch.models import amg_params
from segsearch.settings import Settings

from segsearch.api.app import create_app
from segsearch.api.services import Services

KEY = "fuzz-key-1234"


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory, tiny_sam, tiny_embedder):
    import tiny

    from segsearch import Library
    from segsearch.runtime import Models

    from segsearch.indexer.amg import make_mask_generator

    root = tmp_path_factory.mktemp("fuzz")
    for i, c in enumerate([(220, 30, 30), (30, 30, 220)]):
        write(root / "lib" / f"img{i}.png", png_bytes(scene(color=c, box=(20 + 20 * i, 30, 60, 40))))
    s = Settings(
        data=root / "data",
        checkpoints=root / "ckpt",
        sam="sam-test-tiny",
        clip="clip-test-tiny",
        max_upload_bytes=200_000,
        max_image_pixels=4_000_000,
        api_key=KEY,
        admin_key=KEY,  # the fuzzer reaches the admin routes too
        allowed_hosts=["127.0.0.1", "testserver"],  # schemathesis' ASGI transport says Host: testserver
        **tiny.TINY_AMG,
    )
    models = Models(
        s,
        sam_spec=tiny.TINY_SAM,
        embedder=tiny_embedder,
        mask_generator=make_mask_generator(s.amg, tiny_sam, **amg_params(s)),
    )
    with Library(settings=s, models=models) as library:
        library.index([str(root / "lib")])
    services = Services(s, embedder=tiny_embedder, sam=tiny_sam)
    app = create_app(s, services=services)
    from fastapi.testclient import TestClient

    with TestClient(
        base_url="http://127.0.0.1", app=app, headers={"X-API-Key": KEY}
    ) as client:  # lifespan runs for the whole module
        yield app, client
    services.close()


@pytest.fixture(scope="module")
def api_schema(fuzz_app):
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app[0])


def test_no_server_errors_and_responses_match_schema(api_schema):
    """Every operation of the schema, 30 generated cases each (schemathesis' own pytest plugin
    does not load under this pytest; driving its strategies with hypothesis is equivalent)."""
    from hypothesis import given
    from schemathesis.checks import positive_data_acceptance

    operations = [r.ok() for r in api_schema.get_all_operations()]
    assert len(operations) >= 8
    for op in operations:

        @given(case=op.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case):
            # every check except "schema-valid data must be accepted": a schema-valid base64 string
            # that is not an image, or a box outside the image, is rightly refused with a 4xx
            # (the API key is configured: schemathesis also checks missing/wrong keys are refused)
            case.call_and_validate(headers={"X-API-Key": KEY}, excluded_checks=[positive_data_acceptance])

        run()


def test_hostile_prompt_values_get_4xx(fuzz_app):
    """Values the schema allows as strings but code must still refuse cleanly: non-finite and
    enormous numbers, deep nesting, broken data URLs (schemathesis' generators missed these)."""
    import io
    import json

    from hypothesis import given
    from hypothesis import strategies as st

    client = fuzz_app[1]
    number = st.one_of(
        st.sampled_from(["inf", "-inf", "nan", "1e999", "-1e999", "9" * 400, "1e-400", "", "0x1f"]),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.integers(min_value=-(10**40), max_value=10**40).map(str),
    )
    box = st.lists(number, max_size=6).map(",".join)
    nested = st.integers(1, 60_000).map(lambda n: "[" * n + "1" + "]" * (n % 3))
    points = st.one_of(
        nested,
        st.lists(st.lists(number, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]"), max_size=70).map(
            lambda xs: "[" + ",".join(xs) + "]"
        ),
    )
    labels = st.one_of(nested, st.lists(number, max_size=70).map(lambda xs: "[" + ",".join(xs) + "]"))
    data_url = st.one_of(
        st.text(max_size=40).map(lambda t: "data:" + t),
        st.binary(max_size=60).map(lambda b: "data:image/png;base64," + b.hex()),
    )
    buf = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "PNG")
    png = buf.getvalue()

    @given(box=st.none() | box, points=st.none() | points, labels=st.none() | labels)
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def segment(box, points, labels):
        form = {k: v for k, v in (("box", box), ("points", points), ("labels", labels)) if v is not None}
        r = client.post("/v1/segment", files={"file": ("a.png", png, "image/png")}, data=form)
        assert r.status_code < 500, (form, r.status_code, r.text[:200])

    @given(b64=data_url)
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def search(b64):
        r = client.post(
            "/v1/search", content=json.dumps({"image_b64": b64}), headers={"content-type": "application/json"}
        )
        assert r.status_code < 500, (b64[:80], r.status_code, r.text[:200])

    segment()
    search()
