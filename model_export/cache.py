"""The preprocessed-scan cache: every scan's 256 px model tensor, decoded once, memory-mapped from disk.

Layout: `<cache_dir>/<PREPROCESSING_ID as a folder name>-<dtype>/` (`...+<ENLARGE_ID>...` for the recipe
pool, whose 64 px copies are enlarged first; nothing else takes that step) holds immutable `chunk-NNNNN.npy`
files ([rows, 1, 256, 256]) and `index.json`, which maps each file's resolved path to its chunk,
row, size, modification time and steps. Asking for scans decodes only those that are new or whose size
or modification time changed, in worker processes that write straight into a new chunk; the index
is replaced atomically under a file lock, so concurrent runs (two cv rows, DDP ranks) share one cache.
Stale rows stay in their old chunks until the cache folder is deleted.

Stored dtype (`--cache-dtype`):
- `float32` (default): the numbers `service.preprocessing.preprocess` returns, bit for bit; the
  shipped model was trained on them. 256 KiB per scan (29 GB for NIH's 112,120 scans, on disk).
- `float16`: half that; values in [0, 1] off by at most 2.4e-4 (measured in docs/training.md).
- `uint8`: a quarter; off by at most 1/510 (round to the nearest of 256 levels).
Readers always get float32 [N, 1, 256, 256].
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from model_export.errors import DataError
from service.decode import decode
from service.errors import ServiceError
from service.preprocessing import OUTPUT_SIZE, PREPROCESSING_ID, preprocess
from service.settings import DEFAULT_MAX_PIXELS

DTYPES = ("float32", "float16", "uint8")
SHAPE = (1, OUTPUT_SIZE, OUTPUT_SIZE)
ENLARGE_ID = "repeat-to-256/v1"  # names `enlarge_small` in the cache folder of the pool, the only reader that takes it
TASK_ROWS = 16  # scans per worker task: big enough to amortise a task, small enough to spread the work


def scan_tensor(path: Path, *, enlarge: bool = False) -> np.ndarray:
    """The service's tensor [1, 256, 256] of one file, refused where the service refuses it.

    `enlarge` is the recipe pool's one extra step (`ENLARGE_ID`): NIH's 64 px copies are first pixel-repeated.
    """
    pixels = decode(path.read_bytes(), max_pixels=DEFAULT_MAX_PIXELS).pixels
    return preprocess(enlarge_small(pixels) if enlarge else pixels)[0]


def enlarge_small(pixels: np.ndarray) -> np.ndarray:
    """A square image whose side divides 256 and is smaller, repeated pixel by pixel to 256 px; others unchanged.

    After the network's area pooling back to that side, such a copy is its own pixel grid again.
    """
    side = pixels.shape[0]
    if pixels.shape[0] == pixels.shape[1] and side < OUTPUT_SIZE and OUTPUT_SIZE % side == 0:
        factor = OUTPUT_SIZE // side
        return np.repeat(np.repeat(pixels, factor, axis=0), factor, axis=1)
    return pixels


def read_scan(path: Path, *, enlarge: bool = False) -> tuple[np.ndarray | None, str | None]:
    """(tensor, None), or (None, why the file cannot be used)."""
    try:
        return scan_tensor(path, enlarge=enlarge), None
    except ServiceError as error:
        return None, f"{error.code}: {error.message}"
    except OSError as error:
        return None, f"unreadable: {error.strerror or error}"


def encode(tensor: np.ndarray, dtype: str) -> np.ndarray:
    """float32 [0, 1] -> the stored dtype."""
    if dtype == "uint8":
        return np.rint(np.clip(tensor, 0.0, 1.0) * 255.0).astype(np.uint8)
    return tensor.astype(dtype)


def to_float32(stored: np.ndarray) -> np.ndarray:
    """The stored dtype -> float32 [0, 1] (float32 passes through unchanged)."""
    if stored.dtype == np.uint8:
        return stored.astype(np.float32) / np.float32(255.0)
    return np.asarray(stored, dtype=np.float32)


@dataclass(frozen=True)
class Cached:
    """Scans as float32 tensors, read row by row from the cache's memory-mapped chunks.

    Indexing (an int, a slice or an index array) reads only those rows: whatever the dataset's size,
    memory holds one batch. Picklable (chunk paths, not open maps), so DataLoader workers can read it.
    """

    chunks: tuple[str, ...]
    chunk_of: np.ndarray  # per scan: which chunk
    row_of: np.ndarray  # per scan: which row of its chunk

    def __len__(self) -> int:
        return len(self.chunk_of)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *SHAPE)

    def __getitem__(self, key: int | slice | np.ndarray) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self[np.array([key])][0]
        indices = np.arange(len(self))[key]
        out = np.empty((len(indices), *SHAPE), dtype=np.float32)
        maps = open_chunks(self.chunks)
        for position, (chunk, row) in enumerate(zip(self.chunk_of[indices], self.row_of[indices])):
            out[position] = to_float32(maps[chunk][row])
        return out

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        return self[:] if dtype is None else self[:].astype(dtype)

    def take(self, indices: np.ndarray | Sequence[int]) -> Cached:
        """A view of some scans, in the given order, still on disk."""
        chosen = np.asarray(indices, dtype=np.int64)
        return Cached(self.chunks, self.chunk_of[chosen], self.row_of[chosen])


_open_maps: dict[str, np.ndarray] = {}  # per process: chunk path -> its memory map (chunks never change)


def open_chunks(chunks: tuple[str, ...]) -> list[np.ndarray]:
    maps = []
    for chunk in chunks:
        if chunk not in _open_maps:
            _open_maps[chunk] = np.load(chunk, mmap_mode="r")
        maps.append(_open_maps[chunk])
    return maps


class ScanCache:
    """One cache folder for one preprocessing (the service's, or the pool's with `enlarge`) and one stored dtype."""

    def __init__(self, cache_dir: Path, *, dtype: str = "float32", enlarge: bool = False) -> None:
        if dtype not in DTYPES:
            raise DataError(f"cache dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.dtype, self.enlarge = dtype, enlarge
        steps = f"{PREPROCESSING_ID}+{ENLARGE_ID}" if enlarge else PREPROCESSING_ID
        self.folder = cache_dir / f"{re.sub(r'[^A-Za-z0-9.]+', '-', steps)}-{dtype}"

    def tensors(self, paths: Sequence[Path], *, workers: int = 2, progress: bool = True) -> Cached:
        """The tensors of `paths`, in order; new or changed files are decoded first (in `workers` processes).

        Unreadable files stop the run with one line per file, and nothing is added to the cache.
        """
        keys, stats = [], []
        for path in paths:
            try:
                stat = os.stat(path)
            except OSError as error:
                raise DataError(f"{path}: {error.strerror or error}") from error
            keys.append(str(Path(path).resolve()))
            stats.append((stat.st_size, stat.st_mtime_ns))
        index = self.read_index()
        if any(not self.fresh(index.get(key), stat) for key, stat in zip(keys, stats)):
            with self.locked():
                index = self.read_index()  # another process may have built them meanwhile
                missing = sorted({key for key, stat in zip(keys, stats) if not self.fresh(index.get(key), stat)})
                if missing:
                    index = self.build(missing, index, workers=workers, progress=progress)
        chunks = sorted({index[key]["chunk"] for key in keys})
        position = {chunk: number for number, chunk in enumerate(chunks)}
        chunk_of = np.array([position[index[key]["chunk"]] for key in keys], dtype=np.int64)
        row_of = np.array([index[key]["row"] for key in keys], dtype=np.int64)
        return Cached(tuple(str(self.folder / chunk) for chunk in chunks), chunk_of, row_of)

    def read_index(self) -> dict[str, dict[str, int | str]]:
        try:
            return json.loads((self.folder / "index.json").read_text())
        except FileNotFoundError:
            return {}

    @contextmanager
    def locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def build(self, keys: list[str], index: dict, *, workers: int, progress: bool) -> dict:
        """Decode `keys` into a new chunk (in parallel), then publish the chunk and the updated index."""
        taken = [int(name[6:11]) for name in os.listdir(self.folder) if re.fullmatch(r"chunk-\d{5}\.npy", name)]
        name = f"chunk-{max(taken, default=-1) + 1:05d}.npy"
        partial = self.folder / f"{name}.{os.getpid()}.partial"
        np.lib.format.open_memmap(partial, mode="w+", dtype=self.dtype, shape=(len(keys), *SHAPE)).flush()
        tasks = [
            (str(partial), self.dtype, self.enlarge, start, keys[start : start + TASK_ROWS]) for start in range(0, len(keys), TASK_ROWS)
        ]
        failures: list[str] = []
        bar = tqdm(total=len(keys), desc="decode", disable=None if progress else True)
        if workers > 1 and len(tasks) > 1:
            # spawn, not fork: the parent may hold torch's thread pools, which do not survive a fork
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                for problems, done in pool.map(fill_rows, tasks):
                    failures += problems
                    bar.update(done)
        else:
            for task in tasks:
                problems, done = fill_rows(task)
                failures += problems
                bar.update(done)
        bar.close()
        if failures:
            partial.unlink()
            raise DataError(f"{len(failures)} of {len(keys)} images cannot be used:\n" + "\n".join(failures))
        partial.replace(self.folder / name)
        for row, key in enumerate(keys):
            stat = os.stat(key)
            index[key] = {"chunk": name, "row": row, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "enlarge": self.enlarge}
        written = self.folder / "index.json.partial"
        written.write_text(json.dumps(index))
        written.replace(self.folder / "index.json")
        return index


    def fresh(self, entry: dict | None, stat: tuple[int, int]) -> bool:
        """A row is reused only for the same file and the same steps (a row written before the steps were recorded
        per row, when small scans were enlarged everywhere, is decoded again)."""
        return entry is not None and (entry["size"], entry["mtime_ns"]) == stat and entry.get("enlarge") == self.enlarge


def fill_rows(task: tuple[str, str, bool, int, list[str]]) -> tuple[list[str], int]:
    """Worker: decode some files into their rows of the chunk being built; return the failures."""
    chunk, dtype, enlarge, start, keys = task
    rows = np.load(chunk, mmap_mode="r+")
    problems = []
    for offset, key in enumerate(keys):
        tensor, problem = read_scan(Path(key), enlarge=enlarge)
        if problem is None:
            rows[start + offset] = encode(tensor, dtype)
        else:
            problems.append(f"  {key}: {problem}")
    rows.flush()
    return problems, len(keys)
