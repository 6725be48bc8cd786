"""Save and load analyses: a versioned ``.npz`` of plain arrays plus JSON metadata.

File format ``iua-widgets-analysis``, version 1
------------------------------------------------

A zip archive in the layout of ``numpy.savez_compressed``, with these members
(each a ``.npy`` array, little-endian, never an object array):

``metadata``
    uint8 bytes of a UTF-8 JSON object with exactly these keys:

    - ``format``: ``"iua-widgets-analysis"``; ``version``: ``1``;
      ``writer``: the iua_widgets version that wrote the file (informative);
    - ``rtol``, ``atol``: the tolerances.
    - ``grid``: the threshold grid, a strictly increasing list of floats
      starting at 0 and containing ``atol``. JSON numbers are written with
      Python's shortest round-trip ``repr``, so every float64 comes back exactly.
    - ``unit`` (``"element"`` or ``"channel"``), ``channel_axis``, ``per_input``
      (``"grid"``, ``"start"`` or ``"none"``);
    - ``inputs_seen``, ``batches_seen``: counters over every batch fed;
      ``expected_inputs``: an int or ``null``;
    - ``layers``: one object per layer, in the order the layers first
      arrived, with ``name``, ``unit_shape`` (list of ints), ``inputs`` (inputs
      this layer saw), ``nonfinite`` (NaN and +-inf values seen), and
      ``count_sums``, ``count_square_sums``: per grid threshold, the sum and
      the sum of squares over inputs of the per-input inactive counts, as
      decimal strings because they may exceed 64 bits;
    - ``sha256``: hex SHA-256 digest of the content (see ``content_digest``).

``layer{k}.cumulative``
    ``(len(grid), units)`` uint32 (``<u4``) or int64 (``<i8``), layer ``k`` of
    ``layers``: how many inputs had unit ``u`` within ``grid[j]`` of zero.

``layer{k}.inactive``
    Per-input inactive counts in input order: ``(inputs, len(grid))`` int32 or
    int64 for ``per_input="grid"``, ``(inputs,)`` int64 at ``atol`` for
    ``"start"``, absent for ``"none"``.

Files are written atomically: to a temporary file in the target's folder,
flushed and fsynced, then renamed over the target with ``os.replace``, so a
crash leaves either the old file or the new one (and possibly a hidden
``.NAME.*.tmp`` file), never a truncated one.

Loading reads the archive with ``numpy.load(..., allow_pickle=False)``,
checks every npy header against the metadata before reading the array,
verifies the digest and the consistency of all counts, and raises
``AnalysisFileError`` (a ``ValueError``) for any file it cannot trust.
The digest detects accidental corruption; it is not a signature.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from .persist_checks import (
    FORMAT_NAME,
    FORMAT_VERSION,
    InvalidContent,
    check_format,
    check_layer,
    decode_layer,
    decode_settings,
    expected_arrays,
    parse_metadata,
)
from .state import AnalysisState, capture, engine_of, restore
from .streaming import DEFAULT_MAX_CACHE_BYTES, StreamingIUA

logger = logging.getLogger(__name__)

METADATA_MEMBER = "metadata"
_ZIP_MAGIC = b"PK\x03\x04"
#: Deflate cannot compress better than about 1032:1; a member claiming more is corrupt.
_MAX_DEFLATE_RATIO = 1100


class AnalysisFileError(ValueError):
    """An analysis file is corrupt, truncated, foreign or of a newer format version.

    Attributes
    ----------
    path
        The file, as given.
    problem
        What is wrong with it.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"Cannot load analysis file {self.path!r}: {problem}.")


# -- writing ------------------------------------------------------------------


def canonical_json(metadata: dict[str, Any]) -> str:
    """Serialise metadata the one way the digest is computed over."""
    return json.dumps(metadata, sort_keys=True, separators=(",", ":"), allow_nan=False)


