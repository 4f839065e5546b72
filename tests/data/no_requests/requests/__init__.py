"""Stands in for a controller without `requests` (tests put this folder first on PYTHONPATH)."""

raise ImportError("No module named 'requests' (hidden by tests/data/no_requests)")
