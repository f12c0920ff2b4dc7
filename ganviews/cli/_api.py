"""Reach the Prefect API before and during a distributed run: one line instead of a hang.

``check_api()`` asks ``PREFECT_API_URL``'s ``/health`` with a connect timeout of
:data:`CONNECT_SECONDS` and a read timeout of ``PREFECT_API_REQUEST_TIMEOUT`` (default
:data:`READ_SECONDS`), which it also sets for the rest of the process, so a closed port, a
server that accepts connections but never answers, or an error status is one ConfigError
naming the URL (issue 18.6: ``RuntimeError``, ``httpx.ConnectError``, no output for ≥ 180 s).

:class:`ApiWatch` asks the same ``/health`` again every few seconds while a distributed run
goes on: an API that stops answering in the middle of a run (where Prefect's own client
would retry each call for minutes, then its exit-time log flush would wait again) becomes
:class:`ApiUnavailable` within the read timeout plus one probe interval, raised by the
command's main thread (:func:`ganviews.cli._interrupt.run_interruptible`).
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


def read_seconds() -> float:
    """The read timeout of API calls: ``PREFECT_API_REQUEST_TIMEOUT``, default :data:`READ_SECONDS`
    (set for the rest of the process, so Prefect's own client uses it too)."""
    return float(os.environ.setdefault("PREFECT_API_REQUEST_TIMEOUT", str(READ_SECONDS)))


def check_api() -> str:
    """The API URL once ``/health`` answered; ConfigError naming the URL otherwise."""
    url = api_url()
    probe(url, read_seconds())
    return url


def probe(url: str, read: float) -> None:
    """One ``/health`` request; ConfigError naming ``url`` and the reason when it fails."""
    import httpx

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


class ApiUnavailable(ConfigError):
    """The API stopped answering during a run. As a program (``ganviews run``), the command
    exits at once after printing it, so Prefect's exit-time flush of queued logs and events
    does not wait on the silent server (:func:`ganviews.cli.main`)."""

    exit_now = True


class ApiWatch:
    """A daemon thread asking ``url``'s ``/health`` every ``interval`` seconds (default: a
    sixth of ``read``, at most 5 s) while the block runs; :attr:`failure` is set once the API
    has not answered for ``read`` seconds: one probe timed out, or every probe failed (closed
    port, error status) for that long. ``resume`` is the command that picks the run up."""

    def __init__(
        self, url: str, *, read: float, resume: str, interval: float | None = None
    ) -> None:
        import threading

        self.url, self.read, self.resume = url, read, resume
        self.interval = interval if interval is not None else min(5.0, read / 6)
        self.failure: ApiUnavailable | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="prefect-api-watch", daemon=True)

    def __enter__(self) -> ApiWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()

    def explain(self) -> None:
        """After the job failed: raise :attr:`failure`, or ApiUnavailable if one more probe
        fails (Prefect's client then failed on the silent API, e.g. "Failed to reach API");
        return when the API answers (the job's own error stands)."""
        if self.failure is None:
            try:
                probe(self.url, self.read)
            except ConfigError as exc:
                self.failure = self._unavailable(exc)
        if self.failure is not None:
            raise self.failure

    def _unavailable(self, exc: ConfigError) -> ApiUnavailable:
        return ApiUnavailable(
            f"{exc} (it stopped answering during the run; shard runs already on the workers "
            f"go on; when it answers again: {self.resume})"
        )

    def _watch(self) -> None:
        import time

        answered = time.monotonic()
        while not self._stop.wait(self.interval):
            try:
                probe(self.url, self.read)
                answered = time.monotonic()
            except ConfigError as exc:
                if time.monotonic() - answered >= self.read:
                    self.failure = self._unavailable(exc)
                    return
