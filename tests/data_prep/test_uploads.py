from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import pytest

from data_prep import nifti, openkbp_csv
from data_prep.errors import PatientDataError
from data_prep.phantom import make_phantom
from data_prep.uploads import UploadError, extract_zip, patients_under, resolve_under, save_images


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
