"""The TransformationEngine stand-in: a Flask app that routes `POST /transform` by the feature flag.

It plays REPO-APP-API-001 of SEQ-OF-004 against the real schema and the real Unleash SDK:

- flag on  -> the new logic: `documents.transform_version = 2` and a `transformation_jobs` row;
- flag off -> the legacy logic: `documents` (no `transform_version` named) and `transformation_results`.

`GET /documents/<id>` reads a document back through the same path: on the new one with its
`transform_version` and `transformation_jobs` rows (what the way-forward drill reads after a
rollback and a new deployment), on the legacy one with its `transformation_results`.

The flag is read per request from the SDK's in-memory state, which the SDK refreshes from Unleash
every `refresh_interval` seconds (15 s by default, as in production). With the flag on and the
feature's schema gone, the new path fails with 503: what a wrong rollback order looks like.

Run one instance:  python -m rehearsal.app --instance app-1 --port 8081
Secrets come from the environment only: TE_DB_DSN (the `app_rw` DSN), TE_UNLEASH_TOKEN (a client token).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg2
import psycopg2.errors
import psycopg2.pool
from flask import Flask, Response, g, jsonify, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from rehearsal.appdb import APP_APPLICATION_NAME

FLAG = "DataTransformationFeature"
DEFAULT_REFRESH_INTERVAL = 15.0

LEGACY_SQL = (
    "INSERT INTO documents (external_ref, payload, status) VALUES (%s, %s, 'transformed') RETURNING id",
    "INSERT INTO transformation_results (document_id, output, engine) VALUES (%s, %s, 'legacy')",
)
NEW_SQL = (
    "INSERT INTO documents (external_ref, payload, status, transform_version) "
    "VALUES (%s, %s, 'transformed', 2) RETURNING id",
    "INSERT INTO transformation_jobs (document_id, stage, pipeline_version, output) VALUES (%s, 'succeeded', 2, %s)",
)


class RequestError(ValueError):
    """The request body cannot be transformed (400)."""


# -- the feature flag -------------------------------------------------------------------------------
@dataclass
class FlagState:
    """What the SDK last fetched, as the app sees it."""

    last_refresh: datetime | None = None
    last_refresh_status: int | None = None
    # The ETag of the configuration the SDK evaluates (Unleash: "<hash>:<revision id>"): a 200 brings a
    # new one, a 304 confirms the one it has.
    config_version: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, response, *_args, **_kwargs):
        """requests' response hook, on every SDK call: a 200 or 304 of the features endpoint is a refresh."""
        if "/client/features" in response.url:
            with self.lock:
                self.last_refresh_status = response.status_code
                if response.status_code in (200, 304):
                    self.last_refresh = datetime.now(UTC)
                if response.status_code == 200:
                    self.config_version = response.headers.get("ETag")
        return response


