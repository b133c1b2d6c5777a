"""The `datasets` features of an export: what the card's `dataset_info` declares, and the
typed `Video()`/`Audio()` columns of `--media-features`.

The card declares every config's features so that `load_dataset` and the Hub's viewer type
the columns from the card instead of guessing (options: a list of strings, scores: floats,
traces: strings, media: paths or typed features). Typed media columns are stored the way
`datasets` stores them, a struct of `bytes` (null: the file is not embedded) and `path`,
with the features in the Parquet schema's `huggingface` metadata, so a data file read
without the card is typed the same.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pyarrow as pa

MEDIA_COLUMNS = ("video", "audio")


def decoder_missing() -> str | None:
    """Why typed media columns cannot be decoded here, or None.

    `datasets` decodes `Video()` and `Audio()` with torchcodec; writing the columns does not
    need it, so its absence is a note for the user, not an error.
    """
    if importlib.util.find_spec("torchcodec") is None:
        return ("typed video/audio columns were written; decoding them needs torchcodec "
                "(pip install 'datasets[video,audio]'), reading their paths does not")
    return None


def features_for(schema: pa.Schema, media_features: bool) -> Any:
    """`datasets.Features` of a data file's schema, media typed when asked."""
    from datasets import Audio, Features, Video

    plain = pa.schema([f for f in schema if not (media_features and f.name in MEDIA_COLUMNS)])
    inferred = Features.from_arrow_schema(plain)
    features = {}
    for field in schema:
        if media_features and field.name == "video":
            features["video"] = Video()
        elif media_features and field.name == "audio":
            features["audio"] = Audio()
        else:
            features[field.name] = inferred[field.name]
    return Features(features)


def typed_media(table: pa.Table) -> pa.Table:
    """Media path columns as `datasets`' {bytes, path} structs (bytes null: not embedded),
    with the features recorded in the schema metadata."""
    for name in MEDIA_COLUMNS:
        if name not in table.column_names:
            continue
        paths = table.column(name).combine_chunks()
        struct = pa.StructArray.from_arrays([pa.nulls(len(paths), pa.binary()), paths],
                                            names=["bytes", "path"], mask=paths.is_null())
        table = table.set_column(table.schema.get_field_index(name), name, struct)
    features = features_for(table.schema, media_features=True)
    return table.cast(features.arrow_schema)


def info_entry(config: str, features: Any, splits: dict[str, tuple[int, int]],
               download_size: int) -> dict[str, Any]:
    """One config's `dataset_info` for the card: features, and per split its rows and
    Arrow bytes (what `datasets` records), plus the Parquet bytes as download size."""
    return {"config_name": config, "features": features._to_yaml_list(),
            "splits": [{"name": s, "num_bytes": nbytes, "num_examples": rows}
                       for s, (rows, nbytes) in splits.items()],
            "download_size": download_size,
            "dataset_size": sum(nbytes for _, nbytes in splits.values())}
