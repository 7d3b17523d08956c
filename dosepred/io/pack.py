"""The compact pack: one small file per patient, so the whole OpenKBP set travels with the code.

Format (``.dpk``): ``DPK2``, a little-endian uint32 header length, a JSON header (id, shape,
spacing, contoured ROIs, crop boxes, offsets, stream lengths), three streams, then the CRC-32 of all that
(little-endian uint32), so a file damaged after it was written is refused rather than read with changed voxels
(``DPK1`` files, written before the checksum, are the same without it and are still read):

- CT: HU shifted to non-negative integers, cropped to the non-air box, JPEG-LS near-lossless with
  NEAR = 1 (every voxel within 1 HU; CT that is not whole HU is rounded and coded losslessly instead).
- dose: rounded to whole mGy, then bins of 20 mGy: bin q holds 20q-10 ... 20q+9 mGy and decodes to its
  midpoint 20q-0.5 mGy (bin 0 to exactly 0), so OpenKBP's whole-mGy doses come back within 9.5 mGy and
  any dose within 10 mGy. Cropped, differenced between axial slices (dose is smooth across them),
  JPEG-LS lossless.
- masks: possible-dose mask and the 10 ROIs, cropped to their union, bit-packed, LZMA. Lossless.
  With a dose, the possible-dose mask is stored as its difference (XOR) from where the coded dose is
  non-zero: the two nearly coincide, so this channel costs almost nothing.

JPEG-LS is CharLS through pyjpegls, which codes at the data's own bit depth (12-13 bits here).

Reading trusts nothing in the file: every header field is checked (the grid against ``check_grid``,
boxes within the grid, stream lengths adding up to the file), and each stream must decode to exactly
the size its box gives, checked before the decoder allocates.
"""

from __future__ import annotations

import json
import lzma
import struct
import zlib
from pathlib import Path

import jpeg_ls
import numpy as np

from dosepred.io.errors import PatientDataError, reading
from dosepred.io.files import atomic_file
from dosepred.io.patient import ROIS, Patient, check_grid, check_patient_id

MAGIC = b"DPK2"
_UNCHECKED_MAGIC = b"DPK1"  # no checksum
SUFFIX = ".dpk"
CT_TOLERANCE_HU = 1
DOSE_STEP_MGY = 20
# Axis orders before coding (rows of the JPEG-LS image run along the last axis), measured best on OpenKBP.
CT_LAYOUT = (0, 1, 2)
DOSE_LAYOUT = (2, 0, 1)  # axial slices first, for the slice differences
# Bit-packed masks have no byte-level structure: no literal context bits (lc, lp, pb = 0) codes them smaller.
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "lc": 0, "lp": 0, "pb": 0}]

Box = list[int]  # [start0, stop0, start1, stop1, start2, stop2]
#: A 128^3 patient packs to ~150 KiB; even a full MAX_VOXELS grid stays far below this.
MAX_PACK_BYTES = 512 * 2**20
#: CT offsets are floor(min HU): any real CT lies well within this.
MAX_CT_OFFSET_HU = 1e6
# JPEG-LS streams as the encoder writes them: SOI, then the frame header (SOF55) with the image size.
_JPEGLS_START = b"\xff\xd8\xff\xf7"


def is_pack_file(path: Path) -> bool:
    return path.suffix == SUFFIX and path.is_file()