class UnleashFlags:
    """The real Unleash Python SDK, polling every `refresh_interval` seconds."""

    def __init__(self, url: str, token: str, instance: str, refresh_interval: float, cache_dir: str | None):
        from UnleashClient import UnleashClient  # noqa: PLC0415 - heavy import, only when the SDK is used

        # The SDK and its scheduler log every poll at INFO: once a second per instance, forever.
        for noisy in ("UnleashClient", "apscheduler"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self.state = FlagState()
        self.refresh_interval = refresh_interval
        self.client = UnleashClient(
            url=url,
            app_name="transformation-engine",
            environment="production",
            instance_id=instance,
            refresh_interval=refresh_interval,  # seconds; APScheduler takes a float
            request_timeout=5,
            request_retries=0,
            disable_metrics=True,
            custom_headers={"Authorization": token},
            custom_options={"hooks": {"response": [self.state.record]}},
            cache_directory=cache_dir,
        )

    def start(self) -> None:
        self.client.initialize_client()

    def is_enabled(self, name: str) -> bool:
        return self.client.is_enabled(name)

    def stop(self) -> None:
        self.client.destroy()


# -- the database ---------------------------------------------------------------------------------
class Database:
    """A small thread-safe pool of `app_rw` connections; a broken connection is discarded, not reused."""

    def __init__(self, dsn: str, size: int, statement_timeout_ms: int):
        options = f"-c statement_timeout={statement_timeout_ms} -c application_name={APP_APPLICATION_NAME}"
        # minconn = maxconn: psycopg2 closes a returned connection when the pool holds minconn already,
        # and a new connection costs a SCRAM handshake (several ms of CPU on both sides).
        self.pool = psycopg2.pool.ThreadedConnectionPool(size, size, dsn, options=options, connect_timeout=5)

    @contextmanager
    def transaction(self):
        conn = self.pool.getconn()
        broken = False
        try:
            with conn, conn.cursor() as cur:  # commits on success, rolls back on error
                yield cur
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            broken = True
            raise
        finally:
            self.pool.putconn(conn, close=broken or bool(conn.closed))

    def close(self) -> None:
        self.pool.closeall()


def _output(payload: dict, engine: str) -> dict:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return {"engine": engine, "fields": sorted(payload), "sha256": hashlib.sha256(canonical.encode()).hexdigest()}


def transform(db: Database, new_path: bool, external_ref: str, payload: dict) -> int:
    """One document through the legacy or the new logic, in one transaction; the document id."""
    insert_document, insert_result = NEW_SQL if new_path else LEGACY_SQL
    output = _output(payload, "v2" if new_path else "legacy")
    with db.transaction() as cur:
        cur.execute(insert_document, (external_ref, json.dumps(payload)))
        (document_id,) = cur.fetchone()
        cur.execute(insert_result, (document_id, json.dumps(output)))
    return document_id


NEW_READ = (
    "SELECT id, external_ref, status, transform_version FROM documents WHERE id = %s",
    "SELECT id, stage::text, pipeline_version, output FROM transformation_jobs WHERE document_id = %s ORDER BY id",
)
LEGACY_READ = (
    "SELECT id, external_ref, status FROM documents WHERE id = %s",
    "SELECT id, engine, output FROM transformation_results WHERE document_id = %s ORDER BY id",
)


def read_document(db: Database, new_path: bool, document_id: int) -> dict | None:
    """One document and what its path wrote for it (jobs, or legacy results); None if there is none."""
    read_document_row, read_rows = NEW_READ if new_path else LEGACY_READ
    with db.transaction() as cur:
        cur.execute(read_document_row, (document_id,))
        row = cur.fetchone()
        if row is None:
            return None
        document = dict(zip([c.name for c in cur.description], row, strict=True))
        cur.execute(read_rows, (document_id,))
        names = [c.name for c in cur.description]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    return {"document": document, "jobs" if new_path else "results": rows}


def _parse(body: object) -> tuple[str, dict]:
    if body is None:
        return f"req-{uuid.uuid4().hex}", {}
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    external_ref = body.get("external_ref") or f"req-{uuid.uuid4().hex}"
    payload = body.get("payload", {})
    if not isinstance(external_ref, str) or not isinstance(payload, dict):
        raise RequestError("external_ref must be a string and payload a JSON object")
    return external_ref, payload


# -- the web app ----------------------------------------------------------------------------------
def _document_route(app: Flask, instance: str, flags, db: Database, flag_name: str) -> None:
    """GET /documents/<id>: the document read back through the path the flag picks now."""

    @app.get("/documents/<int:document_id>")
    def _document(document_id: int):
        new_path = flags.is_enabled(flag_name)
        path = "new" if new_path else "legacy"
        try:
            found = read_document(db, new_path, document_id)
        except psycopg2.Error as exc:
            return jsonify(error=type(exc).__name__, instance=instance, path=path), 503
        if found is None:
            return jsonify(error="NotFound", instance=instance, path=path), 404
        return jsonify(instance=instance, path=path, **found)


class AspNetCoreMetrics:
    """The names ASP.NET Core 8 exports through OpenTelemetry's Prometheus exporter: the histogram
    http.server.request.duration (s) of meter Microsoft.AspNetCore.Hosting, with the attributes
    http.route, http.request.method, http.response.status_code, url.scheme, network.protocol.version
    (learn.microsoft.com/dotnet/core/diagnostics/built-in-metrics-aspnetcore), dots as underscores
    and the unit as suffix: http_server_request_duration_seconds_{bucket,count,sum}."""

    BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)  # OTel's defaults

    def __init__(self, registry: CollectorRegistry):
        self.duration = Histogram(
            "http_server_request_duration_seconds",
            "Duration of HTTP server requests.",
            [
                "http_route",
                "http_request_method",
                "http_response_status_code",
                "url_scheme",
                "network_protocol_version",
            ],
            registry=registry,
            buckets=self.BUCKETS,
        )
        for status in ("200", "503"):
            self.duration.labels("/transform", "POST", status, "http", "1.1")

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.duration.labels(route, method, str(status), "http", "1.1").observe(seconds)


