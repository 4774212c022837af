"""Download and unpack the public benchmarks (for users with internet): resumable, checksummed, traversal-safe.

Nothing in selconv downloads on its own; call :func:`download_dataset` (or ``download`` /
``extract``) explicitly. Files are fetched to ``<name>.part`` and renamed only once complete and
verified, so a half-written file is never used. An interrupted download resumes where it stopped only
when a checksum can verify the result (otherwise a stale ``.part`` could be completed into a wrong file).
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm


class ChecksumError(OSError):
    """A downloaded file does not have the expected checksum."""


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the target folder, is a link/device, or would overwrite
    another member (two files of one name in different folders, extracted with ``flatten``)."""


class CorruptArchiveError(OSError):
    """An archive is truncated or corrupt (the message names it); delete it and download it again."""


# What tarfile, zipfile and their decompressors raise on damaged data (not on a failing disk).
_CORRUPT = (
    tarfile.TarError,
    zipfile.BadZipFile,
    EOFError,
    zlib.error,
    gzip.BadGzipFile,
    lzma.LZMAError,
    NotImplementedError,
)  # zipfile: an unknown version or compression method


def _copy_member(src, out, name) -> None:
    """Copy an archive member; a read failure is damaged data (bz2 and lzma raise a plain OSError), a write
    failure is the disk's and propagates as it is."""
    while True:
        try:
            chunk = src.read(1 << 20)
        except OSError as exc:
            raise tarfile.ReadError(f"member {name!r}: {exc}") from exc
        if not chunk:
            return
        out.write(chunk)


@dataclass(frozen=True)
class Resource:
    """One file of a dataset: where it is, what its checksum is (if published) and where it goes.

    ``target`` is the sub-folder of the dataset root to extract an archive into (``flatten`` drops the
    archive's folders, e.g. Paris's per-landmark folders for the revisited layout), or None to keep the
    file as it is (a ground-truth pickle).
    """

    url: str
    target: str | None = None
    sha256: str | None = None
    md5: str | None = None
    flatten: bool = False

    @property
    def filename(self) -> str:
        return PurePosixPath(self.url.split("?", 1)[0]).name


_OXFORD = "https://www.robots.ox.ac.uk/~vgg/data/oxbuildings"
_PARIS = "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings"
_REVISITOP = "http://cmp.felk.cvut.cz/revisitop/data/datasets"
_HOLIDAYS = "ftp://ftp.inrialpes.fr/pub/lear/douze/data"

#: Official download locations (as of 2024). The dataset authors publish no checksums, so none are
#: pinned here; compute yours with :func:`file_digest` and pass ``sha256=`` to :func:`download` to pin them.
DATASET_RESOURCES = {
    "oxford5k": (
        Resource(f"{_OXFORD}/oxbuild_images-v1.tgz", "jpg"),
        Resource(f"{_OXFORD}/gt_files_170407.tgz", "groundtruth"),
    ),
    "paris6k": (
        Resource(f"{_PARIS}/paris_1-v1.tgz", "jpg"),
        Resource(f"{_PARIS}/paris_2-v1.tgz", "jpg"),
        Resource(f"{_PARIS}/paris_120310.tgz", "groundtruth"),
    ),
    # revisitop's layout keeps all images in one flat jpg/ folder
    "roxford5k": (
        Resource(f"{_OXFORD}/oxbuild_images-v1.tgz", "jpg", flatten=True),
        Resource(f"{_REVISITOP}/roxford5k/gnd_roxford5k.pkl"),
    ),
    "rparis6k": (
        Resource(f"{_PARIS}/paris_1-v1.tgz", "jpg", flatten=True),
        Resource(f"{_PARIS}/paris_2-v1.tgz", "jpg", flatten=True),
        Resource(f"{_REVISITOP}/rparis6k/gnd_rparis6k.pkl"),
    ),
    "holidays": (Resource(f"{_HOLIDAYS}/jpg1.tar.gz", "."), Resource(f"{_HOLIDAYS}/jpg2.tar.gz", ".")),
}


