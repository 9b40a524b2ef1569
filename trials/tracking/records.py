"""What a trial's run holds, whatever the backend: terminal statuses, tags taken from a
result, the metric history, flattened params, and URIs with their credentials redacted."""
from __future__ import annotations

import logging
import math
import re
import time
from typing import Any, Optional

logger = logging.getLogger(__name__)

# A trial's state -> its run's terminal status.
RUN_STATUS = {"completed": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}
# Tags of a trial's run taken from its result payload: what ran, with which products, where.
RESULT_TAGS = ("backend", "precision", "step_mode", "node")


def result_tags(payload: dict) -> dict[str, str]:
    """The RESULT_TAGS of a trial's result payload ("" where the payload has none)."""
    return {key: str(payload.get(key, "")) for key in RESULT_TAGS}


def test_metrics(payload: dict) -> dict[str, float]:
    """A completed trial's one test evaluation (in its final metrics only, never in the history
    the pruner saw); {} otherwise."""
    from carvelab.trials.tasks.base import TEST_METRICS

    return {k: v for k, v in (payload.get("metrics") or {}).items() if k in TEST_METRICS}


def logged_history(payload: dict) -> list:
    """What a trial's run holds, as (step, metrics): its evaluations, then its test evaluation
    (``test_metrics``) at its last step."""
    history, final = list(payload.get("history", [])), test_metrics(payload)
    return history + [(int(payload.get("steps", 0)), final)] if final else history


def finite_number(v) -> bool:
    """A metric value that can be logged and ranked: a number, not None, NaN or Inf."""
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested mapping -> {"a.b": "value"} with values as strings (run params)."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    out[prefix[:-1]] = str(data)
    return out


_CRED = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*)(:(?P<pw>[^@/\s]*))?@")
_QUERY_SECRET = re.compile(r"(?P<key>[?&](password|passwd|pwd|token|secret|api_key)=)[^&#\s]*", re.IGNORECASE)


def redact(uri: Optional[str]) -> Optional[str]:
    """``postgresql://bob:secret@host/db`` -> ``postgresql://bob:***@host/db``."""
    if uri is None:
        return None
    return redact_text(uri)


def redact_text(text: str) -> str:
    """``redact`` applied to every URI inside a block of text."""
    text = _CRED.sub(lambda m: f"{m['scheme']}{m['user']}:***@" if m["pw"] is not None else m.group(0), text)
    return _QUERY_SECRET.sub(lambda m: f"{m['key']}***", text)


def retry(fn, *args, attempts: int = 8, first_delay: float = 0.5, **kwargs):
    """Call ``fn``, retrying transient failures (a tracking server restarting) with back-off."""
    delay = first_delay
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # backends raise several types for connection trouble
            if attempt == attempts - 1 or not _transient(exc):
                raise
            logger.warning("tracking call %s failed (%s); retrying in %.1fs", fn.__name__, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def _transient(exc: Exception) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(s in text for s in ("connection", "timeout", "temporarily", "503", "502", "locked", "max retries"))
