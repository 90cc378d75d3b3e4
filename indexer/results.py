"""What one image's pass through the pipeline comes to, and what a run reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Outcome:
    """An image's result: ``indexed`` (with its segment count), ``skipped`` or ``failed`` (why)."""

    status: str  # "indexed" | "skipped" | "failed"
    segments: int = 0
    error: str | None = None


@dataclass(frozen=True)
class Deferred:
    """An image another live indexer has claimed: looked at again after this indexer's pass."""

    path: Path
    image_id: str


@dataclass
class Failure:
    path: str
    error: str


@dataclass
class RunSummary:
    run_id: int | None = None
    indexed: int = 0
    skipped: int = 0
    failed: int = 0
    segments: int = 0
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage (read/decode summed over threads)

    def add(self, outcome: Outcome, path: Path) -> None:
        if outcome.status == "indexed":
            self.indexed += 1
            self.segments += outcome.segments
        elif outcome.status == "skipped":
            self.skipped += 1
        else:
            self.failed += 1
            self.failures.append(Failure(str(path), outcome.error or "unknown error"))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["images_per_s"] = round(self.indexed / self.seconds, 3) if self.seconds > 0 else None
        d["stages"] = {k: round(v, 3) for k, v in self.stages.items()}
        return d


class StageTimes:
    """Seconds per stage, added to from several threads (reader threads overlap the model)."""

    def __init__(self):
        import threading

        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def reset(self) -> None:
        with self._lock:
            self.seconds = {}
