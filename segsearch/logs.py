"""Logging for the command line and the server: stdlib ``logging`` with a rich handler on a
terminal and one JSON object per line elsewhere (containers, log shippers)."""

from __future__ import annotations

import json
import logging
import sys
import time

FORMATS = ("auto", "rich", "json", "text")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)  # ``extra={"fields": {...}}``: machine-readable detail
        if isinstance(fields, dict):
            out.update({k: v for k, v in fields.items() if k not in out})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(*, verbose: int = 0, quiet: bool = False, fmt: str = "auto") -> str:
    """Set up the ``segsearch`` loggers (and uvicorn's, for ``serve``). Returns the format used."""
    fmt = fmt.lower()
    if fmt not in FORMATS:
        from segsearch.errors import ConfigError

        raise ConfigError(f"--log-format must be one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = "rich" if sys.stderr.isatty() else "json"
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    if fmt == "rich":
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
    for name in ("segsearch", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level if name != "uvicorn.access" or verbose else max(level, logging.WARNING))
        logger.propagate = False
    return fmt
