"""A stand-in Qdrant server for tests: the REST routes segsearch uses, served by FastAPI over
``QdrantClient(":memory:")`` (the client's local mode, which implements Qdrant's semantics in
Python). No Qdrant server binary can run on our machines; this lets several processes share one
vector store over loopback HTTP, exactly as they would share a real server, and lets tests see
what segsearch sends (collection options) and make the server fail (retries).

    python tests/support/qdrant_shim.py --port 6333

Test hooks (not Qdrant API): ``GET /_shim/log`` (create-collection bodies, calls per route),
``POST /_shim/fail {"route": "upsert", "times": 2, "status": 503}``.
"""

from __future__ import annotations

import argparse
import threading
from collections import Counter

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter
from qdrant_client import QdrantClient
from qdrant_client.http import models as m

app = FastAPI()
client = QdrantClient(location=":memory:")
lock = threading.Lock()  # local mode is not thread-safe
calls: Counter = Counter()
created: dict[str, dict] = {}
indexes: dict[str, list] = {}
failures: dict[str, list] = {}  # route -> [times left, status]


def ok(result) -> JSONResponse:
    if hasattr(result, "model_dump"):
        result = result.model_dump(mode="json")
    elif isinstance(result, list):
        result = [r.model_dump(mode="json") if hasattr(r, "model_dump") else r for r in result]
    return JSONResponse({"result": result, "status": "ok", "time": 0.0})


def parse(model, body):
    return TypeAdapter(model).validate_python(body)


async def handle(route: str, request: Request, fn):
    calls[route] += 1
    f = failures.get(route)
    if f and f[0] > 0:
        f[0] -= 1
        return JSONResponse({"status": {"error": "injected failure"}, "time": 0.0}, status_code=f[1])
    body = await request.json() if request.method in ("POST", "PUT") else None
    try:
        with lock:
            return ok(fn(body))
    except ValueError as exc:  # local mode's "not found"/"already exists" and validation errors
        status = 409 if "already exists" in str(exc) else 404
        return JSONResponse({"status": {"error": str(exc)}, "time": 0.0}, status_code=status)


UPDATED = m.UpdateResult(operation_id=0, status=m.UpdateStatus.COMPLETED)


@app.get("/")
async def version():
    return {"title": "qdrant - vector search engine (segsearch test shim)", "version": "1.15.0"}


@app.get("/collections")
async def collections(request: Request):
    return await handle("collections", request, lambda _: client.get_collections())


@app.get("/collections/{name}/exists")
async def exists(name: str, request: Request):
    return await handle("exists", request, lambda _: m.CollectionExistence(exists=client.collection_exists(name)))


@app.put("/collections/{name}")
async def create_collection(name: str, request: Request):
    def run(body):
        req = parse(m.CreateCollection, body)
        if client.collection_exists(name):
            raise ValueError(f"Collection `{name}` already exists!")
        created[name] = body
        return client.create_collection(name, vectors_config=req.vectors)

    return await handle("create_collection", request, run)


@app.get("/collections/{name}")
async def get_collection(name: str, request: Request):
    return await handle("get_collection", request, lambda _: client.get_collection(name))


@app.put("/collections/{name}/index")
async def create_index(name: str, request: Request):
    def run(body):
        req = parse(m.CreateFieldIndex, body)
        indexes.setdefault(name, []).append([req.field_name, body.get("field_schema")])
        return UPDATED

    return await handle("create_index", request, run)


@app.put("/collections/{name}/points")
async def upsert(name: str, request: Request):
    def run(body):
        req = parse(m.PointInsertOperations, body)
        return client.upsert(name, points=req.points if isinstance(req, m.PointsList) else req.batch)

    return await handle("upsert", request, run)


@app.post("/collections/{name}/points/delete")
async def delete(name: str, request: Request):
    return await handle("delete", request, lambda body: client.delete(name, parse(m.PointsSelector, body)))


@app.post("/collections/{name}/points/payload")
async def set_payload(name: str, request: Request):
    def run(body):
        req = parse(m.SetPayload, body)
        return client.set_payload(name, req.payload, points=req.filter if req.filter else req.points)

    return await handle("set_payload", request, run)


@app.post("/collections/{name}/points/query")
async def query(name: str, request: Request):
    def run(body):
        req = parse(m.QueryRequest, body)
        q = req.query.nearest if isinstance(req.query, m.NearestQuery) else req.query
        return client.query_points(
            name,
            query=q,
            query_filter=req.filter,
            limit=req.limit or 10,
            offset=req.offset,
            with_payload=req.with_payload,
            with_vectors=req.with_vector,
            score_threshold=req.score_threshold,
            search_params=req.params,
        )

    return await handle("query", request, run)


@app.post("/collections/{name}/points")
async def retrieve(name: str, request: Request):
    def run(body):
        req = parse(m.PointRequest, body)
        return client.retrieve(name, req.ids, with_payload=req.with_payload, with_vectors=req.with_vector)

    return await handle("retrieve", request, run)


@app.post("/collections/{name}/points/count")
async def count(name: str, request: Request):
    def run(body):
        req = parse(m.CountRequest, body)
        return client.count(name, count_filter=req.filter, exact=req.exact)

    return await handle("count", request, run)


@app.post("/collections/{name}/points/scroll")
async def scroll(name: str, request: Request):
    def run(body):
        req = parse(m.ScrollRequest, body)
        points, nxt = client.scroll(
            name,
            scroll_filter=req.filter,
            limit=req.limit or 10,
            offset=req.offset,
            with_payload=req.with_payload,
            with_vectors=req.with_vector,
        )
        return m.ScrollResult(points=points, next_page_offset=nxt)

    return await handle("scroll", request, run)


@app.get("/_shim/log")
async def log():
    return {"calls": dict(calls), "created": created, "indexes": indexes}


@app.post("/_shim/fail")
async def fail(request: Request):
    body = await request.json()
    failures[body["route"]] = [int(body.get("times", 1)), int(body.get("status", 503))]
    return {"ok": True}


if __name__ == "__main__":
    import uvicorn

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=6333)
    args = ap.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