def file_digest(path, algorithm="sha256") -> str:
    """Hex digest of a file, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path, sha256, md5, url):
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected is not None:
            actual = file_digest(path, algorithm)
            if actual != expected.lower():
                raise ChecksumError(f"{path} (from {url}): {algorithm} is {actual}, expected {expected}")


def download(url, dest, *, sha256=None, md5=None, resume=True, progress=False, chunk_size=1 << 20) -> Path:
    """Fetch `url` to `dest` through ``<dest>.part``, resuming a previous partial download when verifiable.

    Parameters
    ----------
    url : str
        http(s), ftp or file URL.
    dest : path-like
        Final file path. If it exists (and matches the checksum, when one is given) nothing is fetched.
    sha256, md5 : str or None
        Expected hex digests; on mismatch the partial file is deleted and :class:`ChecksumError` raised.
    resume : bool
        Continue an existing ``.part`` file with an HTTP Range request, only when a checksum is given (it
        verifies the joined file; without one a stale ``.part`` is discarded). When the resumed file fails
        its checksum, or the server answers 416 (the ``.part`` is not shorter than the file), the download
        starts over once from the beginning.
    progress : bool
        Show a tqdm progress bar.

    Raises
    ------
    ChecksumError
        The (fresh) download does not match `sha256` / `md5`.
    OSError
        The transfer ended before the announced ``Content-Length`` (the ``.part`` is kept for a resume).
    """
    dest = Path(dest)
    if dest.exists():
        _verify(dest, sha256, md5, url)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    verifiable = sha256 is not None or md5 is not None
    if part.exists() and not (resume and verifiable):
        part.unlink()  # nothing could tell a stale or foreign .part from a good one
    for attempt in ("resume", "fresh"):
        offset = part.stat().st_size if part.exists() else 0
        resumed = offset > 0
        _fetch(url, part, offset, dest.name, progress, chunk_size)
        try:
            _verify(part, sha256, md5, url)
        except ChecksumError as exc:
            part.unlink()  # a corrupt partial file must not be resumed
            if resumed and attempt == "resume":
                continue  # the old .part was wrong: start over from the beginning
            raise ChecksumError(f"{exc}; the download was deleted, try again") from None
        os.replace(part, dest)
        return dest
    raise AssertionError("unreachable")  # the fresh attempt returns or raises


def _fetch(url, part: Path, offset: int, label: str, progress: bool, chunk_size: int) -> None:
    """Append `url` from byte `offset` to `part` (rewrite it when the server ignores the range)."""
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # Range not satisfiable: the .part is at least as long as the file. Complete, or too long
            # (a stale file): only the checksum can tell, and the caller checks it.
            return
        raise
    with response:
        status = getattr(response, "status", None) or response.getcode()
        if offset and status != 206:  # the server sent the whole file: start over
            offset = 0
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None and length.isdigit() else None
        received = 0
        with (
            open(part, "ab" if offset else "wb") as fh,
            tqdm(
                total=expected + offset if expected is not None else None,
                initial=offset,
                unit="B",
                unit_scale=True,
                desc=label,
                disable=not progress,
            ) as bar,
        ):
            for chunk in iter(lambda: response.read(chunk_size), b""):
                fh.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if expected is not None and received != expected:
        raise OSError(f"{url}: the transfer stopped after {received} of {expected} bytes; run again to resume")


def _safe_target(dest, name, flatten):
    """Where archive member `name` goes under `dest`, refusing absolute paths and '..' escapes."""
    member = PurePosixPath(name.replace("\\", "/"))
    if member.is_absolute() or ".." in member.parts or (member.parts and ":" in member.parts[0]):
        raise UnsafeArchiveError(f"archive member {name!r} would be written outside {dest}")
    target = dest / (member.name if flatten else Path(*member.parts))
    if not target.resolve().is_relative_to(dest.resolve()):
        raise UnsafeArchiveError(f"archive member {name!r} would be written outside {dest}")
    return target


def _refuse_collisions(archive, targets) -> None:
    """Raise when two differently named members would be written to one file."""
    seen = {}
    for name, target in targets:
        first = seen.setdefault(target, name)
        if first != name:
            raise UnsafeArchiveError(
                f"{archive}: members {first!r} and {name!r} would both be extracted to {target}; "
                "extract without flatten to keep their folders"
            )


def extract(archive, dest, *, flatten=False) -> list[Path]:
    """Unpack a tar (``.tar``, ``.tgz``, ``.tar.gz``, ...) or zip `archive` into `dest`; return the files written.

    Every member is checked before anything is written: absolute paths, ``..`` components, links and
    device files raise :class:`UnsafeArchiveError` (a crafted archive cannot write outside `dest`).
    With `flatten` the members' folders are dropped (all files land in `dest`); two files of one name
    in different folders then raise :class:`UnsafeArchiveError` before anything is written, rather than
    one silently overwriting the other. A truncated or corrupt archive raises
    :class:`~selconv.datasets.CorruptArchiveError`.
    """
    try:
        return _extract(Path(archive), Path(dest), flatten)
    except _CORRUPT as exc:
        raise CorruptArchiveError(
            f"{archive}: truncated or corrupt archive ({type(exc).__name__}: {exc}); delete it and download it again"
        ) from exc


def _extract(archive: Path, dest: Path, flatten: bool) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            members = [(m, _safe_target(dest, m.filename, flatten)) for m in zf.infolist() if not m.is_dir()]
            _refuse_collisions(archive, [(m.filename, target) for m, target in members])
            for member, target in members:
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    src = zf.open(member)
                except (OSError, RuntimeError) as exc:  # damaged: a bad offset, "encrypted" flags
                    raise zipfile.BadZipFile(f"member {member.filename!r}: {exc}") from exc
                with src, open(target, "wb") as out:
                    _copy_member(src, out, member.filename)
                written.append(target)
        return written
    with tarfile.open(archive) as tf:
        members = []
        for member in tf.getmembers():
            if member.isdir():
                _safe_target(dest, member.name, flatten)
                continue
            if not member.isfile():
                raise UnsafeArchiveError(
                    f"{archive}: member {member.name!r} is a link or special file; refusing to extract"
                )
            members.append((member, _safe_target(dest, member.name, flatten)))
        _refuse_collisions(archive, [(m.name, target) for m, target in members])
        for member, target in members:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tf.extractfile(member) as src, open(target, "wb") as out:
                _copy_member(src, out, member.name)
            written.append(target)
    return written


def download_dataset(name, root, *, progress=True, resources=None) -> Path:
    """Download and unpack dataset `name` (a key of :data:`DATASET_RESOURCES`) into `root`.

    Archives are kept in ``root/downloads`` (delete them afterwards to save space); a finished
    resource is marked so that calling again skips it. Then load with the matching loader, e.g.
    ``load_oxford5k(root)`` or ``load_revisited(root, "roxford5k")``.
    Flickr distractors and UKBench are not fetched here (see docs/datasets.md).
    """
    if resources is None:
        if name not in DATASET_RESOURCES:
            raise ValueError(f"unknown dataset {name!r}; downloadable: {sorted(DATASET_RESOURCES)}")
        resources = DATASET_RESOURCES[name]
    root = Path(root)
    for resource in resources:
        marker = root / "downloads" / f".{resource.filename}.done"
        if marker.exists():
            continue
        if resource.target is None:
            download(
                resource.url, root / resource.filename, sha256=resource.sha256, md5=resource.md5, progress=progress
            )
        else:
            archive = download(
                resource.url,
                root / "downloads" / resource.filename,
                sha256=resource.sha256,
                md5=resource.md5,
                progress=progress,
            )
            extract(archive, root / resource.target, flatten=resource.flatten)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    return root
