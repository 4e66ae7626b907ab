"""A .zip of class folders (an uploaded labelled folder) unpacked safely, or refused with one
sentence.

Everything about the archive is untrusted: its size, its member names, their declared sizes
and what they decompress to. Only image files inside class folders (one folder per class, as
a dataset folder has them: ``covid/``, ``NORMAL/``, ``tb/``..., at the top or inside one top
folder) and a ``manifest.csv`` beside them are written; every limit below is checked on the
member list before anything is written, and again on the bytes actually decompressed. No
Streamlit here: the *Evaluate on a folder* page calls :func:`extract_class_zip` into a
temporary folder and deletes it afterwards.
"""

from __future__ import annotations

import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from xrcompare.data import MANIFEST_NAME, match_class_folder
from xrcompare.imaging import IMAGE_SUFFIXES, MAX_FILE_BYTES

#: The largest archive accepted (megabytes; the page also keeps to the server's upload limit).
MAX_ARCHIVE_MB = 50
MAX_ARCHIVE_BYTES = MAX_ARCHIVE_MB * 1024 * 1024
#: The most images and members (folders and ignored files included) an archive may hold.
MAX_IMAGES = 2000
MAX_MEMBERS = 5000
#: The most bytes all written members may decompress to, and one member's largest
#: decompressed/compressed ratio (images are compressed already: a large ratio is a bomb).
MAX_TOTAL_BYTES = 400 * 1024 * 1024
MAX_RATIO = 100
#: A member name's longest length and deepest nesting (top folder / class / sub-folders).
MAX_NAME_LENGTH = 255
MAX_DEPTH = 6
CHUNK = 1024 * 1024


class ArchiveError(ValueError):
    """An archive that cannot be used, with one sentence saying why."""


@dataclass
class ExtractedFolder:
    """What :func:`extract_class_zip` wrote: the dataset folder, its images per class folder,
    and the members it left out (not images, outside class folders) as counts."""

    root: Path
    images: dict[str, int] = field(default_factory=dict)
    ignored: int = 0

    @property
    def total(self) -> int:
        return sum(self.images.values())


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _parts(name: str) -> list[str]:
    """The member name's parts, or ArchiveError for a name that could leave the folder."""
    if "\x00" in name or "\\" in name or len(name) > MAX_NAME_LENGTH:
        raise ArchiveError(f"the archive holds a member with an unusable name ({name[:60]!r}); "
                           "names must be plain relative paths")
    path = PurePosixPath(name)
    if path.is_absolute() or (path.parts and path.parts[0].endswith(":")):
        raise ArchiveError(f"the archive holds an absolute path ({name[:60]!r}); only "
                           "relative paths are accepted")
    parts = [part for part in path.parts if part not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"the archive holds a path leading out of its folder "
                           f"({name[:60]!r})")
    if len(parts) > MAX_DEPTH:
        raise ArchiveError(f"the archive nests folders deeper than {MAX_DEPTH} levels "
                           f"({name[:60]!r})")
    return parts


def _hidden(parts: list[str]) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in parts)


def _files(members: list[zipfile.ZipInfo]) -> list[tuple[zipfile.ZipInfo, list[str]]]:
    """The archive's plain files (folders and hidden files left out) with their name's parts;
    ArchiveError for a name that could escape, a link or encryption."""
    files = []
    for info in members:
        parts = _parts(info.filename)
        if _is_symlink(info):
            raise ArchiveError(f"the archive holds a symbolic link ({info.filename[:60]!r}); "
                               "links are refused")
        if info.flag_bits & 0x1:
            raise ArchiveError("the archive is encrypted; upload a plain .zip")
        if info.is_dir() or not parts or _hidden(parts):
            continue
        files.append((info, parts))
    return files


