"""Reading LLaVA-format conversation files, with errors that name the record and the fix.

LLaVA's files (LCS-558K captions, ``llava_v1_5_mix665k``, LLaVA-Instruct-158K, and this book's synthetic data) are
JSON lists of records::

    {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat are the colors of the bus?"},
                       {"from": "gpt", "value": "The bus is white and red."}, ...]}

* ``image`` is relative to an image folder and may sit in nested folders; text-only records (about 40K of the 665K
  mix) have no ``image`` key and no ``<image>``.
* ``<image>`` appears once, in the first human turn, at its start or its end (LCS-558K puts it at the end).
* Turns alternate ``human`` / ``gpt``, starting with ``human``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from pathlib import Path

from ..errors import LlavaNbError
from ..models.tokenizer import IMAGE_TOKEN

ROLES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}


class DataError(LlavaNbError):
    """A malformed data record. The message starts with the record's id and names the problem."""

    def __init__(self, record_id, problem: str, fix: str, kind: str | None = None):
        self.record_id, self.problem, self.kind = record_id, problem, kind or problem
        super().__init__(f"{record_id}: {problem}; {fix}")


def validate_record(record: dict, index: int, image_folder: Path | None, images_outside: bool = False) -> dict:
    """A checked, normalised copy of one record: roles become ``human``/``gpt``, ``image`` an absolute path.
    ``image`` must lie inside ``image_folder`` unless ``images_outside`` allows any path (an absolute one, or one
    that climbs out with ``..``)."""
    if not isinstance(record, dict):
        raise DataError(f"record #{index}", f"is a {type(record).__name__}, not an object", "each record must be a JSON object")
    rid = record.get("id", f"record #{index}")
    convs = record.get("conversations")
    if not isinstance(convs, list) or not convs:
        raise DataError(rid, "has no 'conversations' list", "add a list of {'from', 'value'} turns")
    turns = []
    for i, turn in enumerate(convs):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise DataError(rid, f"turn {i} is not a {{'from', 'value'}} object", "fix the turn's keys")
        role = ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise DataError(rid, f"unknown role {turn['from']!r} in turn {i}",
                            "use 'human' for the user and 'gpt' for the assistant, as LLaVA's files do")
        expected = "human" if i % 2 == 0 else "gpt"
        if role != expected:
            raise DataError(rid, f"turn {i} is from {role!r} but turns must alternate human/gpt starting with human",
                            "reorder or merge the turns")
        value = turn["value"]
        if not isinstance(value, str):
            raise DataError(rid, f"turn {i}'s value is a {type(value).__name__}", "values must be strings")
        if role == "gpt" and not value.strip():
            raise DataError(rid, f"empty answer in turn {i}", "give every gpt turn a non-empty answer, or drop the record")
        turns.append({"from": role, "value": value})
    if turns[-1]["from"] != "gpt":
        raise DataError(rid, "ends with a human turn that has no answer", "add the gpt answer or drop the last turn")
    n_images = sum(t["value"].count(IMAGE_TOKEN) for t in turns)
    has_image_key = record.get("image") not in (None, "")
    if has_image_key and n_images == 0:
        raise DataError(rid, "has an 'image' but no <image> in its text",
                        "put <image> at the start or end of the first human turn")
    if not has_image_key and n_images:
        raise DataError(rid, "has <image> in its text but no 'image' key", "add the image path or remove <image>")
    if n_images > 1:
        raise DataError(rid, f"has {n_images} <image> placeholders", "LLaVA records hold one image: keep one <image>")
    if n_images and IMAGE_TOKEN not in turns[0]["value"]:
        raise DataError(rid, "has <image> outside the first human turn", "move <image> to the first human turn")
    image = None
    if has_image_key:
        if image_folder is None:
            raise DataError(rid, "has an image but no image_folder was given", "pass image_folder=")
        image = Path(os.path.normpath(Path(image_folder) / record["image"]))  # lexical: symlinks inside may point out
        if not images_outside and not image.is_relative_to(os.path.normpath(image_folder)):
            raise DataError(rid, f"has an image path outside image_folder ({record['image']!r})",
                            "give images as paths relative to image_folder, inside it, or allow paths outside it "
                            "(--images-outside-folder, images_outside_folder=True)", kind="image outside folder")
        if not image.is_file():
            raise DataError(rid, f"missing image file {image}", "check image_folder and the record's 'image' path",
                            kind="missing image file")
    out = {"id": rid, "image": str(image) if image else None, "conversations": turns}
    for key, value in record.items():  # keep extra fields (e.g. question_type) untouched
        out.setdefault(key, value)
    return out


def load_conversations(json_path, image_folder=None, skip_bad: bool = False,
                       images_outside: bool = False) -> list[dict]:
    """Read and check a LLaVA-format JSON (or JSON Lines) file.

    Returns the records with roles normalised and ``image`` resolved to a path under ``image_folder`` (None for
    text-only records); ``images_outside=True`` also accepts paths that lead out of it. A bad record raises
    ``DataError``; with ``skip_bad=True`` bad records are skipped and counted in one warning that names the problems.
    """
    path = Path(json_path)
    if not path.is_file():
        raise FileNotFoundError(f"no data file at {path}")
    text = path.read_text()
    try:
        records = json.loads(text) if path.suffix != ".jsonl" else [json.loads(l) for l in text.splitlines() if l.strip()]
    except json.JSONDecodeError as err:
        raise DataError(str(path), f"is not valid JSON ({err})", "fix the file or convert it with json.dump") from None
    if not isinstance(records, list):
        raise DataError(str(path), "holds a JSON object, not a list of records", "wrap the records in a list")
    folder = Path(image_folder) if image_folder is not None else None
    good, problems = [], Counter()
    for i, record in enumerate(records):
        try:
            good.append(validate_record(record, i, folder, images_outside))
        except DataError as err:
            if not skip_bad:
                raise
            problems[err.kind] += 1
    if problems:
        summary = "; ".join(f"{n} x {p}" for p, n in problems.most_common(5))
        warnings.warn(f"skipped {sum(problems.values())} of {len(records)} records in {path.name}: {summary}",
                      stacklevel=2)
    return good