def create_app(  # noqa: PLR0915 - one app, its routes read top-down
    instance: str, flags, db: Database, flag_name: str = FLAG, metrics_style: str = "rehearsal"
) -> Flask:
    disable_created_metrics()  # no *_created series: half the exposition, nothing we query
    app = Flask(f"transformation-engine-{instance}")
    registry = CollectorRegistry()
    aspnetcore = AspNetCoreMetrics(registry) if metrics_style == "aspnetcore" else None
    requests_total = Counter(
        "http_requests",
        "Finished HTTP requests.",
        ["path", "method", "status"],
        registry=None if aspnetcore else registry,
    )
    duration = Histogram(
        "http_request_duration_seconds",
        "HTTP request duration.",
        ["path"],
        registry=None if aspnetcore else registry,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    )
    flag_gauge = Gauge("transformation_flag_enabled", "1 when this instance takes the new path.", registry=registry)
    # Series that exist from the start at 0: rate() cannot see the first increment of a new series,
    # so a first burst of 503s would be invisible to the error-rate query without this.
    for status in ("200", "400", "409", "500", "503"):
        requests_total.labels("/transform", "POST", status)
    refresh_gauge = Gauge(
        "transformation_flag_last_refresh_timestamp_seconds",
        "When this instance last fetched its flags from Unleash.",
        registry=registry,
    )

    @app.before_request
    def _start_timer():
        g.started = time.perf_counter()

    @app.after_request
    def _count(response: Response):
        rule = request.url_rule.rule if request.url_rule else "unmatched"
        if rule != "/metrics":
            seconds = time.perf_counter() - g.get("started", time.perf_counter())
            if aspnetcore:
                aspnetcore.observe(rule, request.method, response.status_code, seconds)
            else:
                requests_total.labels(rule, request.method, str(response.status_code)).inc()
                duration.labels(rule).observe(seconds)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        code = getattr(exc, "code", None)
        if isinstance(code, int) and 400 <= code < 500:  # werkzeug's HTTPExceptions: 404, 405, ...
            return jsonify(error=type(exc).__name__, detail=str(exc)), code
        app.logger.exception("unexpected error")
        return jsonify(error=type(exc).__name__, instance=instance), 500

    @app.post("/transform")
    def _transform():
        new_path = flags.is_enabled(flag_name)
        path = "new" if new_path else "legacy"
        try:
            external_ref, payload = _parse(request.get_json(silent=True))
        except RequestError as exc:
            return jsonify(error="RequestError", detail=str(exc), instance=instance, path=path), 400
        try:
            document_id = transform(db, new_path, external_ref, payload)
        except psycopg2.errors.UniqueViolation:
            return jsonify(error="UniqueViolation", detail="external_ref exists", instance=instance, path=path), 409
        except psycopg2.Error as exc:
            # The error class only: a DB message may quote data, and this is what a client sees.
            return jsonify(error=type(exc).__name__, instance=instance, path=path), 503
        return jsonify(instance=instance, path=path, document_id=document_id, external_ref=external_ref)

    _document_route(app, instance, flags, db, flag_name)

    @app.get("/status")
    def _status():
        # Read the fetch time BEFORE evaluating the flag: the answer then never claims a fetch newer than
        # the configuration the path came from (a fetch landing in between only makes it look older).
        with flags.state.lock:
            last, last_status, version = (
                flags.state.last_refresh,
                flags.state.last_refresh_status,
                flags.state.config_version,
            )
        enabled = flags.is_enabled(flag_name)
        return jsonify(
            instance=instance,
            flag=flag_name,
            flag_enabled=enabled,
            path="new" if enabled else "legacy",
            last_refresh=last.isoformat() if last else None,
            last_refresh_status=last_status,
            config_version=version,
            refresh_interval=float(flags.refresh_interval),
        )

    @app.get("/healthz")
    def _healthz():
        problems = []
        if flags.state.last_refresh is None:
            problems.append("flags never fetched from Unleash")
        try:
            with db.transaction() as cur:
                cur.execute("SELECT 1")
        except psycopg2.Error as exc:
            problems.append(f"database: {type(exc).__name__}")
        if aspnetcore:  # ASP.NET Core's MapHealthChecks: text/plain Healthy (200) or Unhealthy (503)
            return Response("Unhealthy" if problems else "Healthy", 503 if problems else 200, mimetype="text/plain")
        body = {"instance": instance, "status": "fail" if problems else "ok", "problems": problems}
        return jsonify(body), 503 if problems else 200

    @app.get("/metrics")
    def _metrics():
        flag_gauge.set(1 if flags.is_enabled(flag_name) else 0)
        if flags.state.last_refresh:
            refresh_gauge.set(flags.state.last_refresh.timestamp())
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rehearsal.app", description=__doc__.split("\n\n")[0])
    parser.add_argument("--instance", required=True, help="instance name, e.g. app-1")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--unleash-url", required=True, help="Unleash base URL (the SDK talks to <url>/api)")
    parser.add_argument(
        "--refresh-interval",
        type=float,
        default=float(os.environ.get("TE_REFRESH_INTERVAL", DEFAULT_REFRESH_INTERVAL)),
        help="seconds between flag fetches (env TE_REFRESH_INTERVAL; default 15, as in production)",
    )
    parser.add_argument("--flag", default=FLAG)
    parser.add_argument("--cache-dir", help="the SDK's file cache")
    parser.add_argument("--threads", type=int, default=6, help="waitress worker threads = DB pool size")
    parser.add_argument("--statement-timeout-ms", type=int, default=10000)
    parser.add_argument(
        "--metrics-style",
        choices=("rehearsal", "aspnetcore"),
        default="rehearsal",
        help="metric names of /metrics (and /healthz's body): this app's, or ASP.NET Core 8's through OpenTelemetry",
    )
    args = parser.parse_args(argv)
    missing = [name for name in ("TE_DB_DSN", "TE_UNLEASH_TOKEN") if not os.environ.get(name)]
    if missing:
        print(
            f"rehearsal.app: set {' and '.join(missing)} in the environment (secrets are not options).", file=sys.stderr
        )
        return 2
    if args.refresh_interval <= 0:
        print("rehearsal.app: --refresh-interval must be a positive number of seconds.", file=sys.stderr)
        return 2

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {args.instance} %(name)s %(levelname)s %(message)s")
    import waitress  # noqa: PLC0415

    db = Database(os.environ["TE_DB_DSN"], size=args.threads, statement_timeout_ms=args.statement_timeout_ms)
    flags = UnleashFlags(
        args.unleash_url.rstrip("/") + "/api",
        os.environ["TE_UNLEASH_TOKEN"],
        args.instance,
        args.refresh_interval,
        args.cache_dir,
    )
    flags.start()
    app = create_app(args.instance, flags, db, args.flag, args.metrics_style)
    waitress.serve(app, host=args.host, port=args.port, threads=args.threads, ident=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
