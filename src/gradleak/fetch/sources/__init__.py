"""Source kinds (one module each, registered in :data:`SOURCES`): debian, pypi, npm, url."""
from . import debian, npm, pypi, url  # noqa: F401 - registration
from .base import SOURCES, SourceRef, parse_source, sha256_file, verify

__all__ = ["SOURCES", "SourceRef", "parse_source", "sha256_file", "verify"]
