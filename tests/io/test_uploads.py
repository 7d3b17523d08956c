from __future__ import annotations

import io
import stat
import struct
import tarfile
import warnings
import zipfile
from pathlib import Path

import pytest

from dosepred.io import nifti, openkbp_csv
from dosepred.io.errors import PatientDataError
from dosepred.io.phantom import make_phantom
from dosepred.io.uploads import (MAX_TAR_HEADER_BYTES, UploadError, extract_zip, patients_under, resolve_under,
                                 save_images, unpack_tar)


def zip_of(entries: dict[str, bytes], *, link: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        if link:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def patient_zip(tmp_path_factory) -> bytes:
    folder = tmp_path_factory.mktemp("p") / "pt_7"
    openkbp_csv.write_patient(make_phantom(), folder)
    return zip_of({f"pt_7/{f.name}": f.read_bytes() for f in folder.iterdir()})


def test_a_zipped_openkbp_patient_unpacks(patient_zip: bytes, tmp_path: Path) -> None:
    assert extract_zip(patient_zip, tmp_path).name == "pt_7"


@pytest.mark.parametrize(("name", "patient"), [("pt_9.zip", "pt_9"), ("../../pt_9.zip", "pt_9"),
                                               ("C:\\data\\pt_9.zip", "pt_9"), ("a b;rm.zip", "upload"),
                                               (".hidden.zip", "upload"), ("x" * 70 + ".zip", "upload")])
def test_a_zip_of_one_patients_files_is_named_after_the_upload_if_its_name_is_a_plain_id(
        patient_zip: bytes, tmp_path: Path, name: str, patient: str) -> None:
    with zipfile.ZipFile(io.BytesIO(patient_zip)) as folder_zip:  # the same files, at the top of the archive
        flat = zip_of({Path(entry).name: folder_zip.read(entry) for entry in folder_zip.namelist()})
    found = extract_zip(flat, tmp_path, name)
    assert found.name == patient and found.parent == tmp_path


@pytest.mark.parametrize("name", ["../evil.csv", "/etc/evil.csv", "pt/../../evil.csv"])
def test_zip_path_traversal_is_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(UploadError, match="unsafe path"):
        extract_zip(zip_of({name: b"x"}), tmp_path / "out")
    assert not (tmp_path / "evil.csv").exists()


def test_zip_links_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UploadError, match="links"):
        extract_zip(zip_of({}, link="pt_1/ct.csv"), tmp_path)


def test_zip_bomb_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UploadError, match="zip bomb"):
        extract_zip(zip_of({"pt_1/ct.csv": bytes(50 * 2**20)}), tmp_path)
    assert not any(tmp_path.rglob("*.csv"))


def test_not_a_zip_and_an_empty_zip(tmp_path: Path) -> None:
    with pytest.raises(UploadError, match="not a zip"):
        extract_zip(b"PK\x03\x04 but not really", tmp_path)
    with pytest.raises(PatientDataError, match="empty folder|holds no patient|one patient"):
        extract_zip(zip_of({"readme.txt": b"hello"}), tmp_path / "e")


def test_nifti_uploads_need_known_names(phantom_small, tmp_path: Path) -> None:
    nifti.write_patient(phantom_small, tmp_path / "p")
    files = [(f.name, f.read_bytes()) for f in (tmp_path / "p").iterdir()]
    assert save_images(files, tmp_path / "up").is_dir()
    with pytest.raises(UploadError, match="expected NIfTI files"):
        save_images([("notes.txt", b"hi")], tmp_path / "bad")
    with pytest.raises(UploadError, match="ct.nii.gz is required"):
        save_images([(n, d) for n, d in files if not n.startswith("ct")], tmp_path / "noct")


def test_data_root_refuses_escapes_and_links(tmp_path: Path) -> None:
    root = tmp_path / "root"
    openkbp_csv.write_patient(make_phantom(), root / "pt_1")
    (root / "link").symlink_to(tmp_path)
    assert resolve_under(root, "pt_1") == root / "pt_1"
    assert patients_under(root) == ["pt_1"]
    for bad in ("../secret", "/etc", "pt_1/../../x", "link", ""):
        with pytest.raises(UploadError):
            resolve_under(root, bad)