def content_digest(metadata: dict[str, Any], arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the canonical metadata (without ``sha256``) and every array.

    Each array contributes its member name, ``dtype.str``, shape and
    C-order bytes, in sorted member order.
    """
    digest = hashlib.sha256()
    body = {key: value for key, value in metadata.items() if key != "sha256"}
    digest.update(canonical_json(body).encode("utf-8"))
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"\n{name}|{array.dtype.str}|{array.shape}\n".encode())
        digest.update(array.data if array.size else b"")
    return digest.hexdigest()


def encode_state(state: AnalysisState) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Return the metadata (without digest) and the array members describing ``state``."""
    from .. import __version__

    layers = []
    arrays: dict[str, np.ndarray] = {}
    for position, layer in enumerate(state.layers):
        layers.append({
            "name": layer.name,
            "unit_shape": [int(n) for n in layer.unit_shape],
            "inputs": int(layer.inputs),
            "nonfinite": int(layer.nonfinite),
            "count_sums": [str(int(s)) for s in layer.count_sums],
            "count_square_sums": [str(int(s)) for s in layer.count_square_sums],
        })
        arrays[f"layer{position}.cumulative"] = _little_endian(layer.cumulative)
        if layer.inactive is not None:
            arrays[f"layer{position}.inactive"] = _little_endian(layer.inactive)
    metadata = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "writer": f"iua_widgets {__version__}",
        "rtol": float(state.rtol),
        "atol": float(state.atol),
        "grid": [float(v) for v in state.grid],
        "unit": state.unit,
        "channel_axis": int(state.channel_axis),
        "per_input": state.per_input,
        "inputs_seen": int(state.inputs_seen),
        "batches_seen": int(state.batches_seen),
        "expected_inputs": None if state.expected_inputs is None else int(state.expected_inputs),
        "layers": layers,
    }
    return metadata, arrays


def _little_endian(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))


def write_members(
    path: str | os.PathLike[str], metadata: dict[str, Any], arrays: dict[str, np.ndarray]
) -> Path:
    """Add the content digest to ``metadata`` and write the archive atomically.

    This writes whatever it is given; ``save`` is the checked way in.
    """
    metadata = dict(metadata, sha256=content_digest(metadata, arrays))
    text = canonical_json(metadata).encode("utf-8")
    members = dict(arrays)
    members[METADATA_MEMBER] = np.frombuffer(text, dtype=np.uint8)
    target = writable_target(Path(path))
    _write_atomically(target, lambda stream: write_npz(stream, members))
    return target


def writable_target(path: Path) -> Path:
    """Return the regular file that ``path`` names, following symbolic links.

    The atomic rename replaces whatever is at the target, so a device, pipe
    or folder there (``/dev/null`` as root, say) raises ``ValueError``
    instead, and a symbolic link is followed so that its target is written
    and the link kept.
    """
    target = path.resolve() if path.is_symlink() else path
    if target.exists() and not target.is_file():
        raise ValueError(
            f"Cannot save to {str(path)!r}: it exists and is not a regular file. "
            "Choose a file path."
        )
    return target


