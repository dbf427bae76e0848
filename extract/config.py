"""What an extraction reads and what it is asked to do; the `extract` command's flags are read off
the fields that carry help. No torch here: `ytune --help` builds its flags from this module in a
fraction of a second."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ytune.cache.format import DEFAULT_SHARD_BYTES, DTYPES, SUFFIXES
from ytune.errors import UserError
from ytune.extract.glue import GLUE_TASKS

WEIGHTS_DTYPES = ("float32", "bfloat16", "float16")
AUTOCAST_MODES = ("bf16", "fp16", "none")
ATTENTION_MODES = ("auto", "eager", "fast")
GLUE_SPLITS = ("train", "validation")  # what a GLUE task's extraction caches unless told
MB = 1 << 20


def megabytes(text: str) -> int:
    """`--shard-mb 0.2` in bytes."""
    return int(float(text) * MB)


def comma_list(text: str) -> list[str]:
    """`--split train,validation`."""
    return [x.strip() for x in text.split(",") if x.strip()]


@dataclass
class DataSource:
    """The rows an extraction reads, as the `extract` command names them: a GLUE task, the user's
    files, or a Hugging Face datasets source."""

    task: str | None = field(
        default=None, metadata={"help": f"a GLUE task ({', '.join(GLUE_TASKS)}), or the name of yours"}
    )
    dataset: str | None = field(
        default=None,
        metadata={"help": "a hub dataset, or a folder of save_to_disk", "metavar": "NAME_OR_FOLDER"},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "the hub dataset's configuration"})
    data_dir: str | None = None  # a local GLUE folder; None: $YTUNE_GLUE_DIR, else the hub
    data: list[str] | None = field(
        default=None,
        metadata={
            "help": "a CSV/TSV/JSON/JSONL/Parquet file of one split (bare PATH: train); repeat per split",
            "action": "append",
            "metavar": "[SPLIT=]PATH",
        },
    )
    text_field: str | None = field(
        default=None, metadata={"help": "column holding the text (with --data or --dataset)"}
    )
    text_pair_field: str | None = field(
        default=None, metadata={"help": "column holding the second text of pairs"}
    )
    label_field: str | None = field(default=None, metadata={"help": "column holding the label"})
    split: list[str] | None = field(
        default=None,
        metadata={
            "help": "splits to extract, comma-separated",
            "default": f"all; for a GLUE task {','.join(GLUE_SPLITS)}",
            "type": comma_list,
        },
    )
    limit: int | None = field(
        default=None,
        metadata={
            "help": "only the first N rows of each split (a quick run; another cache unless it cuts no split)"
        },
    )

    def load(self):
        """The dataset these name, only the splits asked for."""
        from ytune.extract.files import load_files
        from ytune.extract.glue import load_glue
        from ytune.extract.hf import load_hf

        if self.data and self.dataset:
            raise UserError("give --data files or a --dataset, not both.")
        if (self.data or self.dataset) and self.text_field is None:
            flag = "--data" if self.data else "--dataset"
            raise UserError(f"{flag} needs --text-field to name the column that holds the text.")
        columns = (self.text_field, self.text_pair_field, self.label_field, self.task)
        if self.dataset:
            return load_hf(self.dataset, *columns, self.split, self.dataset_config, self.limit)
        if self.data:
            files = {}
            for item in self.data:
                split, _, path = item.rpartition("=")
                files[split or "train"] = path
            dataset = load_files(files, *columns, self.limit)
            if self.split:
                dataset.splits = {s: dataset.splits[s] for s in self.split if s in dataset.splits}
            return dataset
        if self.task is None:
            raise UserError(
                f"name a dataset: --task one of {', '.join(GLUE_TASKS)}, --data FILE or --dataset FOLDER with --text-field."
            )
        return load_glue(self.task, self.split or GLUE_SPLITS, self.data_dir, self.limit)


@dataclass
class ExtractConfig:
    """What an extraction is asked to do: the encoder, the hidden states it keeps and how they are
    stored."""

    model: str | None = field(
        default=None,
        metadata={
            "help": "hub id or local folder of a transformers encoder",
            "default": "the bundled all-MiniLM-L6-v2",
        },
    )
    weights_dtype: str | None = field(
        default=None,
        metadata={
            "choices": WEIGHTS_DTYPES,
            "help": "load the encoder's weights in this dtype; bfloat16 halves an XXL model's memory",
            "default": "as saved",
        },
    )
    # hidden-state indices, transformers' numbering, negatives from the end; None: at most four from
    # the middle third of the depth (encoder.default_layers), which the heads' defaults were measured on
    layers: Sequence[int] | None = field(
        default=None,
        metadata={
            "help": "hidden states to cache, transformers' numbering (0 = embeddings, -1 = last)",
            "default": "at most four spread over the middle third of the depth, where the heads' defaults "
            "were measured",
        },
    )
    max_length: int = field(default=128, metadata={"help": "tokens per row, longer rows truncated"})
    dtype: str = field(
        default="float16",
        metadata={
            "choices": DTYPES,
            "help": "storage dtype; int8 takes half the bytes (a float16 scale per 64 values)",
        },
    )
    backend: str = field(default="zarr", metadata={"choices": tuple(SUFFIXES), "help": "shard format"})
    # root of caches (or an fsspec URL); None: $YTUNE_CACHE or ~/.cache/ytune (the commands' --cache-dir)
    cache_dir: str | Path | None = None
    batch_tokens: int | None = field(
        default=None,
        metadata={"help": "padded tokens per encoder call", "default": "what fills a GPU, or a CPU's caches"},
    )
    shard_bytes: int = field(
        default=DEFAULT_SHARD_BYTES,
        metadata={
            "help": "target shard size in MB",
            "flag": "--shard-mb",
            "metavar": "MB",
            "type": megabytes,
            "default": f"{DEFAULT_SHARD_BYTES / MB:g}",
        },
    )
    device: str | None = None  # None: cuda if available (the commands' --device)
    autocast: str = field(
        default="bf16", metadata={"choices": AUTOCAST_MODES, "help": "on CUDA; CPU always runs float32"}
    )
    attention: str = field(
        default="auto",
        metadata={
            "choices": ATTENTION_MODES,
            "help": "DeBERTa-v2/v3 attention: fast = disentangled-flash (Triton on CUDA, its torch backend on "
            "a CPU), eager = transformers', auto = fast where it runs (on CUDA: where Triton does)",
        },
    )
    progress: bool | None = None  # None: a bar when stderr is a terminal
