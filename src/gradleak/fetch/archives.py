"""Opening the archives the registries serve, without installing anything.

* ``.deb``: an ``ar`` archive (``!<arch>`` magic, 60-byte member headers) whose ``data.tar.*`` member
  holds the files (Debian policy, deb(5)); read here directly, so no ``dpkg`` is needed for gz / xz /
  bz2 / uncompressed data (a ``.zst`` member falls back to ``dpkg-deb --fsys-tarfile`` via the runner);
* ``.tgz`` / ``.tar.gz`` (npm packs, sdists) with :mod:`tarfile`, ``.whl`` / ``.zip`` with :mod:`zipfile`.

Only members matching one of the ``take`` globs (:func:`fnmatch.fnmatch` on the member path without a
leading ``./``) are written, regular files only, through tarfile's ``data`` filter (no absolute paths,
no ``..``, no links or devices) — an archive never writes outside ``dest``.
"""
from __future__ import annotations

import fnmatch
import io
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from .runner import FetchError, Runner

AR_MAGIC = b"!<arch>\n"


def wanted(name: str, take: tuple[str, ...]) -> str | None:
    """The member path (normalised) when it matches a ``take`` glob, else None."""
    norm = name[2:] if name.startswith("./") else name.lstrip("/")
    parts = PurePosixPath(norm).parts
    if not norm or ".." in parts:
        return None
    return norm if any(fnmatch.fnmatch(norm, g) for g in take) else None


def ar_members(data: bytes, what: str) -> dict[str, bytes]:
    """Members of an ``ar`` archive (GNU/BSD common format, as .deb uses)."""
    if not data.startswith(AR_MAGIC):
        raise FetchError(f"fetch: {what}: not a .deb (ar) archive; allowed: a Debian binary package")
    out, pos = {}, len(AR_MAGIC)
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise FetchError(f"fetch: {what}: corrupt ar header; allowed: a Debian binary package") from None
        pos += 60
        out[name] = data[pos:pos + size]
        pos += size + (size % 2)
    return out


def _extract_tar(tf: tarfile.TarFile, dest: Path, take: tuple[str, ...]) -> list[str]:
    got = []
    for member in tf.getmembers():
        if not member.isfile():
            continue
        norm = wanted(member.name, take)
        if norm is None:
            continue
        member.name = norm
        tf.extract(member, dest, filter="data")
        got.append(norm)
    return got


def extract(archive: Path, dest: Path, take: tuple[str, ...], run: Runner) -> list[str]:
    """Write the members of ``archive`` matching ``take`` under ``dest``; returns their paths (sorted)."""
    name = archive.name
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if name.endswith(".deb"):
            members = ar_members(archive.read_bytes(), name)
            data = next((k for k in members if k.startswith("data.tar")), None)
            if data is None:
                raise FetchError(f"fetch: {name}: no data.tar member; allowed: a Debian binary package")
            if data.endswith(".zst"):
                tar_path = dest.parent / f".{name}.tar"
                run(["dpkg-deb", "--fsys-tarfile", str(archive), "-o", str(tar_path)], dest.parent)
                with tarfile.open(tar_path) as tf:
                    got = _extract_tar(tf, dest, take)
                tar_path.unlink(missing_ok=True)
            else:
                with tarfile.open(fileobj=io.BytesIO(members[data])) as tf:
                    got = _extract_tar(tf, dest, take)
        elif name.endswith((".tgz", ".tar.gz", ".tar.xz", ".tar.bz2", ".tar")):
            with tarfile.open(archive) as tf:
                got = _extract_tar(tf, dest, take)
        elif name.endswith((".whl", ".zip")):
            got = []
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    norm = None if info.is_dir() else wanted(info.filename, take)
                    if norm is None:
                        continue
                    target = dest / norm
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(zf.read(info))
                    got.append(norm)
        else:
            target = dest / name
            target.write_bytes(archive.read_bytes())
            got = [name] if wanted(name, take) else []
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
        raise FetchError(f"fetch: {name}: cannot open ({' '.join(str(err).split())}); "
                         f"allowed: an intact archive (delete it from the cache and fetch again)") from None
    return sorted(got)
