"""Where rows come from: a ``save_to_disk`` directory, a local folder of images, or a Hub dataset id.

A local folder gives **one row per image file under it**, whatever the file and folder names are called:
``imagefolder`` infers splits from names (a file called ``test_1.jpg`` turns the whole folder into a ``test``
split of the files so named, and the rest is never read), which a privacy tool cannot accept. Here:

- every file whose extension is an image format (Pillow's readable formats plus HEIC/HEIF, AVIF, JPEG XL, SVG
  and camera RAW) is a row, in sorted order of its path relative to the folder (``/``-separated, compared as
  text), hidden files included; a file that cannot be read becomes an ``invalid_input`` row, never a gap;
- other files are listed in one warning (``metadata.*`` files excepted);
- the rows form one split, ``train``; never a split from a name;
- a ``label`` column (``ClassLabel``, names sorted) comes from the parent folder's name under imagefolder's own
  rule: only without metadata files, when every image lies at the same depth and there are two names or more;
- ``metadata.jsonl`` / ``metadata.csv`` / ``metadata.parquet`` files (imagefolder's format: a ``file_name``
  column relative to the metadata file's folder) add their columns; an image without an entry gets empty
  values (imagefolder would drop it) and entries naming no image file are counted in a warning.

The image cells hold the files' paths (no copy of the originals is written anywhere). The dataset's fingerprint
is a hash of the relative paths, sizes and modification times of the images and of the metadata files'
contents, so a resumed run notices a changed folder. ``folder_manifest`` gives the relative path of every row,
for ``unsafe2safe_files.json`` beside the output (kept local: file names can identify people).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

FOLDER_SPLIT = "train"
METADATA_NAMES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
MANIFEST = "unsafe2safe_files.json"
# formats Pillow cannot open without a plugin, but which are photos all the same: they become invalid_input rows
# (the error names the format) rather than being skipped
_MORE_IMAGE_SUFFIXES = {
    ".heic", ".heif", ".avif", ".jxl", ".svg", ".dng", ".cr2", ".cr3", ".nef", ".nrw", ".arw", ".srf", ".sr2",
    ".orf", ".rw2", ".raf", ".pef", ".srw", ".raw", ".rwl", ".3fr", ".erf", ".kdc", ".mrw", ".x3f",
}


def image_suffixes() -> frozenset[str]:
    """File extensions counted as images: every format Pillow can open here, and common ones it cannot."""
    from PIL import Image

    Image.init()
    readable = {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    return frozenset(readable | _MORE_IMAGE_SUFFIXES)


@dataclass
class FolderListing:
    root: Path
    images: list[str]  # relative paths, sorted
    metadata: list[str]  # relative paths of metadata files
    others: list[str]  # relative paths of everything else


def list_folder(root: str | os.PathLike, exclude: tuple[str, ...] = ()) -> FolderListing:
    """Every file under ``root`` (recursively, symlinked folders not followed), sorted by relative path and sorted
    into images, metadata files and other files. Paths under ``exclude`` are left out (e.g. the run's own output
    folder inside the source)."""
    root = Path(root)
    skip = {os.path.realpath(p) for p in exclude}
    suffixes = image_suffixes()
    images, metadata, others = [], [], []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if os.path.realpath(os.path.join(folder, d)) not in skip]
        for name in files:
            full = os.path.join(folder, name)
            rel = Path(os.path.relpath(full, root)).as_posix()
            if name in METADATA_NAMES:
                metadata.append(rel)
            elif os.path.splitext(name)[1].lower() in suffixes:
                images.append(rel)
            else:
                others.append(rel)
    return FolderListing(root, sorted(images), sorted(metadata), sorted(others))


def _say_few(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _read_metadata(path: Path):
    import pyarrow as pa

    if path.suffix == ".jsonl":
        import pyarrow.json as paj

        return paj.read_json(str(path))
    if path.suffix == ".csv":
        import pandas as pd

        return pa.Table.from_pandas(pd.read_csv(path), preserve_index=False)
    import pyarrow.parquet as pq

    return pq.read_table(str(path))


def _metadata_columns(listing: FolderListing) -> tuple[dict, dict]:
    """The metadata files' columns as {column: [value per image]} and their features, joined on the image
    paths (imagefolder's format: ``file_name`` relative to the metadata file's folder)."""
    import pyarrow as pa
    from datasets import Features

    index = {rel: i for i, rel in enumerate(listing.images)}
    tables, unmatched = [], 0
    for rel in listing.metadata:
        table = _read_metadata(listing.root / rel)
        names = table.column_names
        if "file_name" not in names:
            multi = [n for n in names if n.endswith("file_name") or n.endswith("file_names")]
            raise ValueError(
                f"metadata file {rel!r} has no `file_name` column" + (f" (it has {multi}: several images per row are not supported here)" if multi else "")
                + "; load such a dataset with datasets.load_dataset and pass it as a save_to_disk folder"
            )
        base = os.path.dirname(rel)
        rows = []
        for name in table.column("file_name").to_pylist():
            target = os.path.normpath(os.path.join(base, str(name))).replace(os.sep, "/")
            if os.path.isabs(str(name)) or target == ".." or target.startswith("../"):
                raise ValueError(f"metadata file {rel!r} names {name!r}, which lies outside its folder")
            rows.append(index.get(target))
        unmatched += sum(r is None for r in rows)
        tables.append((table.drop(["file_name"]), rows))
    schemas = {tuple(t.schema) for t, _ in tables}
    if len(schemas) > 1:
        raise ValueError(f"metadata files {listing.metadata} have different columns or types; make them agree")
    table0 = tables[0][0]
    columns = {name: [None] * len(listing.images) for name in table0.column_names}
    described = [False] * len(listing.images)
    for table, rows in tables:
        for name in table.column_names:
            values = table.column(name).to_pylist()
            for row, value in zip(rows, values):
                if row is not None:
                    columns[name][row] = value
        for row in rows:
            if row is not None:
                described[row] = True
    if unmatched:
        logger.warning("%d metadata entr%s name no image file of the folder (ignored)", unmatched, "y" if unmatched == 1 else "ies")
    missing = described.count(False)
    if missing:
        logger.warning("%d image(s) have no metadata entry: their metadata columns are empty", missing)
    return columns, dict(Features.from_arrow_schema(pa.schema(list(table0.schema))))


def folder_fingerprint(listing: FolderListing) -> str:
    """A hash of what the rows depend on: the image paths, sizes and modification times, and the metadata files."""
    h = hashlib.sha256(b"unsafe2safe-folder-v1\0")
    for rel in listing.images:
        st = os.stat(listing.root / rel)
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    for rel in listing.metadata:
        h.update(rel.encode() + b"\0" + hashlib.sha256((listing.root / rel).read_bytes()).digest())
    return h.hexdigest()[:32]


def load_image_folder(root: str | os.PathLike, exclude: tuple[str, ...] = (), split: str = FOLDER_SPLIT):
    """A ``Dataset`` (named ``split``) with one row per image file under ``root``; see the module docstring."""
    import datasets
    import pyarrow as pa

    listing = list_folder(root, exclude)
    if not listing.images:
        raise ValueError(f"{str(root)!r} is a directory but neither a save_to_disk dataset nor a folder of images (no image file under it)")
    if listing.others:
        logger.warning(
            "%d file(s) under %s are not images by their extension and were not read: %s",
            len(listing.others), root, _say_few(listing.others),
        )
    absolute = [os.path.abspath(listing.root / rel) for rel in listing.images]
    data = {"image": [{"bytes": None, "path": p} for p in absolute]}
    features = {"image": datasets.Image()}
    if listing.metadata:
        columns, column_features = _metadata_columns(listing)
        clash = sorted(set(columns) & {"image"})
        if clash:
            raise ValueError(f"metadata files {listing.metadata} have a column {clash[0]!r}, which the images take")
        data.update(columns)
        features.update(column_features)
    else:
        parents = [os.path.basename(os.path.dirname(rel)) for rel in listing.images]
        depths = {rel.count("/") for rel in listing.images}
        # imagefolder's rule: labels from the parent folders when every image lies at the same depth and there
        # are two names or more
        if len(set(parents)) > 1 and len(depths) == 1:
            names = sorted(set(parents))
            data["label"] = [names.index(p) for p in parents]
            features["label"] = datasets.ClassLabel(names=names)
    table = pa.Table.from_pydict(data, schema=datasets.Features(features).arrow_schema)
    info = datasets.DatasetInfo(features=datasets.Features(features))
    return datasets.Dataset(table, info=info, split=datasets.Split(split), fingerprint=folder_fingerprint(listing))


def folder_manifest(dataset, root: str | os.PathLike, image_column: str = "image") -> list[str]:
    """The path of every row's image file relative to ``root`` (rows of ``load_image_folder``), read from the
    image cells without touching the image bytes."""
    paths = []
    for table in dataset.select_columns([image_column]).with_format("arrow").iter(batch_size=10_000):
        paths += table.column(image_column).combine_chunks().field("path").to_pylist()
    root = os.path.abspath(root)
    return [Path(os.path.relpath(p, root)).as_posix() for p in paths]


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists())


def load_source(source: str, split: str | None = None, exclude: tuple[str, ...] = (), subset: str | None = None):
    """A ``Dataset`` or ``DatasetDict`` from a ``save_to_disk`` directory, a local folder of images (every image
    file one row of split ``train``; see the module docstring) or a Hub dataset id. Every split, unless ``split``
    picks one; a split that does not exist is an error. A Hub dataset with several subsets (configs) needs
    ``subset``: ``load_dataset`` would otherwise take its default one and leave the others unanonymized."""
    import datasets

    path = Path(source)
    if subset is not None and path.exists():
        raise ValueError(f"Got {subset!r} for `subset`; only a Hub dataset has subsets, not a local path")
    if is_saved_dataset(path):
        loaded = datasets.load_from_disk(str(path))
        if split is None:
            return loaded
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"Got {split!r} for `split`; {source!r} has splits {sorted(loaded)}")
            return loaded[split]
        # a single Dataset saved without a split name is taken as the split asked for (evaluate names one split
        # for an original DatasetDict and its anonymized split)
        if loaded.split is not None and str(loaded.split) != split:
            raise ValueError(f"Got {split!r} for `split`; {source!r} holds a single split, {loaded.split}")
        return loaded
    if path.is_dir():
        if split is not None and split != FOLDER_SPLIT:
            raise ValueError(f"Got {split!r} for `split`; a folder of images is one split, {FOLDER_SPLIT!r} (splits are never inferred from file names)")
        ds = load_image_folder(path, exclude)
        return ds if split is not None else datasets.DatasetDict({FOLDER_SPLIT: ds})
    if path.exists():
        raise ValueError(f"{source!r} is a file; give a folder of images, a save_to_disk directory or a Hub dataset id")
    if subset is None:
        subsets = datasets.get_dataset_config_names(source)
        if len(subsets) > 1:
            raise ValueError(f"{source!r} has {len(subsets)} subsets {subsets}; pick one with `subset` (--subset), each is anonymized on its own")
    return datasets.load_dataset(source, subset, split=split)


def find_image_column(dataset, requested: str | None) -> str:
    """The requested column, or the only ``Image`` column of the dataset."""
    from datasets import Image

    features = dataset.features
    if requested is not None:
        if requested not in features:
            raise ValueError(f"Got {requested!r} for `image_column`; the dataset has columns {sorted(features)}")
        return requested
    images = [name for name, feat in features.items() if isinstance(feat, Image)]
    if len(images) != 1:
        raise ValueError(f"Cannot tell the image column (Image columns: {images}); pass `image_column`")
    return images[0]