def _plan(members: list[zipfile.ZipInfo]) -> tuple[list[tuple[zipfile.ZipInfo, list[str]]],
                                                    int]:
    """Which members to write (with their relative parts inside the dataset folder) and how
    many were ignored; ArchiveError for anything refused."""
    files = _files(members)
    # The class folders sit at the top, or inside one top folder (a zipped folder).
    # A class folder holds images directly (as in a dataset folder: xrcompare.data).
    def image(parts: list[str]) -> bool:
        return PurePosixPath(parts[-1]).suffix.lower() in IMAGE_SUFFIXES

    tops = {parts[0] for _, parts in files if len(parts) > 1}
    offset = 0
    images = [parts for _, parts in files if image(parts)]
    if images and not any(match_class_folder(parts[0]) for parts in images
                          if len(parts) == 2):
        inner = {parts[1] for _, parts in files if len(parts) == 3 and image(parts)}
        if len(tops) == 1 and any(match_class_folder(name) for name in inner):
            offset = 1
        else:
            raise ArchiveError("the archive has no class folders: it should hold one folder "
                               "per class (covid, normal, pneumonia...; at its top or inside "
                               "one folder), each with images")
    chosen, ignored = [], 0
    for info, parts in files:
        inside = parts[offset:]
        if len(inside) == 1 and inside[0].lower() == MANIFEST_NAME:
            chosen.append((info, [MANIFEST_NAME]))
        elif (len(inside) >= 2 and match_class_folder(inside[0])
              and PurePosixPath(inside[-1]).suffix.lower() in IMAGE_SUFFIXES):
            chosen.append((info, inside))
        else:
            ignored += 1
    return chosen, ignored


def check_sizes(chosen: list[tuple[zipfile.ZipInfo, list[str]]], *,
                max_images: int | None = None, max_total: int | None = None,
                empty: str = "the archive's class folders hold no images (.png, .jpg or .jpeg)",
                smaller: str = "evaluate a smaller folder, or use the command line") -> None:
    """The declared sizes against the limits (the decompressed bytes are counted again while
    writing, since a header can lie). ``max_images`` and ``max_total`` default to
    :data:`MAX_IMAGES` and :data:`MAX_TOTAL_BYTES`; ``empty`` is the sentence for an archive
    without images, ``smaller`` what to do instead of one with too many."""
    max_images = MAX_IMAGES if max_images is None else max_images
    max_total = MAX_TOTAL_BYTES if max_total is None else max_total
    images = sum(1 for _, parts in chosen if parts != [MANIFEST_NAME])
    if not images:
        raise ArchiveError(empty)
    if images > max_images:
        raise ArchiveError(f"the archive holds {images} images; at most {max_images} are "
                           f"accepted ({smaller})")
    total = 0
    for info, _ in chosen:
        if info.file_size > MAX_FILE_BYTES:
            raise ArchiveError(f"{info.filename[:60]} unpacks to {info.file_size / 1e6:.0f} MB;"
                               f" an image may be at most {MAX_FILE_BYTES / 1e6:.0f} MB")
        if info.file_size > CHUNK and info.file_size > MAX_RATIO * max(1, info.compress_size):
            raise ArchiveError(f"{info.filename[:60]} would unpack to {MAX_RATIO}× its packed "
                               "size or more, which no image does (a zip bomb?); refused")
        total += info.file_size
    if total > max_total:
        raise ArchiveError(f"the archive unpacks to {total / 1e6:.0f} MB; at most "
                           f"{max_total / 1e6:.0f} MB are accepted")


def _copy(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int) -> int:
    """Write one member, never more bytes than it declared or than ``budget``; returns the
    bytes written."""
    limit = min(info.file_size, budget)
    written = 0
    with archive.open(info) as source, target.open("xb") as sink:
        while True:
            chunk = source.read(CHUNK)
            if not chunk:
                break
            written += len(chunk)
            if written > limit:
                raise ArchiveError(f"{info.filename[:60]} unpacks to more than it declared "
                                   "(a damaged or crafted archive); refused")
            sink.write(chunk)
    return written


def _open_archive(source: str | Path | BinaryIO, size: int | None
                  ) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    """The opened .zip and its members, after the checks every upload gets first: its size
    (``size``, measured for a path) within :data:`MAX_ARCHIVE_MB`, a readable zip, at most
    :data:`MAX_MEMBERS` members; :class:`ArchiveError` with one sentence otherwise."""
    if isinstance(source, (str, Path)):
        size = Path(source).stat().st_size
    if size is not None and size > MAX_ARCHIVE_BYTES:
        raise ArchiveError(f"the archive is {size / 1e6:.0f} MB; at most {MAX_ARCHIVE_MB} MB "
                           "are accepted")
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise ArchiveError("this file is not a readable .zip archive") from None
    members = archive.infolist()
    if len(members) > MAX_MEMBERS:
        archive.close()
        raise ArchiveError(f"the archive holds {len(members)} members; at most "
                           f"{MAX_MEMBERS} are accepted")
    return archive, members


