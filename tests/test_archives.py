"""An uploaded .zip of class folders: unpacked when it is a plain labelled folder, refused
with one sentence otherwise (escaping names, links, bombs, too many images, no classes)."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import pytest
from conftest import FIXTURES

from xrcompare import archives
from xrcompare.archives import ArchiveError, extract_class_zip
from xrcompare.data import scan_dataset

TINY = FIXTURES / "tiny_cxr"


def zip_of(folder: Path, prefix: str = "", extra: dict[str, bytes] | None = None) -> bytes:
    """``folder``'s files in a zip under ``prefix`` (plus ``extra`` members)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, prefix + path.relative_to(folder).as_posix())
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def members(**files: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def jpeg() -> bytes:
    return next(TINY.glob("covid/*.jpg")).read_bytes()


def test_a_zip_of_class_folders_unpacks_to_the_same_dataset(tmp_path):
    data = zip_of(TINY, extra={"README.txt": b"notes", "__MACOSX/covid/._x.jpg": b"junk",
                               "covid/.DS_Store": b"junk"})
    result = extract_class_zip(io.BytesIO(data), tmp_path / "out", size=len(data))
    original, unpacked = scan_dataset(TINY), scan_dataset(result.root)
    assert result.total == len(original.records) == len(unpacked.records)
    assert result.images == {label: count for label, count in original.class_counts().items()}
    assert unpacked.class_counts() == original.class_counts()
    # the manifest came along: the same patient ids, not one per image
    assert sorted(unpacked.groups) == sorted(original.groups)
    # README.md and README.txt; hidden and __MACOSX members are skipped without a count
    assert result.ignored == 2
    assert result.root.is_relative_to(tmp_path / "out")


def test_class_folders_inside_one_top_folder_are_found(tmp_path):
    data = zip_of(TINY, prefix="my_images/")
    result = extract_class_zip(io.BytesIO(data), tmp_path / "out")
    assert set(result.images) == {"covid", "normal", "pneumonia"}


@pytest.mark.parametrize(("files", "words"), [
    ({"../evil/covid/a.jpg": b"x"}, "leading out of its folder"),
    ({"covid/../../a.jpg": b"x"}, "leading out of its folder"),
    ({"/etc/covid/a.jpg": b"x"}, "absolute path"),
    ({"C:/covid/a.jpg": b"x"}, "absolute path"),
    ({"covid\\a.jpg": b"x"}, "unusable name"),
    # Any folder of images is a class; a name that cannot be a class is not.
    ({"a.jpg": b"x", "pictures/two words/b.jpg": b"x"}, "no class folders"),
    ({"covid/notes.txt": b"x"}, "hold no images"),
    ({"a/b/c/d/e/f/covid/a.jpg": b"x"}, "deeper than"),
])
def test_archives_that_could_escape_or_hold_nothing_are_refused(tmp_path, files, words):
    data = members(**files)
    with pytest.raises(ArchiveError, match=words):
        extract_class_zip(io.BytesIO(data), tmp_path / "out")
    assert not any((tmp_path / "out").rglob("*.jpg")) if (tmp_path / "out").exists() else True
    assert not (tmp_path.parent / "evil").exists()


def test_a_symbolic_link_is_refused(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("covid/a.jpg", jpeg())
        link = zipfile.ZipInfo("covid/b.jpg")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    with pytest.raises(ArchiveError, match="symbolic link"):
        extract_class_zip(io.BytesIO(buffer.getvalue()), tmp_path / "out")


def test_a_zip_bomb_is_refused_before_anything_is_written(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("covid/a.jpg", jpeg())
        archive.writestr("normal/bomb.png", b"\0" * 30_000_000)  # 30 MB of zeros: ~30 KB
    data = buffer.getvalue()
    assert len(data) < 100_000
    with pytest.raises(ArchiveError, match="zip bomb"):
        extract_class_zip(io.BytesIO(data), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_member_that_unpacks_to_more_than_it_declared_is_stopped(tmp_path):
    """A header can lie about the size: the bytes are counted while writing."""
    big = b"\x89PNG" + bytes(range(256)) * 8_000  # ~2 MB, barely compressible
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("covid/a.png", big)
    data = bytearray(buffer.getvalue())
    # shrink the declared size in the central directory (offset 24 of its entry)
    central = data.rfind(b"PK\x01\x02")
    data[central + 24:central + 28] = (1000).to_bytes(4, "little")
    with pytest.raises(ArchiveError):
        extract_class_zip(io.BytesIO(bytes(data)), tmp_path / "out")
    written = list((tmp_path / "out").rglob("a.png"))
    assert not written or written[0].stat().st_size <= 1000


def test_limits_on_images_members_size_and_type(tmp_path, monkeypatch):
    image = jpeg()
    monkeypatch.setattr(archives, "MAX_IMAGES", 3)
    data = members(**{f"covid/{n}.jpg": image for n in range(4)})
    with pytest.raises(ArchiveError, match="holds 4 images; at most 3"):
        extract_class_zip(io.BytesIO(data), tmp_path / "a")
    monkeypatch.setattr(archives, "MAX_MEMBERS", 2)
    with pytest.raises(ArchiveError, match="holds 4 members"):
        extract_class_zip(io.BytesIO(data), tmp_path / "b")
    with pytest.raises(ArchiveError, match="at most 50 MB"):
        extract_class_zip(io.BytesIO(data), tmp_path / "c", size=60 * 1024 * 1024)
    with pytest.raises(ArchiveError, match="not a readable .zip"):
        extract_class_zip(io.BytesIO(b"PK\x03\x04 not really"), tmp_path / "d")
    duplicated = io.BytesIO()
    with zipfile.ZipFile(duplicated, "w") as archive:
        archive.writestr("covid/a.jpg", image)
        archive.writestr("COVID/A.JPG", image)
    with pytest.raises(ArchiveError, match="twice"):
        extract_class_zip(io.BytesIO(duplicated.getvalue()), tmp_path / "e")


def test_an_encrypted_archive_is_refused(tmp_path):
    data = bytearray(members(**{"covid/a.jpg": jpeg()}))
    central = data.rfind(b"PK\x01\x02")  # set "encrypted" in the member's flags
    data[central + 8] |= 0x1
    with pytest.raises(ArchiveError, match="encrypted"):
        extract_class_zip(io.BytesIO(bytes(data)), tmp_path / "out")