def write_patient(patient: Patient, path: str | Path, *, ct_tolerance_hu: int = CT_TOLERANCE_HU) -> None:
    """Write one patient as a ``.dpk`` file (atomically); every CT voxel comes back within ``ct_tolerance_hu``."""
    ct_offset = float(np.floor(patient.ct.min()))
    ct = patient.ct - ct_offset
    whole_hu = bool(np.array_equal(ct, np.round(ct)))
    ct_box, ct_stream = _encode_image(np.round(ct), near=ct_tolerance_hu if whole_hu else 0)
    streams = [ct_stream]
    header: dict = {
        "id": patient.id, "shape": list(patient.shape), "spacing": list(patient.spacing),
        "rois": list(patient.structures), "ct_offset": ct_offset, "ct_box": ct_box,
    }
    possible_dose = patient.possible_dose_mask
    if patient.dose is not None:
        bins = (np.rint(patient.dose.astype(np.float64) * 1000).astype(np.int64) + DOSE_STEP_MGY // 2) // DOSE_STEP_MGY
        header["dose_box"], header["dose_base"], dose_stream = _encode_slice_differences(bins)
        streams.append(dose_stream)
        possible_dose = possible_dose ^ (bins > 0)
    masks = np.stack([possible_dose, *patient.structures.values()])
    header["mask_box"] = _box(masks.any(axis=0))
    cropped = masks[(slice(None), *_slices(header["mask_box"]))]
    streams.append(lzma.compress(np.packbits(cropped).tobytes(), format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS))
    header["lengths"] = [len(stream) for stream in streams]
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    with atomic_file(path) as tmp:
        tmp.write_bytes(sealed(header_bytes, b"".join(streams)))


def sealed(header_bytes: bytes, streams: bytes) -> bytes:
    """A pack file's bytes: magic, header length, header, streams and their checksum."""
    body = MAGIC + struct.pack("<I", len(header_bytes)) + header_bytes + streams
    return body + struct.pack("<I", zlib.crc32(body))


def read_patient(path: str | Path) -> Patient:
    """Read one ``.dpk`` file back into a Patient."""
    path = Path(path)
    with reading(path):
        if path.stat().st_size > MAX_PACK_BYTES:
            raise PatientDataError(path, f"larger than any pack file ({MAX_PACK_BYTES // 2**20} MiB)")
        data = path.read_bytes()
    try:
        return _decode(data, path)
    except PatientDataError:
        raise
    except (ValueError, lzma.LZMAError, RuntimeError) as error:  # the stream decoders' own complaints
        raise PatientDataError(path, f"corrupt pack file ({error})") from None


def _decode(data: bytes, path: Path) -> Patient:
    if data[:4] == MAGIC:
        if len(data) < 12 or zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
            raise PatientDataError(path, "checksum mismatch: the file was damaged or cut off after it was written")
        data = data[:-4]
    elif data[:4] != _UNCHECKED_MAGIC:
        raise PatientDataError(path, f"not a dosepred pack file (expected {MAGIC!r} at the start)")
    if len(data) < 8:
        raise PatientDataError(path, "file length does not match its header (truncated?)")
    (header_length,) = struct.unpack_from("<I", data, 4)
    if 8 + header_length > len(data):
        raise PatientDataError(path, "file length does not match its header (truncated?)")
    try:
        header = json.loads(data[8 : 8 + header_length])
    except (ValueError, RecursionError):
        raise PatientDataError(path, "corrupt pack header (not valid JSON)") from None
    shape = _check_header(header, len(data) - 8 - header_length, path)
    position = 8 + header_length
    streams = []
    for length in header["lengths"]:
        streams.append(data[position : position + length])
        position += length
    ct = np.zeros(shape, dtype=np.float32)
    ct[_slices(header["ct_box"])] = _decode_image(streams[0], header["ct_box"])
    ct += header["ct_offset"]
    box = header["mask_box"]
    masks = np.zeros((1 + len(header["rois"]), *shape), dtype=bool)
    crop_shape = (masks.shape[0], *(box[2 * a + 1] - box[2 * a] for a in range(3)))
    masks[(slice(None), *_slices(box))] = _decode_bits(streams[-1], crop_shape)
    dose = None
    if "dose_box" in header:
        bins = _decode_slice_differences(streams[1], header["dose_box"], header["dose_base"])
        coded = bins > 0
        cropped = bins.astype(np.float32) * np.float32(DOSE_STEP_MGY / 1000) - np.float32(0.0005)
        cropped[~coded] = 0.0
        dose = np.zeros(shape, dtype=np.float32)
        dose[_slices(header["dose_box"])] = cropped
        masks[0][_slices(header["dose_box"])] ^= coded
    return Patient(id=header["id"], ct=ct, structures=dict(zip(header["rois"], masks[1:])),
                   possible_dose_mask=masks[0], spacing=header.get("spacing"), dose=dose, source=str(path))


def _check_header(header: object, stream_bytes: int, path: Path) -> tuple[int, int, int]:
    """Check every header field the decoder relies on, before anything is allocated; return the grid."""
    def corrupt(field: str, expected: str) -> PatientDataError:
        return PatientDataError(path, f"corrupt pack header: {field!r} must be {expected}")

    if not isinstance(header, dict):
        raise PatientDataError(path, "corrupt pack header (not a JSON object)")
    check_patient_id(header.get("id"), path)
    shape = check_grid(header.get("shape"), path)
    rois = header.get("rois")
    if not (isinstance(rois, list) and all(isinstance(roi, str) and roi in ROIS for roi in rois)
            and len(set(rois)) == len(rois)):
        raise corrupt("rois", f"a list of distinct names among {', '.join(ROIS)}")
    offset = header.get("ct_offset")
    if not (type(offset) in (int, float) and abs(offset) <= MAX_CT_OFFSET_HU):  # NaN fails the bound too
        raise corrupt("ct_offset", f"a number of HU within +-{MAX_CT_OFFSET_HU:g}")
    has_dose = "dose_box" in header
    for field in ("ct_box", "mask_box", *(["dose_box"] if has_dose else [])):
        box = header.get(field)
        if not (_is_list_of_ints(box, 6) and all(0 <= box[2 * a] <= box[2 * a + 1] <= shape[a] for a in range(3))):
            raise corrupt(field, "6 whole numbers: start and stop along each axis, within the grid")
    base = header.get("dose_base")
    if has_dose and not (type(base) is int and -(2**16) < base <= 0):
        raise corrupt("dose_base", "a whole number from -65535 to 0")
    lengths = header.get("lengths")
    if not (_is_list_of_ints(lengths, 3 if has_dose else 2) and all(n >= 0 for n in lengths)):
        raise corrupt("lengths", f"{3 if has_dose else 2} byte counts, one per stream")
    if sum(lengths) != stream_bytes:
        raise PatientDataError(path, "file length does not match its header (truncated?)")
    return shape


def _is_list_of_ints(value: object, count: int) -> bool:
    return isinstance(value, list) and len(value) == count and all(type(v) is int for v in value)


def _box(nonzero: np.ndarray) -> Box:
    """The bounding box of the True voxels (empty box at 0 when there are none)."""
    box: Box = []
    for axis in range(nonzero.ndim):
        hits = np.flatnonzero(nonzero.any(axis=tuple(a for a in range(nonzero.ndim) if a != axis)))
        box += [int(hits[0]), int(hits[-1]) + 1] if hits.size else [0, 0]
    return box


def _slices(box: Box) -> tuple[slice, ...]:
    return tuple(slice(box[2 * a], box[2 * a + 1]) for a in range(len(box) // 2))


def _jpegls_encode(values: np.ndarray, near: int) -> bytes:
    """JPEG-LS of a non-negative integer array, seen as a 2D image whose rows run along its last axis."""
    if values.size == 0:
        return b""
    if values.max() >= 2**16:
        raise ValueError(f"values up to {int(values.max())} exceed JPEG-LS's 16 bits")
    image = np.ascontiguousarray(values, dtype=np.uint16).reshape(-1, values.shape[-1])
    bits = max(2, int(image.max()).bit_length())
    return bytes(jpeg_ls.encode_buffer(image.tobytes(), image.shape[0], image.shape[1], 1, bits, lossy_error=near))


def _jpegls_decode(stream: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Decode an image the encoder wrote for an array of ``shape``; its frame header must say that size,
    as CharLS allocates what the header says."""
    rows, columns = int(np.prod(shape[:-1])), shape[-1]
    if not stream:
        if rows * columns:
            raise ValueError("an image stream is missing")
        return np.zeros(shape, dtype=np.uint16)
    if len(stream) < 13 or not stream.startswith(_JPEGLS_START):
        raise ValueError("an image stream is not JPEG-LS")
    _, _, height, width, components = struct.unpack_from(">HBHHB", stream, len(_JPEGLS_START))
    if (height, width, components) != (rows, columns, 1):
        raise ValueError("an image's size differs from its box")
    pixels, info = jpeg_ls.decode_buffer(stream)
    dtype = np.uint8 if info["bits_per_sample"] <= 8 else np.uint16
    return np.frombuffer(pixels, dtype=dtype).reshape(shape)


def _decode_bits(stream: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Unpack the LZMA-coded mask bits of ``shape``, decompressing no more than they take."""
    count = int(np.prod(shape))
    expected = (count + 7) // 8
    packed = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS).decompress(stream, expected + 1)
    if len(packed) != expected:
        raise ValueError("the mask stream's size differs from its box")
    return np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=count).reshape(shape)


def _box_shape(box: Box, layout: tuple[int, int, int]) -> tuple[int, ...]:
    return tuple(box[2 * a + 1] - box[2 * a] for a in layout)


def _encode_image(values: np.ndarray, *, near: int) -> tuple[Box, bytes]:
    box = _box(values != 0)
    return box, _jpegls_encode(values[_slices(box)].transpose(CT_LAYOUT), near)


def _decode_image(stream: bytes, box: Box) -> np.ndarray:
    return _jpegls_decode(stream, _box_shape(box, CT_LAYOUT)).transpose(np.argsort(CT_LAYOUT))


def _encode_slice_differences(values: np.ndarray) -> tuple[Box, int, bytes]:
    """Crop, put the axial axis first and code each slice as its difference from the previous one."""
    box = _box(values != 0)
    differences = np.diff(values[_slices(box)].transpose(DOSE_LAYOUT), axis=0, prepend=0)
    base = int(differences.min(initial=0))
    return box, base, _jpegls_encode(differences - base, near=0)


def _decode_slice_differences(stream: bytes, box: Box, base: int) -> np.ndarray:
    differences = _jpegls_decode(stream, _box_shape(box, DOSE_LAYOUT)).astype(np.int32) + base
    return np.cumsum(differences, axis=0, dtype=np.int32).transpose(np.argsort(DOSE_LAYOUT))