def extract_class_zip(source: str | Path | BinaryIO, destination: str | Path,
                      *, size: int | None = None) -> ExtractedFolder:
    """Unpack a .zip of class folders into a ``dataset`` folder inside ``destination``
    (``destination`` must be empty or absent); return what was written. ``size`` is the
    archive's size in bytes when ``source`` is a stream (it is measured for a path).

    Raises :class:`ArchiveError` with one sentence for: an archive over
    :data:`MAX_ARCHIVE_MB` MB, not a zip, encrypted, with unusable or escaping names,
    symbolic links, no class folders or images, more than :data:`MAX_IMAGES` images or
    :data:`MAX_MEMBERS` members, members over the image size limit, compression ratios of a
    zip bomb, or bytes beyond what was declared. Nothing outside ``destination`` is written.
    """
    archive, members = _open_archive(source, size)
    with archive:
        chosen, ignored = _plan(members)
        check_sizes(chosen)
        # Two folders deep, so that a manifest is looked for only inside ``destination``
        # (xrcompare.data looks up to two folders above a dataset).
        root = Path(destination) / "upload" / "unpacked" / "dataset"
        root.mkdir(parents=True, exist_ok=False)
        result = ExtractedFolder(root=root, ignored=ignored)
        budget = MAX_TOTAL_BYTES
        seen: set[str] = set()
        for info, parts in chosen:
            relative = "/".join(parts)
            if relative.lower() in seen:  # two members that are one file on this disk
                raise ArchiveError(f"the archive holds {relative[:60]!r} twice")
            seen.add(relative.lower())
            target = root.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                budget -= _copy(archive, info, target, budget)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError,
                    zlib.error, NotImplementedError) as error:
                raise ArchiveError(f"{info.filename[:60]} cannot be unpacked "
                                   f"({type(error).__name__}); the archive is damaged") from None
            if parts != [MANIFEST_NAME]:
                folder = parts[0]
                result.images[folder] = result.images.get(folder, 0) + 1
    return result


@dataclass
class ExtractedImages:
    """What :func:`extract_image_zip` wrote: the folder, the images written (paths relative
    to it, in the archive's order), the members that could not be unpacked with one sentence
    each, and how many members were not images."""

    root: Path
    files: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    ignored: int = 0


def extract_image_zip(source: str | Path | BinaryIO, destination: str | Path, *,
                      size: int | None = None, suffixes: tuple[str, ...] = IMAGE_SUFFIXES,
                      max_images: int | None = None, max_total: int | None = None
                      ) -> ExtractedImages:
    """Unpack every image of a .zip (files ending in ``suffixes``, in any folder; no class
    folders needed) into ``destination/images`` (``destination`` empty or absent), with the
    checks of :func:`extract_class_zip`: size, names, links, encryption, members, images (at
    most ``max_images``), bytes (``max_total``), bombs and lying headers refuse the whole
    archive in one sentence. A member that is merely damaged (a bad checksum, a truncated
    stream) is listed in ``failed`` and the others are still written."""
    archive, members = _open_archive(source, size)
    with archive:
        files = _files(members)
        chosen = [(info, parts) for info, parts in files
                  if PurePosixPath(parts[-1]).suffix.lower() in suffixes]
        listed = ", ".join(suffixes)
        check_sizes(chosen, max_images=max_images, max_total=max_total,
                    empty=f"the archive holds no images ({listed})",
                    smaller="send fewer images at once, or use the command line")
        root = Path(destination) / "images"
        root.mkdir(parents=True, exist_ok=False)
        result = ExtractedImages(root=root, ignored=len(files) - len(chosen))
        budget = MAX_TOTAL_BYTES if max_total is None else max_total
        seen: set[str] = set()
        for info, parts in chosen:
            relative = "/".join(parts)
            if relative.lower() in seen:
                raise ArchiveError(f"the archive holds {relative[:60]!r} twice")
            seen.add(relative.lower())
            target = root.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                budget -= _copy(archive, info, target, budget)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError,
                    zlib.error, NotImplementedError) as error:
                target.unlink(missing_ok=True)
                result.failed.append((relative, f"{relative[:60]} cannot be unpacked "
                                                f"({type(error).__name__}): the member is "
                                                "damaged"))
                continue
            result.files.append(relative)
    return result
