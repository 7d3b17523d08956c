"""Every input is untrusted: property-based fuzzing of the readers, the uploads and a batch prediction.

Copies of a real OpenKBP patient are mutated (CSV bytes, rows, headers and names; NIfTI header fields
and bytes; pack header fields and bytes; zip entries, names and size headers). For every mutation the
input is either read, or refused with the data layer's error, which names a file and never quotes one;
nothing is written outside the output folder and no partial file is left; in a batch, the good patient
is still predicted and every entry is accounted for. Seeded and bounded, so each run is the same.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import re
import shutil
import stat
import struct
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dosepred.io import nifti, openkbp_csv, pack, sources
from dosepred.io.errors import PatientDataError
from dosepred.io.patient import PATIENT_ID, Patient
from dosepred.io.uploads import MAX_RATIO, MAX_UNPACKED_BYTES, UploadError, extract_zip
from dosepred.inference.batch import predict_patients
from dosepred.inference.loader import load_predictor
from dosepred.inference.predictor import Predictor
from dosepred.inference.writers import OutputFormat
from tests.conftest import SAMPLE_PATIENTS, requires_openkbp

pytestmark = requires_openkbp

SOURCE, GOOD = SAMPLE_PATIENTS[1], SAMPLE_PATIENTS[2]  # pt_196 (the smallest) is mutated; pt_201 stays good
SECRET = "SECRET-content"  # planted in files: no message may show it
EXAMPLES = {"csv": 80, "nifti": 60, "pack": 200, "zip": 80, "batch": 10}  # 430, and 13 explicit examples
FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --- what a mutation may put in place of a value, a name or an id ------------------------------

TEXT = st.one_of(
    st.sampled_from(["", "1", "0", "0.5", "-1", "nan", "inf", "1e400", "2097152", "-0", "1,2", SECRET, "9" * 30]),
    st.integers(-(2**64), 2**64).map(str),
    st.binary(max_size=12).map(lambda raw: raw.decode("latin-1")),
)
UNSAFE_IDS = ["../victim", "../../victim", "/tmp/victim", "..", ".", "", "a/b", "victim\x00", ".victim", "x" * 200,
              "pt 196 ", "-victim", "pt_196\nvictim"]
CSV_NAMES = ["ptv_70.csv", "CT.csv", "PTV70.CSV", "notes.txt", ".hidden.csv", "dose.csv", "ct.csv", "Eye.csv"]
CSV_HEADERS = ["", "index,value", ",data,extra", ",DATA", SECRET, ",data\r", "\ufeff,data"]
ZIP_NAMES = ["../victim.csv", "/tmp/victim.csv", "pt_196/../../victim.csv", "pt_196\\..\\..\\victim.csv",
             "pt_196/CT.csv", "PT_196/ct.csv", "pt_196/ct.csv", "pt_196/ct.csv/inner", "pt_196/" + "a" * 300,
             "__MACOSX/pt_196/._ct.csv", "pt_196/.hidden.csv", "pt_196/ptv_70.csv", "other/ct.csv", "ct.csv", "",
             "pt_196/", "pt_196/\u00e9.csv", "pt_196/e\u0301.csv", "/".join(["d"] * 400)]
JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | TEXT,
                    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=8)
PACK_VALUES = {
    "id": st.sampled_from(UNSAFE_IDS + ["pt_9", "x" * 128]),
    "shape": st.sampled_from([[4096] * 3, [512, 512, 512], [128, 128, 129], [127, 128, 128], [0, 128, 128],
                              [-128, 128, 128], [128, 128], [128.0, 128, 128]]),
    "lengths": st.lists(st.integers(-(2**40), 2**40), min_size=2, max_size=4),
    "rois": st.lists(st.sampled_from(["PTV70", "PTV70", "Eye", "Brainstem", ""]), max_size=12),
    "ct_box": st.lists(st.integers(-5, 140), min_size=6, max_size=6),
    "mask_box": st.lists(st.integers(-5, 140), min_size=6, max_size=6),
    "dose_box": st.lists(st.integers(-5, 140), min_size=6, max_size=6),
    "ct_offset": st.floats() | st.integers(-(2**70), 2**70),
    "dose_base": st.integers(-(2**40), 2**40),
    "spacing": st.lists(st.floats() | TEXT, max_size=4),
}
# NIfTI-1 header fields: (offset, struct format, how many), and values worth trying in them.
NIFTI_FIELDS = {"dim": (40, "<h", 8), "datatype": (70, "<h", 1), "bitpix": (72, "<h", 1), "pixdim": (76, "<f", 8),
                "vox_offset": (108, "<f", 1), "scl_slope": (112, "<f", 1), "scl_inter": (116, "<f", 1),
                "qform_code": (252, "<h", 1), "sform_code": (254, "<h", 1), "srow": (280, "<f", 12)}
SHORTS = st.sampled_from([0, 1, 2, 3, 4, 7, 8, 16, 64, 127, 129, 512, 2048, 4096, 32767, -1, -32768])
FLOATS = st.sampled_from([0.0, -1.0, 1e-30, 1e30, 2.0, 4.688, 10.0, float("nan"), float("inf")])

fraction = st.floats(0, 1)
byte = st.integers(0, 255)
pick = st.integers(0, 99)  # which file or entry, modulo how many there are

csv_mutations = st.one_of(
    st.tuples(st.just("flip"), pick, fraction, byte),
    st.tuples(st.just("truncate"), pick, fraction),
    st.tuples(st.just("row"), pick, fraction, TEXT, TEXT),
    st.tuples(st.just("append"), pick, TEXT, TEXT),
    st.tuples(st.just("header"), pick, st.sampled_from(CSV_HEADERS)),
    st.tuples(st.just("rename"), pick, st.sampled_from(CSV_NAMES)),
    st.tuples(st.just("delete"), pick),
)
nifti_mutations = st.one_of(
    st.tuples(st.just("field"), pick, st.sampled_from(sorted(NIFTI_FIELDS)), st.integers(0, 11), SHORTS, FLOATS),
    st.tuples(st.just("flip"), pick, st.integers(0, 351), byte),
    st.tuples(st.just("truncate"), pick, fraction),
    st.tuples(st.just("gzip-flip"), pick, fraction, byte),
    st.tuples(st.just("delete"), pick),
)
pack_mutations = st.one_of(
    st.tuples(st.just("flip"), fraction, byte),
    st.tuples(st.just("truncate"), fraction),
    st.sampled_from(sorted(PACK_VALUES)).flatmap(
        lambda field: st.tuples(st.just("field"), st.just(field), PACK_VALUES[field] | JSON)),
    st.tuples(st.just("drop"), st.sampled_from(sorted(PACK_VALUES))),
    st.tuples(st.just("header-length"), st.integers(0, 2**32 - 1)),
)
zip_mutations = st.tuples(
    st.lists(st.one_of(
        st.tuples(st.just("rename"), pick, st.sampled_from(ZIP_NAMES)),
        st.tuples(st.just("add"), st.sampled_from(ZIP_NAMES), st.sampled_from([0, 2**10, 2**20, 8 * 2**20, -1])),
        st.tuples(st.just("link"), pick),
    ), max_size=3),
    st.none() | st.one_of(
        st.tuples(st.just("flip"), fraction, byte),
        st.tuples(st.just("truncate"), fraction),
        st.tuples(st.just("size"), pick, st.sampled_from([0, 1, 1000, 2**31, 2**32 - 1])),
    ),
)


# --- applying a mutation ---------------------------------------------------------------------------

def nth(folder: Path, index: int) -> Path:
    files = sorted(folder.iterdir())
    return files[index % len(files)]


def mutate_csv(folder: Path, mutation: tuple) -> None:
    kind, index, *args = mutation
    path = nth(folder, index)
    data = path.read_bytes()
    if kind == "flip":
        position, value = args
        at = int(position * (len(data) - 1))
        path.write_bytes(data[:at] + bytes([value]) + data[at + 1 :])
    elif kind == "truncate":
        path.write_bytes(data[: int(args[0] * len(data))])
    elif kind in ("row", "append"):
        lines = data.decode("latin-1").split("\n")
        row = ",".join(args[-2:])
        if kind == "append" or len(lines) < 3:
            lines.insert(len(lines) - 1, row)
        else:
            lines[1 + int(args[0] * (len(lines) - 3))] = row
        path.write_bytes("\n".join(lines).encode("latin-1", errors="replace"))
    elif kind == "header":
        path.write_bytes(args[0].encode() + b"\n" + data.split(b"\n", 1)[-1])
    elif kind == "rename":
        path.rename(folder / args[0])
    else:
        path.unlink()


def mutate_nifti(folder: Path, mutation: tuple) -> None:
    kind, index, *args = mutation
    path = nth(folder, index)
    if kind == "delete":
        path.unlink()
        return
    if kind == "gzip-flip":
        data = bytearray(path.read_bytes())
        data[int(args[0] * (len(data) - 1))] = args[1]
        path.write_bytes(bytes(data))
        return
    raw = bytearray(gzip.decompress(path.read_bytes()))
    if kind == "field":
        name, item, short, real = args
        offset, form, count = NIFTI_FIELDS[name]
        struct.pack_into(form, raw, offset + struct.calcsize(form) * (item % count), short if form == "<h" else real)
    elif kind == "flip":
        raw[args[0]] = args[1]
    else:
        del raw[int(args[0] * len(raw)) :]
    path.write_bytes(gzip.compress(bytes(raw), compresslevel=1))


def split_pack(data: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack_from("<I", data, 4)
    return json.loads(data[8 : 8 + length]), data[8 + length : -4]  # without the checksum


def join_pack(header: dict, streams: bytes) -> bytes:  # a valid checksum: the checks behind it are fuzzed
    return pack.sealed(json.dumps(header).encode(), streams)


def mutate_pack(path: Path, mutation: tuple) -> None:
    kind, *args = mutation
    data = path.read_bytes()
    header, streams = split_pack(data)
    if kind == "flip":
        at = int(args[0] * (len(data) - 1))
        data = data[:at] + bytes([args[1]]) + data[at + 1 :]
    elif kind == "truncate":
        data = data[: int(args[0] * len(data))]
    elif kind == "field":
        data = join_pack({**header, args[0]: args[1]}, streams)
    elif kind == "drop":
        data = join_pack({key: value for key, value in header.items() if key != args[0]}, streams)
    else:
        data = data[:4] + struct.pack("<I", args[0]) + data[8:]
    path.write_bytes(data)


def mutated_zip(entries: list[tuple[str, bytes]], mutation: tuple) -> bytes:
    changes, damage = mutation
    entries, links = list(entries), set()
    for kind, *args in changes:
        if kind == "rename":
            index = args[0] % len(entries)
            entries[index] = (args[1], entries[index][1])
        elif kind == "add":
            entries.append((args[0], SECRET.encode() if args[1] < 0 else bytes(args[1])))
        else:
            links.add(args[0] % len(entries))
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w") as archive:
        warnings.simplefilter("ignore", UserWarning)  # duplicate names are the point
        for index, (name, content) in enumerate(entries):
            info = zipfile.ZipInfo(name)
            if index in links:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, content, compress_type=zipfile.ZIP_DEFLATED, compresslevel=1)
    data = bytearray(buffer.getvalue())
    if damage is not None:
        kind, *args = damage
        if kind == "flip":
            data[int(args[0] * (len(data) - 1))] = args[1]
        elif kind == "truncate":
            del data[int(args[0] * len(data)) :]
        else:
            headers = [found.start() for found in re.finditer(b"PK\x01\x02", data)]  # central directory entries
            struct.pack_into("<I", data, headers[args[0] % len(headers)] + 24, args[1])
    return bytes(data)


# --- the properties --------------------------------------------------------------------------------

@contextlib.contextmanager
def sandbox() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="dosepred-fuzz-") as tmp:
        yield Path(tmp)


def files_under(root: Path) -> set[Path]:
    return {Path(folder, name).relative_to(root)
            for folder, folders, names in os.walk(root) for name in folders + names}


def read_or_refuse(path: Path) -> Patient | None:
    """A patient whose id is safe as a file name, or the data layer's error: it names where, says what,
    and quotes nothing from a file."""
    try:
        patient = sources.read_patient(path)
    except PatientDataError as error:
        assert error.where and error.problem and SECRET not in str(error)
        return None
    assert PATIENT_ID.fullmatch(patient.id)
    return patient


def assert_nothing_escaped(box: Path) -> None:
    assert not [path for path in box.parent.iterdir() if "victim" in path.name]
    assert not [path for path in files_under(box) if "victim" in str(path)]


class Originals(dict):
    """pt_196 in every format (mutated copies are made from these) and the good pt_201 as a pack."""

    def __repr__(self) -> str:  # Hypothesis prints the arguments of a failing example: not megabytes of CSV
        return "originals"


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> Originals:
    root = tmp_path_factory.mktemp("originals")
    patient = openkbp_csv.read_patient(SOURCE)
    nifti.write_patient(patient, root / "nifti" / patient.id)
    pack.write_patient(patient, root / f"{patient.id}.dpk")
    pack.write_patient(openkbp_csv.read_patient(GOOD), root / "good" / f"{GOOD.name}.dpk")
    entries = [(f"{SOURCE.name}/{path.name}", path.read_bytes()) for path in sorted(SOURCE.iterdir())]
    return Originals(csv=SOURCE, nifti=root / "nifti" / patient.id, pack=root / f"{patient.id}.dpk",
                     good=root / "good" / f"{GOOD.name}.dpk", zip=entries)


# The files of pt_196 in sorted order: 0 Brainstem, 6 PTV70, 9 ct, 12 voxel_dimensions.
@given(mutation=csv_mutations)
@example(mutation=("rename", 6, "ptv_70.csv"))
@example(mutation=("row", 0, 0.5, "1089400", "0.5"))
@example(mutation=("header", 9, SECRET))
@settings(FUZZ, max_examples=EXAMPLES["csv"])
def test_mutated_csv_patients(originals: Originals, mutation: tuple) -> None:
    with sandbox() as box:
        folder = shutil.copytree(originals["csv"], box / "pt_196")
        mutate_csv(folder, mutation)
        read_or_refuse(folder)


@given(mutation=nifti_mutations)
@example(mutation=("field", 0, "dim", 1, 4096, 0.0))
@example(mutation=("field", 0, "srow", 3, 0, 10.0))
@settings(FUZZ, max_examples=EXAMPLES["nifti"])
def test_mutated_nifti_patients(originals: Originals, mutation: tuple) -> None:
    with sandbox() as box:
        folder = shutil.copytree(originals["nifti"], box / "pt_196")
        mutate_nifti(folder, mutation)
        read_or_refuse(folder)


@given(mutation=pack_mutations)
@example(mutation=("field", "id", "../victim"))
@example(mutation=("field", "shape", [4096] * 3))
@example(mutation=("field", "lengths", [-5, 2**40, 3]))
@settings(FUZZ, max_examples=EXAMPLES["pack"])
def test_mutated_pack_files(originals: Originals, mutation: tuple) -> None:
    with sandbox() as box:
        path = Path(shutil.copy(originals["pack"], box / "pt_196.dpk"))
        mutate_pack(path, mutation)
        read_or_refuse(path)


@given(mutation=zip_mutations)
@example(mutation=([("add", "pt_196/ct.csv/inner", 2**10)], None))
@example(mutation=([("rename", 0, "pt_196/" + "a" * 300)], None))
@example(mutation=([], ("size", 0, 1000)))
@settings(FUZZ, max_examples=EXAMPLES["zip"])
def test_mutated_zip_uploads(originals: Originals, mutation: tuple) -> None:
    data = mutated_zip(originals["zip"], mutation)
    with sandbox() as box:
        destination = box / "upload-here"
        destination.mkdir()
        try:
            patient = extract_zip(data, destination)
        except UploadError as error:
            assert SECRET not in str(error)
            patient = None
        except PatientDataError as error:  # unpacked whole, but not one patient
            assert SECRET not in str(error)
            patient = None
        written = sum((destination / path).stat().st_size for path in files_under(destination)
                      if (destination / path).is_file())
        assert written <= min(MAX_UNPACKED_BYTES, MAX_RATIO * len(data))
        assert not [path for path in files_under(destination) if path.parts[0] != "upload"]  # no partial unpacking
        if patient is not None:
            assert patient.is_relative_to(destination)
            read_or_refuse(patient)
        assert_nothing_escaped(box)


@pytest.fixture(scope="module")
def predictor(two_output_model: Path) -> Predictor:
    return load_predictor(two_output_model, device=torch.device("cpu"))


batch_entries = st.lists(st.one_of(st.tuples(st.just("csv"), csv_mutations),
                                   st.tuples(st.just("nifti"), nifti_mutations),
                                   st.tuples(st.just("pack"), pack_mutations)), min_size=1, max_size=2)


@given(entries=batch_entries)
@example(entries=[("csv", ("rename", 9, "CT.csv"))])
@example(entries=[("pack", ("field", "id", "../victim"))])
@settings(FUZZ, max_examples=EXAMPLES["batch"])
def test_a_batch_still_predicts_the_good_patient(originals: Originals, predictor: Predictor, entries: list) -> None:
    with sandbox() as box:
        split, output = box / "split", box / "predictions"
        split.mkdir()
        shutil.copy(originals["good"], split)
        for number, (kind, mutation) in enumerate(entries):
            name = f"pt_x{number}"
            if kind == "pack":
                header, streams = split_pack(originals["pack"].read_bytes())
                (split / f"{name}.dpk").write_bytes(join_pack({**header, "id": name}, streams))
                mutate_pack(split / f"{name}.dpk", mutation)
            else:
                mutate = mutate_csv if kind == "csv" else mutate_nifti
                mutate(shutil.copytree(originals[kind], split / name), mutation)
        inputs = files_under(box)
        paths = sources.find_patients(split)
        report = predict_patients(predictor, paths, output, output_format=OutputFormat.nifti, tta=False, resume=False)
        assert GOOD.name in report.written
        assert len(report.written) + len(report.failed) == len(entries) + 1  # nothing vanished
        assert all(message and SECRET not in message for message in report.failed.values())
        expected = {f"{pid}{suffix}.nii.gz" for pid in report.written for suffix in ("", "_uncertainty")}
        assert {path.name for path in output.iterdir()} == expected  # no partial or stray file
        assert files_under(box) - {Path(output.name) / name for name in expected} - {Path(output.name)} == inputs
        assert_nothing_escaped(box)
