"""Reach the Prefect API before a distributed run or a deploy: one line instead of a hang.

``check_api()`` asks ``PREFECT_API_URL``'s ``/health`` with a connect timeout of
:data:`CONNECT_SECONDS` and a read timeout of ``PREFECT_API_REQUEST_TIMEOUT`` (default
:data:`READ_SECONDS`), which it also sets for the rest of the process, so a closed port, a
server that accepts connections but never answers, or an error status is one ConfigError
naming the URL (issue 18.6: ``RuntimeError``, ``httpx.ConnectError``, no output for ≥ 180 s).
"""

from __future__ import annotations

import os

from ganviews.core.errors import ConfigError

CONNECT_SECONDS = 5.0  # a reachable server accepts at once
READ_SECONDS = 30.0  # default answer time of any API call (PREFECT_API_REQUEST_TIMEOUT wins)


def api_url() -> str:
    """PREFECT_API_URL from the environment or Prefect's profile; ConfigError when unset."""
    from prefect.settings import PREFECT_API_URL

    url = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
    if not url:
        raise ConfigError(
            "PREFECT_API_URL is not set: point it at the Prefect server, e.g. "
            "PREFECT_API_URL=http://HOST:4200/api (see `ganviews deploy`, docs/orchestration.md)"
        )
    return str(url).rstrip("/")


def check_api() -> str:
    """The API URL once ``/health`` answered; ConfigError naming the URL otherwise."""
    import httpx

    url = api_url()
    read = float(os.environ.setdefault("PREFECT_API_REQUEST_TIMEOUT", str(READ_SECONDS)))
    try:
        reply = httpx.get(f"{url}/health", timeout=httpx.Timeout(read, connect=CONNECT_SECONDS))
    except httpx.ConnectTimeout as exc:
        raise ConfigError(
            f"Prefect API {url}: no connection within {CONNECT_SECONDS:g} s ({exc}); check "
            "PREFECT_API_URL and the network"
        ) from None
    except httpx.ConnectError as exc:
        raise ConfigError(
            f"Prefect API {url}: cannot connect ({exc}); is the server running "
            "(`prefect server start`) and PREFECT_API_URL right?"
        ) from None
    except httpx.TimeoutException:
        raise ConfigError(
            f"Prefect API {url}: accepted the connection but did not answer within {read:g} s "
            "(PREFECT_API_REQUEST_TIMEOUT); is it a Prefect server, and is it overloaded?"
        ) from None
    except httpx.HTTPError as exc:
        raise ConfigError(f"Prefect API {url}: {type(exc).__name__}: {exc}") from None
    if reply.status_code != 200:
        raise ConfigError(f"Prefect API {url}: /health answered HTTP {reply.status_code}")
    return url
