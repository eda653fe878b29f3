"""Log line formats of the server: the text default and ``ANATOMIX_LOG_FORMAT=json`` (one JSON
object per line, for log shippers). Records reach a formatter already stripped of patient
attributes by :mod:`serve.privacy` (installed before anything logs)."""

from __future__ import annotations

import json
import logging
import time

TEXT_FORMAT = "%(asctime)s [%(levelname)s] [%(name)s] %(message)s"


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message"}`` (and ``"exception"``: its type only) per line."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            out["exception"] = record.exc_info[0].__name__  # the type: a message may quote values
        return json.dumps(out, ensure_ascii=False)
