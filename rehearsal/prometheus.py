"""Prometheus (Debian's package) for the rehearsal stack: its config, its command line, and queries.

It scrapes every app instance each second as job `transformation-engine`, so verification asks it
for the 5xx rate exactly as production monitoring would (docs/interfaces.md has the query), and the
propagation barrier asks it which instances are live (its active targets). The job's targets come
from a file (`file_sd_configs`, `targets/<job>.json` next to the config), which Prometheus watches:
`register()`/`deregister()` add or remove an instance without a restart, as a service discovery
would when an instance starts or stops.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import requests

JOB = "transformation-engine"
ERROR_RATE_QUERY = (
    'sum(rate(http_requests_total{{job="{job}",status=~"5.."}}[{window}]))'
    ' / clamp_min(sum(rate(http_requests_total{{job="{job}"}}[{window}])), 1e-9)'
)


class PrometheusError(RuntimeError):
    """Prometheus is missing, or did not answer a query."""


def binary() -> str:
    found = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if not found:
        raise PrometheusError(
            "Prometheus is not installed: run `make setup` (it apt-installs Debian's prometheus) and rerun."
        )
    return found


def targets_file(config: Path) -> Path:
    return config.parent / "targets" / f"{JOB}.json"


def _write_targets(config: Path, app_targets: dict[str, str]) -> None:
    groups = [{"targets": [address], "labels": {"app_instance": name}} for name, address in app_targets.items()]
    path = targets_file(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(groups, indent=2) + "\n")
    tmp.replace(path)  # atomic: Prometheus never reads half a file


def read_targets(config: Path) -> dict[str, str]:
    """The job's targets now: {app_instance name: host:port}."""
    path = targets_file(config)
    groups = json.loads(path.read_text()) if path.exists() else []
    return {group["labels"]["app_instance"]: group["targets"][0] for group in groups}


def write_config(path: Path, app_targets: dict[str, str], extra_jobs: dict[str, dict[str, str]] | None = None) -> None:
    """The scrape config: every instance (name -> host:port) each second, from the job's target file, and
    `extra_jobs` (job -> instances). JSON is valid YAML."""
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": JOB,
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "file_sd_configs": [{"files": [str(targets_file(path))], "refresh_interval": "5s"}],
            }
        ],
    }
    for job, targets in (extra_jobs or {}).items():
        config["scrape_configs"].append(
            {
                "job_name": job,
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "static_configs": [
                    {"targets": [address], "labels": {"app_instance": name}} for name, address in targets.items()
                ],
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_targets(path, app_targets)
    path.write_text(json.dumps(config, indent=2) + "\n")


def register(config: Path, name: str, address: str) -> None:
    """Add (or move) one instance of the job; Prometheus lists it within seconds."""
    _write_targets(config, {**read_targets(config), name: address})


def deregister(config: Path, name: str) -> None:
    _write_targets(config, {k: v for k, v in read_targets(config).items() if k != name})


def argv(config: Path, storage: Path, host: str, port: int) -> list[str]:
    return [
        binary(),
        f"--config.file={config}",
        f"--storage.tsdb.path={storage}",
        "--storage.tsdb.retention.time=2d",
        f"--web.listen-address={host}:{port}",
        "--log.level=warn",
    ]


def query(url: str, expr: str, timeout: float = 5) -> list[dict]:
    """An instant query; the result vector (list of {metric, value})."""
    try:
        response = requests.get(f"{url}/api/v1/query", params={"query": expr}, timeout=timeout)
        body = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise PrometheusError(f"Prometheus at {url} did not answer: {type(exc).__name__}: {exc}") from exc
    if body.get("status") != "success":
        raise PrometheusError(f"Prometheus refused the query: {body.get('error', response.text[:200])}")
    return body["data"]["result"]


def error_rate(url: str, window: str = "30s") -> float | None:
    """The 5xx share of the app's requests over `window` (None when no request was seen)."""
    result = query(url, ERROR_RATE_QUERY.format(job=JOB, window=window))
    return float(result[0]["value"][1]) if result else None


def targets_up(url: str) -> dict[str, str]:
    """Health of each scrape target of the job: {address: 'up'|'down'|'unknown'}."""
    try:
        body = requests.get(f"{url}/api/v1/targets", params={"state": "active"}, timeout=5).json()
    except (requests.RequestException, ValueError):
        return {}
    return {
        target["labels"].get("instance", "?"): target["health"]
        for target in body.get("data", {}).get("activeTargets", [])
        if target["labels"].get("job") == JOB
    }
