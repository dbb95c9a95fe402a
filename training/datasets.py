"""Readers for the shared benchmark sets and for trace files.

`load_labelled(path_or_dir, split="train")` returns a list of (text, label):

- a `.jsonl` file: the trace format;
- banking77 (a folder with train.csv/test.csv, or one CSV `text,category`);
- clinc150 (a folder with data_full.json, or the file): splits train, val,
  test, oos_train, oos_val, oos_test (label "oos"), and "train+oos" style
  joins with "+";
- rte (a folder with train.tsv/dev.tsv, or one TSV): text is sentence1 +
  RTE_SEPARATOR + sentence2.

SNIPS, read as tool calls: `load_snips(folder, split)` gives `ToolExample`s
and `snips_tool_schemas(folder)` the OpenAI tool definitions.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.traces import load_traces

if TYPE_CHECKING:
    from training.tool_args import ToolExample

RTE_SEPARATOR = " [SEP] "
Pair = tuple[str, str]


def _banking_csv(path: Path) -> list[Pair]:
    with path.open(encoding="utf-8", newline="") as fh:
        return [(row["text"], row["category"]) for row in csv.DictReader(fh)]


def _clinc(path: Path, split: str) -> list[Pair]:
    data = json.loads(path.read_text(encoding="utf-8"))
    out: list[Pair] = []
    for part in split.split("+"):
        if part not in data:
            raise ValueError(f"clinc150 has no split {part!r} (have {sorted(data)})")
        out.extend((str(text), str(label)) for text, label in data[part])
    return out


def _rte_tsv(path: Path) -> list[Pair]:
    out: list[Pair] = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        col = {name: i for i, name in enumerate(header)}
        if "label" not in col:
            raise ValueError(f"{path} has no label column (unlabelled split?)")
        for row in reader:
            if len(row) < len(header):
                continue
            text = row[col["sentence1"]] + RTE_SEPARATOR + row[col["sentence2"]]
            out.append((text, row[col["label"]]))
    return out


def load_labelled(path_or_dir: str | Path, split: str = "train") -> list[Pair]:
    path = Path(path_or_dir)
    if path.is_dir():
        if (path / "data_full.json").is_file():
            return _clinc(path / "data_full.json", split)
        name = {"val": "dev", "validation": "dev"}.get(split, split)
        for candidate, reader in ((f"{name}.csv", _banking_csv), (f"{name}.tsv", _rte_tsv)):
            if (path / candidate).is_file():
                return reader(path / candidate)
        if (path / f"{name}.jsonl").is_file():
            return [(t.input, t.label) for t in load_traces(path / f"{name}.jsonl")]
        raise FileNotFoundError(f"no split {split!r} in {path}")
    if path.suffix == ".jsonl":
        return [(t.input, t.label) for t in load_traces(path)]
    if path.suffix == ".json":
        return _clinc(path, split)
    if path.suffix == ".csv":
        return _banking_csv(path)
    if path.suffix == ".tsv":
        return _rte_tsv(path)
    raise ValueError(f"unknown labelled-data format: {path}")


SNIPS_INTENTS = (
    "AddToPlaylist",
    "BookRestaurant",
    "GetWeather",
    "PlayMusic",
    "RateBook",
    "SearchCreativeWork",
    "SearchScreeningEvent",
)


def _snips_call(parts: list[dict[str, str]]) -> tuple[str, dict[str, Any]]:
    """Utterance and arguments of one SNIPS row: a slot that repeats gives a list of its
    spans in order. Values are stripped of surrounding spaces, as a caller would send
    them (a handful of annotated spans end in a space)."""
    text = "".join(p["text"] for p in parts)
    args: dict[str, Any] = {}
    for part in parts:
        if "entity" not in part or not part["text"].strip():
            continue
        slot, value = part["entity"], part["text"].strip()
        if slot not in args:
            args[slot] = value
        elif isinstance(args[slot], list):
            args[slot].append(value)
        else:
            args[slot] = [args[slot], value]
    return text, args


def load_snips(folder: str | Path, split: str = "train") -> list[ToolExample]:
    """SNIPS read as tool calls: intent -> tool, slots -> arguments (split train or validate)."""
    from training.tool_args import ToolExample  # sklearn and onnxruntime: only when needed

    path = Path(folder)
    out: list[ToolExample] = []
    for intent in SNIPS_INTENTS:
        file = path / f"{split}_{intent}.json"
        if not file.is_file():
            raise FileNotFoundError(f"no SNIPS split {split!r} for {intent} in {path}")
        for row in json.loads(file.read_text(encoding="utf-8"))[intent]:
            text, args = _snips_call(row["data"])
            out.append(ToolExample(text, intent, args))
    return out


def _string_or_list() -> dict[str, Any]:
    return {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}


def snips_tool_schemas(folder: str | Path) -> list[dict[str, Any]]:
    """One OpenAI tool definition per intent, with an optional parameter (a string or a
    list of strings) per slot seen for that intent in the training split."""
    slots: dict[str, dict[str, None]] = {intent: {} for intent in SNIPS_INTENTS}
    for ex in load_snips(folder, "train"):
        slots[ex.tool].update(dict.fromkeys(ex.arguments))
    return [
        {
            "type": "function",
            "function": {
                "name": intent,
                "description": f"SNIPS intent {intent}",
                "parameters": {
                    "type": "object",
                    "properties": {slot: _string_or_list() for slot in sorted(slots[intent])},
                    "required": [],
                },
            },
        }
        for intent in SNIPS_INTENTS
    ]