def write_npz(stream: IO[bytes], members: dict[str, np.ndarray]) -> None:
    """Write ``members`` as an ``.npz`` archive that ``numpy.load`` reads.

    Deflate level 1 instead of ``numpy.savez_compressed``'s default (6):
    for a 1,048,576-unit layer it compressed 176 MiB of cumulative counts
    to 44 MiB in 1.5 s, against 37 MiB in 12 s (one core of the 2-core
    development machine).
    """
    with zipfile.ZipFile(
        stream, mode="w", compression=zipfile.ZIP_DEFLATED, compresslevel=1, allowZip64=True
    ) as archive:
        for name, array in members.items():
            with archive.open(f"{name}.npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def _write_atomically(target: Path, write: Callable[[IO[bytes]], None]) -> None:
    temporary = target.parent / f".{target.name}.{secrets.token_hex(8)}.tmp"
    # os.open with 0o666 lets the umask set the permissions, as for any new file.
    descriptor = os.open(
        temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666
    )
    try:
        with os.fdopen(descriptor, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    if hasattr(os, "O_DIRECTORY"):
        # Make the rename itself durable; directories cannot be opened on Windows.
        folder = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def save_state(state: AnalysisState, path: str | os.PathLike[str]) -> Path:
    """Write ``state`` to ``path`` (the name is used as given, no suffix added)."""
    metadata, arrays = encode_state(state)
    target = write_members(path, metadata, arrays)
    logger.info(
        "Saved analysis of %d inputs over %d layers to %s",
        state.inputs_seen, len(state.layers), target,
    )
    return target


def save(analysis: object, path: str | os.PathLike[str]) -> Path:
    """Write an ``IUA`` or ``StreamingIUA`` to ``path``; see the module docstring for the format."""
    return save_state(capture(engine_of(analysis)), path)


# -- reading ------------------------------------------------------------------


def load_state(path: str | os.PathLike[str]) -> AnalysisState:
    """Read and check an analysis file.

    Raises
    ------
    AnalysisFileError
        If the file is not an analysis file, is truncated or corrupt, is of a
        newer format version, or contains inconsistent counts.
    OSError
        If the file cannot be opened (missing, a directory, no permission).
    """
    with open(path, "rb") as stream:
        magic = stream.read(len(_ZIP_MAGIC))
    if magic != _ZIP_MAGIC:
        problem = "the file is empty" if not magic else "not an .npz archive"
        raise AnalysisFileError(path, problem)
    try:
        return _read(path)
    except InvalidContent as error:
        raise AnalysisFileError(path, str(error)) from None


def _read(path: str | os.PathLike[str]) -> AnalysisState:
    # Any exception while decoding the container (zipfile, zlib, npy headers)
    # means the bytes are damaged; the content checks raise InvalidContent.
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as error:
        raise InvalidContent(f"unreadable .npz archive ({type(error).__name__}: {error})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InvalidContent("not an .npz archive")
    with archive:
        members = archive.zip.namelist()
        if len(set(members)) != len(members):
            raise InvalidContent("the archive lists a member twice")
        if f"{METADATA_MEMBER}.npy" not in members:
            raise InvalidContent("not an iua_widgets analysis file (it has no 'metadata' member)")
        raw = _read_member(archive, METADATA_MEMBER, ("|u1",), None)
        metadata = parse_metadata(raw.tobytes())
        check_format(metadata)
        state = decode_settings(metadata)
        if not isinstance(metadata["layers"], list):
            raise InvalidContent("the metadata field 'layers' is not a list")
        for position, entry in enumerate(metadata["layers"]):
            state.layers.append(decode_layer(entry, position, state))
        names = [layer.name for layer in state.layers]
        if len(set(names)) != len(names):
            raise InvalidContent("two layers have the same name")
        if state.layers and state.inputs_seen == 0:
            raise InvalidContent("layers are listed but inputs_seen is 0")
        expected = expected_arrays(state)
        wanted = {f"{name}.npy" for name in expected} | {f"{METADATA_MEMBER}.npy"}
        if set(members) != wanted:
            missing, extra = sorted(wanted - set(members)), sorted(set(members) - wanted)
            raise InvalidContent(f"archive members do not match the metadata (missing {missing}, unexpected {extra})")
        arrays = {
            name: _read_member(archive, name, dtypes, shape)
            for name, (dtypes, shape) in expected.items()
        }
    if content_digest(metadata, arrays) != metadata["sha256"]:
        raise InvalidContent("the content does not match its sha256 digest (the file is corrupt)")
    for position, layer in enumerate(state.layers):
        layer.cumulative = arrays[f"layer{position}.cumulative"]
        layer.inactive = arrays.get(f"layer{position}.inactive")
        check_layer(layer, state)
    return state


def _read_member(
    archive: Any, name: str, dtypes: tuple[str, ...], shape: tuple[int, ...] | None
) -> np.ndarray:
    """Read one member after checking its npy header: dtype, shape and size."""
    member = f"{name}.npy"

    try:
        info = archive.zip.getinfo(member)
        with archive.zip.open(member) as stream:
            version = np.lib.format.read_magic(stream)
            if version == (1, 0):
                header = np.lib.format.read_array_header_1_0(stream)
            elif version == (2, 0):
                header = np.lib.format.read_array_header_2_0(stream)
            else:
                raise ValueError(f"unsupported npy version {version}")
            offset = stream.tell()
    except Exception as error:
        raise InvalidContent(f"member {name!r} has no valid npy header ({error})") from None

    found_shape, _, dtype = header
    if dtype.str not in dtypes or (shape is not None and found_shape != shape):
        raise InvalidContent(
            f"member {name!r} is {dtype.str} {found_shape}, expected one of {dtypes} "
            f"with shape {shape if shape is not None else '(any)'}"
        )
    if len(found_shape) != (1 if shape is None else len(shape)):
        raise InvalidContent(f"member {name!r} has {len(found_shape)} dimensions")
    nbytes = int(np.prod(found_shape, dtype=object)) * dtype.itemsize
    if info.file_size != offset + nbytes:
        raise InvalidContent(
            f"member {name!r} is {info.file_size} bytes but its header requires {offset + nbytes}"
        )
    if info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 4096:
        raise InvalidContent(f"member {name!r} claims an impossible compression ratio")

    try:
        array = archive[name]
    except Exception as error:
        raise InvalidContent(f"member {name!r} is damaged ({type(error).__name__}: {error})") from None
    if not isinstance(array, np.ndarray) or array.dtype.str not in dtypes:
        raise InvalidContent(f"member {name!r} did not decode to an array of {dtypes}")
    return array


def load(
    path: str | os.PathLike[str], *, max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES
) -> StreamingIUA:
    """Read an analysis file into a new ``StreamingIUA`` that accepts further batches."""
    state = load_state(path)
    logger.info(
        "Loaded analysis of %d inputs over %d layers from %s",
        state.inputs_seen, len(state.layers), os.fspath(path),
    )
    engine = restore(state, max_cache_bytes=max_cache_bytes)
    engine.loaded_from = Path(path)
    return engine
