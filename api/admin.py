"""Routes that manage the library rather than query it: index jobs, info, doctor."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from segsearch.api import schemas
from segsearch.api.deps import ServicesDep, require_api_key
from segsearch.api.errors import ProblemError
from segsearch.api.services import Services

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])
NOT_FOUND = {404: {"model": schemas.Problem, "description": "Unknown job"}}


def _job(services: Services, job_id: str) -> dict:
    job = services.jobs.get(job_id)
    if job is None:
        raise ProblemError(404, "Job not found", f"no job with id {job_id!r}")
    return job


@router.post("/jobs/index", response_model=schemas.Job, status_code=202, responses={422: {"model": schemas.Problem}})
def submit_index_job(body: schemas.IndexJobRequest, services: ServicesDep):
    """Index files, folders or globs (paths as the server sees them) in the background. Poll
    ``GET /v1/jobs/{id}``; ``DELETE`` cancels."""
    import os

    relative = [p for p in body.paths if not os.path.isabs(p)]
    if relative:
        raise ProblemError(422, "Invalid request", f"paths must be absolute (as the server sees them): {relative[0]}")
    missing = services.library.missing_inputs(body.paths)  # the caller's error, said now rather than in the job
    if missing:
        raise ProblemError(422, "Invalid request", f"no such file, folder or glob match on the server: {missing[0]}")
    job = services.jobs.submit("index", {"paths": body.paths, "force": body.force})
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
def list_jobs(services: ServicesDep):
    return services.jobs.list()


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
