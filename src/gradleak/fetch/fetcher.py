"""``gradleak data fetch NAME``: download (cached), extract without installing, build, write the manifest.

Idempotent: when ``datasets/<name>/manifest.json`` exists, its declaration fingerprint matches and every
file it lists is present with its recorded sha256, nothing is downloaded or written. Otherwise the
dataset is built in ``datasets/.<name>.build`` and moved into place at the end (an interrupted fetch
leaves the previous dataset, or nothing, never half of one). Downloads are kept in ``downloads/`` and
reused when their sha256 matches the pin.

The manifest (``manifest.json``) records: the declaration (summary, licence, builder, crops, split),
every source (its string, kind, package, version, archive file name, size and sha256), and every file
extracted or written (path relative to the cache root -> sha256 and size), plus the per-photograph
split and crop boxes for image datasets.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from gradleak.atomic import atomic_write_json
from gradleak.cache import cache_dir
from gradleak.errors import bad_value

from .archives import extract
from .imagefolder import Photo, build_images, class_of
from .lpips_convert import install_lpips
from .runner import FetchError, Runner, subprocess_runner
from .sources import SourceRef, parse_source, sha256_file, verify
from .spec import BUILDERS, FETCHABLE, Fetchable

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


@dataclass
class FetchResult:
    name: str
    path: Path
    manifest: Path
    up_to_date: bool
    files: int
    counts: dict


def get_spec(name: str | Fetchable) -> Fetchable:
    """The registered declaration ``name`` (a :class:`Fetchable` passes through: tests, custom datasets)."""
    if isinstance(name, Fetchable):
        return name
    spec = FETCHABLE.get(name) if isinstance(name, str) else None
    if spec is None:
        raise bad_value("data fetch NAME", name, ", ".join(FETCHABLE))
    return spec


def _record(path: Path, root: Path) -> tuple[str, dict]:
    return path.relative_to(root).as_posix(), {"sha256": sha256_file(path), "size": path.stat().st_size}


def manifest_ok(manifest_path: Path, spec: Fetchable, root: Path) -> dict | None:
    """The manifest when it matches the declaration and every listed file has its sha256; else None."""
    try:
        man = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return None
    if man.get("fingerprint") != spec.fingerprint() or man.get("manifest_version") != MANIFEST_VERSION:
        return None
    for rel, info in {**man.get("files", {}), **man.get("outputs", {})}.items():
        p = root / rel
        if not p.is_file() or p.stat().st_size != info["size"] or sha256_file(p) != info["sha256"]:
            return None
    return man


def _version(ref: SourceRef, archive: Path) -> str | None:
    if ref.kind == "debian":
        parts = archive.name[:-4].split("_")
        return unquote(parts[1]) if len(parts) >= 3 else ref.version
    return ref.version


def download(ref: SourceRef, handler, root: Path, run: Runner) -> tuple[Path, str]:
    """The archive for ``ref`` (cached in ``downloads/<kind>/<key>/``) and its sha256."""
    into = root / "downloads" / ref.kind / ref.key
    into.mkdir(parents=True, exist_ok=True)
    cached = sorted(p for p in into.iterdir() if p.is_file() and not p.name.startswith("."))
    if len(cached) == 1:
        digest = sha256_file(cached[0])
        if ref.sha256 is None or digest == ref.sha256:
            return cached[0], digest
    for p in cached:  # stale or several: start over
        p.unlink()
    archive = handler.download(ref, into, run)
    return archive, verify(archive, ref)


def _build_images(spec: Fetchable, build: Path, taken: list, root: Path) -> tuple[list[Path], dict]:
    photos = []
    for take, ref, rels in taken:
        for rel in rels:
            path = build / "extracted" / ref.key / rel
            photos.append(Photo(f"{ref.key}/{rel}", path, class_of(take, ref.name, rel)))
    written, records = build_images(spec, photos, build)
    counts: dict = {}
    for r in records:
        for res in spec.resolutions:
            side = counts.setdefault(str(res), {}).setdefault(r["split"], {"photos": 0, "images": 0})
            side["photos"] += 1
            side["images"] += len(r["crops"])
    classes = sorted({r["class"] for r in records})
    return written, {"photos": records, "counts": counts, "classes": classes}


def _build_raw(spec: Fetchable, build: Path, taken: list, root: Path) -> tuple[list[Path], dict]:
    return [], {"counts": {"files": sum(len(r) for _, _, r in taken)}}


def _build_lpips(spec: Fetchable, build: Path, taken: list, root: Path) -> tuple[list[Path], dict]:
    from gradleak.cache import lpips_cache_dir

    ckpts = {}
    for _, ref, rels in taken:
        for rel in rels:
            net = {"alexnet.ckpt": "alex", "vgg16.ckpt": "vgg"}.get(Path(rel).name)
            if net:
                ckpts[net] = build / "extracted" / ref.key / rel
    written = install_lpips(ckpts, lpips_cache_dir(root))
    return written, {"counts": {"nets": sorted(ckpts)}, "lpips_dir": str(lpips_cache_dir(root))}


BUILDERS.register("images")(_build_images)
BUILDERS.register("raw")(_build_raw)
BUILDERS.register("lpips")(_build_lpips)


def fetch_dataset(name: str | Fetchable, cache: str | Path | None = None, run: Runner = subprocess_runner,
                  log=lambda msg: None) -> FetchResult:
    """Fetch and build the registered dataset ``name`` into the cache (see the module docstring)."""
    spec = get_spec(name)
    parsed = [(text, *parse_source(text)) for text in spec.sources]  # bad declarations fail before any write
    root = cache_dir(cache)
    target = root / "datasets" / spec.name
    man_path = target / MANIFEST
    if man_path.is_file():
        man = manifest_ok(man_path, spec, root)
        if man is not None:
            fresh = {"summary": spec.summary, "licence": spec.licence, "notes": spec.notes}
            if any(man.get(k) != v for k, v in fresh.items()):
                man.update(fresh)
                atomic_write_json(man_path, man)
            return FetchResult(spec.name, target, man_path, True, len(man["files"]) + len(man["outputs"]),
                               man.get("counts", {}))
    if run is subprocess_runner:  # a missing tool is one line before anything is written
        for text, handler, ref in parsed:
            cached = root / "downloads" / ref.kind / ref.key
            if handler.tool and shutil.which(handler.tool) is None and not (cached.is_dir() and any(cached.iterdir())):
                raise FetchError(f"fetch {spec.name}: {handler.tool}: command not found (needed for {text.split('#')[0]}); "
                                 f"allowed: a system with {handler.tool} on PATH")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise bad_value("--cache", str(root), f"a writable directory ({err.strerror})") from None
    sources, archives = [], {}
    for text, handler, ref in parsed:
        log(f"downloading {text.split('#')[0]}")
        archive, digest = download(ref, handler, root, run)
        archives[text] = (ref, archive)
        sources.append({"source": text.split("#")[0], "kind": ref.kind, "package": ref.name,
                        "version": _version(ref, archive), "archive": archive.relative_to(root).as_posix(),
                        "sha256": digest, "size": archive.stat().st_size})
    build = root / "datasets" / f".{spec.name}.build"
    shutil.rmtree(build, ignore_errors=True)
    try:
        taken = []
        for take in spec.take:
            ref, archive = archives[take.source]
            log(f"extracting {archive.name}")
            rels = extract(archive, build / "extracted" / ref.key, take.globs, run)
            if not rels:
                raise FetchError(f"fetch {spec.name}: {archive.name} has no files matching {', '.join(take.globs)}; "
                                 f"allowed: a package version that holds them")
            taken.append((take, ref, rels))
        log(f"building {spec.build}")
        written, info = BUILDERS[spec.build](spec, build, taken, root)
        files = dict(_record(build / "extracted" / ref.key / rel, build) for _, ref, rels in taken for rel in rels)
        prefix = f"datasets/{spec.name}/"
        outputs = {}
        for p in written:  # inside the build dir (moved to datasets/<name>/ below) or elsewhere in the cache
            rel, info_ = _record(p, build) if p.is_relative_to(build) else _record(p, root)
            outputs[prefix + rel if p.is_relative_to(build) else rel] = info_
        man = {
            "manifest_version": MANIFEST_VERSION, "dataset": spec.name, "summary": spec.summary,
            "licence": spec.licence, "notes": spec.notes, "build": spec.build,
            "resolutions": list(spec.resolutions), "crops": spec.crops, "min_scale": spec.min_scale,
            "test_fraction": spec.test_fraction, "fingerprint": spec.fingerprint(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "sources": sources,
            "files": {prefix + k: v for k, v in files.items()},
            "outputs": outputs,
            **info,
        }
        atomic_write_json(build / MANIFEST, man)
        old = root / "datasets" / f".{spec.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.replace(old)
        build.replace(target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return FetchResult(spec.name, target, man_path, False, len(man["files"]) + len(man["outputs"]),
                       man.get("counts", {}))


def fetched_path(name: str, cache: str | Path | None = None) -> Path:
    """``<cache>/datasets/<name>`` of a fetched dataset or asset (files under ``extracted/<package-version>/``);
    a one-line error naming the fetch command when it has not been fetched."""
    spec = get_spec(name)
    path = cache_dir(cache) / "datasets" / spec.name
    if not (path / MANIFEST).is_file():
        raise FetchError(f"data: {spec.name!r} is not fetched in {path.parent}; allowed: run 'gradleak data fetch {spec.name}' first")
    return path


def list_fetchable(cache: str | Path | None = None) -> list[dict]:
    """One row per registered dataset: name, builder, sources, licence, whether it is fetched here."""
    root = cache_dir(cache)
    rows = []
    for name, spec in FETCHABLE.items():
        fetched = (root / "datasets" / name / MANIFEST).is_file()
        rows.append({"name": name, "build": spec.build, "sources": [s.split("#")[0] for s in spec.sources],
                     "licence": spec.licence, "summary": spec.summary, "fetched": fetched,
                     "path": str(root / "datasets" / name)})
    return rows


