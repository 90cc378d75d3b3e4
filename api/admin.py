"""Routes that manage the library rather than query it: index jobs, info, doctor."""

from __future__ import annotations

import os

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from segsearch.api import schemas
from segsearch.api.deps import ServicesDep, is_owner, require_admin
from segsearch.api.errors import ProblemError
from segsearch.api.services import Services

router = APIRouter(prefix="/v1", dependencies=[Depends(require_admin)])
NOT_FOUND = {404: {"model": schemas.Problem, "description": "Unknown job"}}


def _job(services: Services, job_id: str) -> dict:
    job = services.jobs.get(job_id)
    if job is None:
        raise ProblemError(404, "Job not found", f"no job with id {job_id!r}")
    return job


@router.post(
    "/jobs/index",
    response_model=schemas.Job,
    status_code=202,
    responses={422: {"model": schemas.Problem}, 429: {"model": schemas.Problem}},
)
def submit_index_job(body: schemas.IndexJobRequest, request: Request, services: ServicesDep):
    """Index files, folders or globs under the server's library roots (``serve --root``; relative
    to a root, or absolute under one) in the background. Poll ``GET /v1/jobs/{id}``; ``DELETE``
    cancels. A path outside the roots and a path that does not exist get the same 422."""
    s = services.settings
    if len(body.paths) > s.max_job_paths:
        raise ProblemError(
            422, "Invalid request", f"{len(body.paths):,} paths; a job takes at most {s.max_job_paths:,}"
        )
    owner = is_owner(request)
    if owner:  # the CLI of the data directory's owner: absolute paths as that user sees them
        missing = set(services.library.missing_inputs(body.paths))
        bad = next((p for p in body.paths if p in missing or not os.path.isabs(p)), None)
        if bad is not None:
            raise ProblemError(422, "Invalid request", f"no such file, folder or glob match on the server: {bad}")
        paths = list(body.paths)
    else:  # outside the roots or missing: segsearch.roots.OutsideRoots, a QueryError (422)
        paths = [services.roots.resolve(p) for p in body.paths]
    job = services.jobs.submit("index", {"paths": paths, "force": body.force, "owner": owner})
    return JSONResponse(
        schemas.Job(**job).model_dump(), status_code=202, headers={"Location": f"/v1/jobs/{job['job_id']}"}
    )


@router.post("/jobs/repair", response_model=schemas.Job, status_code=202)
def submit_repair_job(services: ServicesDep):
    """``segsearch doctor --repair`` as a job: find drift and fix it."""
    job = services.jobs.submit("repair", {})
    return JSONResponse(
        schemas.Job(**job).model_dump(), status_code=202, headers={"Location": f"/v1/jobs/{job['job_id']}"}
    )


@router.get("/jobs", response_model=list[schemas.Job])
def list_jobs(
    services: ServicesDep,
    limit: int = Query(50, ge=1, le=100),
    offset: int = Query(0, ge=0, le=1_000_000),
):
    """Jobs, newest first, a page at a time (finished ones are kept SEGSEARCH_JOB_RETENTION_DAYS)."""
    return services.jobs.list(limit=limit, offset=offset)


@router.get("/jobs/{job_id}", response_model=schemas.Job, responses=NOT_FOUND)
def get_job(job_id: str, services: ServicesDep):
    """Progress (files done/total, segments, failures, seconds per stage) and, once finished, the
    run summary."""
    return _job(services, job_id)


@router.delete("/jobs/{job_id}", response_model=schemas.Job, responses=NOT_FOUND)
def cancel_job(job_id: str, services: ServicesDep):
    """Cancel a queued or running job. Images already written stay indexed."""
    _job(services, job_id)
    return services.jobs.cancel(job_id)


@router.get("/info", response_model=schemas.Info)
def info(services: ServicesDep):
    """The library: its recorded models, counts, last run and size on disk."""
    d = services.library.info()
    return {**d, "ready": services.ready, "problem": services.load_error}


@router.get("/doctor")
def doctor(services: ServicesDep) -> dict:
    """``segsearch doctor``: drift between SQL records and vectors (see ``segsearch.indexer.doctor``)."""
    return services.library.doctor(models=services.models)