def test_a_data_root_patient_holding_a_link_is_refused_before_reading(tmp_path: Path) -> None:
    root = tmp_path / "root"
    openkbp_csv.write_patient(make_phantom(), root / "pt_1")
    (tmp_path / "secret.csv").write_text("SECRET first line\n")
    (root / "pt_1" / "dose.csv").unlink()
    (root / "pt_1" / "dose.csv").symlink_to(tmp_path / "secret.csv")
    (root / "pt_2").mkdir()
    (root / "pt_2" / "sub").mkdir()
    (root / "pt_2" / "sub" / "x").symlink_to("/etc/hostname")
    for name in ("pt_1", "pt_2"):
        with pytest.raises(UploadError, match="symbolic links are not followed") as caught:
            resolve_under(root, name)
        assert "SECRET" not in str(caught.value)


# --- zips: bounded in total, counted while unpacking, names that cannot clash --------------------

def raw_zip(entries: dict[str, bytes] | list[tuple[str, bytes]]) -> bytes:
    """A zip with the names exactly as given, duplicates included."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        warnings.simplefilter("ignore", UserWarning)
        for name, data in entries.items() if isinstance(entries, dict) else entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def test_many_small_entries_cannot_add_up_to_a_bomb(tmp_path: Path) -> None:
    data = zip_of({f"pt_1/f{i}.bin": bytes(2**20) for i in range(200)})  # 200 MiB of zeros in ~200 KiB
    assert len(data) < 300 * 2**10
    with pytest.raises(UploadError, match="times its size"):
        extract_zip(data, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_zip_whose_size_header_lies_stops_at_the_declared_size(tmp_path: Path) -> None:
    data = bytearray(zip_of({"pt_1/ct.csv": bytes(2**20)}))
    directory = data.rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, directory + 24, 1000)  # the central directory now says 1000 bytes, not 1 MiB
    with pytest.raises(UploadError, match="corrupt"):
        extract_zip(bytes(data), tmp_path)
    assert list(tmp_path.iterdir()) == []  # unpacking is all or nothing


@pytest.mark.parametrize("names", [
    ["pt_1/ct.csv", "pt_1/ct.csv"], ["pt_1/CT.csv", "pt_1/ct.csv"], ["pt_1/ct.csv", "pt_1//ct.csv"],
    ["pt_1/ct.csv", "pt_1\\ct.csv"], ["PT_1/ct.csv", "pt_1/ct.csv"],
])
def test_two_entries_for_one_file_are_refused(names: list[str], tmp_path: Path) -> None:
    with pytest.raises(UploadError, match="names the same file"):
        extract_zip(raw_zip([(name, b",data\n") for name in names]), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_is_also_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UploadError, match="both a file and a folder"):
        extract_zip(raw_zip({"pt_1/ct.csv": b"x", "pt_1/ct.csv/inner": b"y"}), tmp_path)


@pytest.mark.parametrize("name", ["pt_1/" + "a" * 300 + ".csv", "pt_1/" + "é" * 200, "/".join(["d"] * 600)])
def test_over_long_names_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(UploadError, match="name too long"):
        extract_zip(raw_zip({name: b"x"}), tmp_path)


def test_a_corrupt_entry_is_an_upload_error_and_leaves_nothing(patient_zip: bytes, tmp_path: Path) -> None:
    data = bytearray(patient_zip)
    data[len(data) // 3 : len(data) // 3 + 64] = bytes(64)
    with pytest.raises(UploadError, match="corrupt"):
        extract_zip(bytes(data), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_macos_metadata_in_a_zip_is_left_out(patient_zip: bytes, tmp_path: Path) -> None:
    with zipfile.ZipFile(io.BytesIO(patient_zip)) as archive:
        entries = {info.filename: archive.read(info) for info in archive.infolist()}
    entries |= {"__MACOSX/pt_7/._ct.csv": b"\x00\x05\x16\x07", "pt_7/.DS_Store": b"\x00"}
    assert extract_zip(zip_of(entries), tmp_path).name == "pt_7"
    assert not (tmp_path / "upload" / "__MACOSX").exists()


def test_two_uploads_for_one_image_are_refused(phantom_small, tmp_path: Path) -> None:
    nifti.write_patient(phantom_small, tmp_path / "p")
    files = [(f.name, f.read_bytes()) for f in (tmp_path / "p").iterdir()]
    with pytest.raises(UploadError, match="a second file for ct"):
        save_images([*files, ("ct.nii", b"other")], tmp_path / "up")
    assert not (tmp_path / "up").exists()


def tar_of(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:xz", **kwargs) -> Path:
    with tarfile.open(path, mode, **kwargs) as archive:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                archive.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                archive.addfile(info, io.BytesIO(member[1]))
    return path


def link_member(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize("member", [
    link_member("pt_1/ct.csv", "/etc/passwd", tarfile.SYMTYPE),
    link_member("pt_1/inside", "pt_1", tarfile.SYMTYPE),  # even a link that stays inside (CVE-2025-4517 chains them)
    link_member("pt_1/ct.csv", "pt_1/later.csv", tarfile.LNKTYPE),  # a hard link to no file before it
    link_member("pt_1/fifo", "", tarfile.FIFOTYPE),
])
def test_tar_links_and_special_files_are_refused(member: tarfile.TarInfo, tmp_path: Path) -> None:
    archive = tar_of(tmp_path / "pt_1.tar.xz", [("pt_1/other.csv", b"x"), member, ("pt_1/later.csv", b"y")])
    with pytest.raises(UploadError, match="are not allowed in the archive"):
        unpack_tar(archive, tmp_path / "out", "pt_1")
    assert not (tmp_path / "out" / "pt_1").exists()  # all or nothing


@pytest.mark.parametrize(("names", "message"), [
    (["../evil.csv"], "unsafe path"), (["/etc/evil.csv"], "unsafe path"), (["/".join(["d"] * 600)], "too long"),
    (["pt_1/CT.csv", "pt_1/ct.csv"], "the same file"), (["pt_1/ct.csv", "pt_1/ct.csv/x"], "both a file and a folder"),
])
def test_tar_names_are_checked_as_zip_names(names: list[str], message: str, tmp_path: Path) -> None:
    archive = tar_of(tmp_path / "a.tar", [(name, b"x") for name in names], "w", format=tarfile.PAX_FORMAT)
    with pytest.raises(UploadError, match=message):
        unpack_tar(archive, tmp_path / "out", "a")


def test_a_huge_extended_header_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """tarfile reads a pax header whole: 1 GiB of it from a 150 kB .tar.xz would take 1 GiB of memory."""
    archive = tar_of(tmp_path / "a.tar.xz", [("pt_1/ct.csv", b"x")], format=tarfile.PAX_FORMAT,
                     pax_headers={"comment": "x" * (2 * MAX_TAR_HEADER_BYTES)})
    with pytest.raises(UploadError, match="extended header"):
        unpack_tar(archive, tmp_path / "out", "a")


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_a_tarball_unpacks_whatever_its_compression(mode: str, tmp_path: Path) -> None:
    archive = tar_of(tmp_path / "a.tar", [("pt_1/ct.csv", b"x" * 1000), ("pt_1/dose.csv", b"y")], mode)
    unpacked = unpack_tar(archive, tmp_path / "out", "a")
    assert (unpacked / "pt_1" / "ct.csv").read_bytes() == b"x" * 1000 and (unpacked / "pt_1" / "dose.csv").read_bytes() == b"y"


def test_tar_as_tar_itself_writes_it_unpacks(tmp_path: Path) -> None:
    """`tar czf x.tgz -C dir .` starts with "./"; a file of several links is a hard link to its first copy; `tar -r`
    repeats a name, whose last copy wins."""
    members = [link_member(".", "", tarfile.DIRTYPE), ("./pt_1/dose.csv", b"old"), ("./pt_1/ct.csv", b"ct"),
               link_member("./pt_1/copy.csv", "./pt_1/ct.csv", tarfile.LNKTYPE), ("./pt_1/dose.csv", b"new")]
    unpacked = unpack_tar(tar_of(tmp_path / "a.tar.gz", members, "w:gz"), tmp_path / "out", "a")
    assert {p.name: p.read_bytes() for p in (unpacked / "pt_1").iterdir()} == {
        "dose.csv": b"new", "ct.csv": b"ct", "copy.csv": b"ct"}
