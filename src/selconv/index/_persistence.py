"""An ImageIndex on disk: a folder whose loading runs no code from the files.

Layout (format version :data:`FORMAT_VERSION`)::

    manifest.json   format and selconv versions, kind, metric, dimension, parameters, counts, encoder
                    description, and the size and SHA-256 of every other file
    index.faiss     the faiss index in faiss' own binary format (faiss.write_index / write_index_binary)
    ids.npy         int64 ids in insertion order (numpy format, read with allow_pickle=False)
    paths.jsonl     one JSON string (or null) per id, same order
    encoder.skops   the fitted encoder (skops.io), only when there is one

The encoder is loaded with :func:`skops.io.load` trusting only :func:`trusted_types` (selconv's estimators and
scikit-learn's Pipeline); any other type in the file is refused before anything is built. Every file is
checked against the manifest (size, then SHA-256) before it is parsed, so a truncated, damaged or edited
file is reported by name.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import NamedTuple

FORMAT = "selconv.ImageIndex"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.npy"
PATHS_FILE = "paths.jsonl"
ENCODER_FILE = "encoder.skops"


class IndexFormatError(ValueError):
    """An index folder is missing, damaged, edited, truncated or of another format version;
    the message names the file."""


#: The selconv estimators an encoder may be made of, by fully qualified class name (tests/test_index.py checks
#: that every public selconv estimator is listed and that each name is the class it says).
TRUSTED_SELCONV_TYPES = (
    "selconv.aggregation.AveragePooling",
    "selconv.aggregation.DemocraticAggregator",
    "selconv.aggregation.GeneralizedMaxPooling",
    "selconv.aggregation.MaxPooling",
    "selconv.aggregation.SumPooling",
    "selconv.embedding.faemb.FAembEmbedding",
    "selconv.embedding.fisher.FisherVectorEmbedding",
    "selconv.embedding.triangulation.TriangulationEmbedding",
    "selconv.embedding.vlad.VLADEmbedding",
    "selconv.encoding.EncodeAggregate",
    "selconv.extraction.extractor.ConvFeatureExtractor",
    "selconv.hashing.itq.ITQHasher",
    "selconv.hashing.kmh.KMeansHasher",
    "selconv.hashing.rba.RBAHasher",
    "selconv.local_pca.LocalPCA",
    "selconv.masks.MaxMask",
    "selconv.masks.NoMask",
    "selconv.masks.SiftMask",
    "selconv.masks.SumMask",
    "selconv.pooling.CroW",
    "selconv.pooling.GeM",
    "selconv.pooling.MAC",
    "selconv.pooling.RMAC",
    "selconv.pooling.SPoC",
    "selconv.postprocessing.power.PowerNormalizer",
    "selconv.postprocessing.rotation.RotationNormalizer",
    "selconv.postprocessing.whitening.PCAWhitening",
)

#: Persisted-model compatibility (the one place old names are kept on purpose): the classes that selconv 0.1.0
#: stored under another module or class name, old fully qualified name -> current one. An encoder.skops file
#: names each class it holds; :func:`encoder_from_file` rewrites these names before checking and loading, so
#: indexes and encoders saved by 0.1.0 still load (their fitted state is unchanged). Plain pickles of 0.1.0
#: models are not covered: re-fit them.
RENAMED_SELCONV_TYPES = {
    "selconv.baselines.CroW": "selconv.pooling.CroW",
    "selconv.baselines.GeM": "selconv.pooling.GeM",
    "selconv.baselines.MAC": "selconv.pooling.MAC",
    "selconv.baselines.RMAC": "selconv.pooling.RMAC",
    "selconv.baselines.SPoC": "selconv.pooling.SPoC",
    "selconv.baselines.PCAWhitening": "selconv.postprocessing.whitening.PCAWhitening",
    "selconv.hashing.rba.RelaxedBinaryAutoencoder": "selconv.hashing.rba.RBAHasher",
    "selconv.local.LocalPCA": "selconv.local_pca.LocalPCA",
    "selconv.postprocessing.PowerNormalizer": "selconv.postprocessing.power.PowerNormalizer",
    "selconv.postprocessing.RotationNormalizer": "selconv.postprocessing.rotation.RotationNormalizer",
}


def trusted_types() -> list[str]:
    """Fully qualified names of the only classes an ``encoder.skops`` file may hold, beyond skops' defaults.

    selconv's estimators (``TRUSTED_SELCONV_TYPES``) and scikit-learn's :class:`~sklearn.pipeline.Pipeline`.
    Functions (e.g. a callable ``backbone``) and any other class are refused on save and on load. Names, not
    imported classes, so that loading an index imports only what its encoder uses (no torch without an extractor).
    """
    return sorted(("sklearn.pipeline.Pipeline", *TRUSTED_SELCONV_TYPES))


def _refused(untrusted) -> list[str]:
    allowed = set(trusted_types())
    return sorted(t for t in untrusted if t not in allowed)


def encoder_to_bytes(encoder) -> bytes:
    """The encoder serialised by skops.io; refuses encoders that would need untrusted types to load."""
    import skops.io as sio

    try:
        data = sio.dumps(encoder)
    except Exception as exc:  # skops names what it cannot serialise
        raise TypeError(f"the encoder cannot be saved with skops.io: {exc}") from exc
    refused = _refused(sio.get_untrusted_types(data=data))
    if refused:
        raise TypeError(
            f"the encoder holds {', '.join(refused)}, which could run code when loaded; an index only stores encoders "
            "made of selconv estimators in a scikit-learn Pipeline (a callable backbone, for instance, "
            "cannot be saved)."
        )
    return data


def _renamed(data: bytes) -> bytes:
    """The skops file ``data`` with the 0.1.0 class names of :data:`RENAMED_SELCONV_TYPES` replaced by the
    current ones; ``data`` itself when it holds none."""
    renamed = False

    def rename(node):
        nonlocal renamed
        if isinstance(node, dict):
            new = RENAMED_SELCONV_TYPES.get(f"{node.get('__module__')}.{node.get('__class__')}")
            if new is not None:
                node["__module__"], node["__class__"] = new.rsplit(".", 1)
                renamed = True
            for value in node.values():
                rename(value)
        elif isinstance(node, list):
            for value in node:
                rename(value)

    with zipfile.ZipFile(io.BytesIO(data)) as source:
        schema = json.loads(source.read("schema.json"))
        rename(schema)
        if not renamed:
            return data
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as target:
            for info in source.infolist():  # each member keeps its own compression
                content = json.dumps(schema).encode() if info.filename == "schema.json" else source.read(info)
                target.writestr(info, content)
    return out.getvalue()


def encoder_from_file(path: Path):
    import skops.io as sio

    try:
        data = _renamed(Path(path).read_bytes())
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:
        raise IndexFormatError(f"{path}: not a readable skops file ({exc}).") from exc
    refused = _refused(untrusted)
    if refused:
        raise IndexFormatError(
            f"{path}: holds types outside selconv's trusted list, refused without loading: {', '.join(refused)}."
        )
    try:
        return sio.loads(data, trusted=list(untrusted))
    except Exception as exc:
        raise IndexFormatError(f"{path}: the encoder could not be rebuilt ({type(exc).__name__}: {exc}).") from exc


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_folder(folder, writers: dict, manifest: dict) -> Path:
    """Atomically write an index folder: ``writers`` maps file names to ``write(path)`` callables.

    Everything is written into a temporary sibling folder, fsynced, described in ``manifest.json`` (sizes
    and SHA-256), then renamed into place, so a crash leaves either the old index or the new one. An existing
    ``folder`` is replaced only if it is an index (holds ``manifest.json``) or empty.
    """
    folder = Path(folder).expanduser().absolute()
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not (folder / MANIFEST).is_file())):
        raise FileExistsError(f"{folder} exists and is not a selconv index; not overwriting it.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        files = {}
        for name, write in writers.items():
            path = temporary / name
            write(path)
            _fsync(path)
            files[name] = {"bytes": path.stat().st_size, "sha256": file_digest(path)}
        with open(temporary / MANIFEST, "w", encoding="utf-8") as f:
            json.dump({**manifest, "files": files}, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        _fsync(temporary)
        old = None
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
            os.replace(folder, old / "index")
        os.replace(temporary, folder)
        _fsync(folder.parent)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return folder


def read_manifest(folder) -> tuple[Path, dict]:
    """The manifest of ``folder``, checked for format and version, and every listed file checked on disk."""
    folder = Path(folder).expanduser()
    path = folder / MANIFEST
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such index folder.")
    if not path.is_file():
        raise IndexFormatError(f"{path}: missing; {folder} is not a selconv index.")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexFormatError(f"{path}: not valid JSON ({exc}); the manifest is damaged.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFormatError(f"{path}: not a selconv index manifest (format {FORMAT!r} expected).")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexFormatError(
            f"{path}: index format version {version!r}, this selconv "
            f"(version {manifest.get('selconv_version', '?')} wrote it) reads version {FORMAT_VERSION}; "
            "rebuild the index with this selconv or load it with the version that wrote it."
        )
    files = manifest.get("files")
    required = {INDEX_FILE, IDS_FILE, PATHS_FILE} | ({ENCODER_FILE} if manifest.get("encoder") else set())
    if not isinstance(files, dict) or not required <= set(files):
        raise IndexFormatError(f"{path}: the file list is incomplete (needs {', '.join(sorted(required))}).")
    for name, entry in files.items():
        file = folder / name
        if Path(name).name != name or not isinstance(entry, dict):
            raise IndexFormatError(f"{path}: bad file entry {name!r}.")
        if not file.is_file():
            raise IndexFormatError(f"{file}: missing from the index folder.")
        size = file.stat().st_size
        if size != entry.get("bytes"):
            raise IndexFormatError(
                f"{file}: {size} bytes, the manifest says {entry.get('bytes')}; the file is truncated or was changed."
            )
        if file_digest(file) != entry.get("sha256"):
            raise IndexFormatError(f"{file}: SHA-256 differs from the manifest; the file was changed or damaged.")
    return folder, manifest


def write_index(folder, faiss_index, *, ids, paths, encoder, settings: dict) -> Path:
    """Write an ImageIndex's files and manifest (``settings``: kind, structure, metric, dimension, parameters,
    next id) atomically to ``folder`` (see :func:`write_folder`)."""
    import faiss
    import numpy as np

    from selconv import __version__
    from selconv.index import _faiss

    writers = {
        INDEX_FILE: lambda p: (faiss.write_index_binary if _faiss.is_binary(faiss_index) else faiss.write_index)(
            faiss_index, str(p)
        ),
        IDS_FILE: lambda p: np.save(p, ids, allow_pickle=False),
        PATHS_FILE: lambda p: p.write_text("".join(json.dumps(x) + "\n" for x in paths), encoding="utf-8"),
    }
    described = None
    if encoder is not None:
        blob = encoder_to_bytes(encoder)
        writers[ENCODER_FILE] = lambda p: p.write_bytes(blob)
        described = {"file": ENCODER_FILE, "class": type(encoder).__qualname__, "description": repr(encoder)}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "selconv_version": __version__,
        "faiss_version": faiss.__version__,
        **settings,
        "count": len(ids),
        "encoder": described,
    }
    return write_folder(folder, writers, manifest)


class StoredIndex(NamedTuple):
    """What :func:`read_index` read: the empty index made from the manifest, and the data to put in it."""

    index: object
    metric: str
    dimension: int
    next_id: int
    faiss_index: object
    ids: object
    paths: list
    encoder: object


def read_index(folder, make) -> StoredIndex:
    """Read and check the files of an index folder; ``make(kind, metric, index_params)`` builds the empty index
    (checking those values) before any data file is parsed."""
    from selconv import __version__

    folder, manifest = read_manifest(folder)
    manifest_path = folder / MANIFEST
    try:
        metric, dimension = manifest["metric"], int(manifest["dimension"])
        count, next_id = int(manifest["count"]), int(manifest["next_id"])
        index = make(manifest["kind"], metric, manifest["index_params"])
    except (KeyError, TypeError, ValueError) as exc:
        raise IndexFormatError(f"{manifest_path}: bad or missing entry ({exc}).") from None
    if manifest.get("selconv_version") != __version__:
        warnings.warn(
            f"{manifest_path}: written by selconv {manifest.get('selconv_version')}, loaded by {__version__}; "
            "the encoder may behave differently. Rebuild the index to be safe.",
            UserWarning,
            stacklevel=3,
        )
    faiss_index = _read_faiss(folder / INDEX_FILE, metric, dimension, count, manifest_path)
    ids = _read_ids(folder / IDS_FILE, count)
    paths = _read_paths(folder / PATHS_FILE, count)
    encoder = encoder_from_file(folder / ENCODER_FILE) if manifest.get("encoder") else None
    return StoredIndex(index, metric, dimension, next_id, faiss_index, ids, paths, encoder)


def _read_faiss(path: Path, metric: str, dimension: int, count: int, manifest_path: Path):
    import faiss

    try:
        reader = faiss.read_index_binary if metric == "hamming" else faiss.read_index
        faiss_index = reader(str(path))
    except RuntimeError as exc:
        raise IndexFormatError(f"{path}: not a faiss {metric} index ({str(exc).splitlines()[0]}).") from None
    if faiss_index.d != dimension or faiss_index.ntotal != count:
        raise IndexFormatError(
            f"{path}: holds {faiss_index.ntotal} vectors of dimension {faiss_index.d}; "
            f"{manifest_path} says {count} of dimension {dimension}."
        )
    return faiss_index


def _read_ids(path: Path, count: int):
    import numpy as np

    try:
        ids = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise IndexFormatError(f"{path}: not a numpy array file ({exc}).") from None
    if ids.dtype != np.int64 or ids.shape != (count,):
        raise IndexFormatError(f"{path}: expected {count} int64 ids; got {ids.dtype} of shape {ids.shape}.")
    return ids


def _read_paths(path: Path, count: int) -> list:
    try:
        paths = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexFormatError(f"{path}: not one JSON string per line ({exc}).") from None
    if len(paths) != count or not all(p is None or isinstance(p, str) for p in paths):
        raise IndexFormatError(f"{path}: expected {count} lines each holding a JSON string or null.")
    return paths
