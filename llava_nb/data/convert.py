"""Converting the two common chat formats into LLaVA's records (``records.py``), in pure Python.

Accepted, record by record (a file may mix them; JSON list or JSON Lines):

* **ShareGPT** (LLaVA's own files are a subset): ``{"conversations": [{"from": "human"|"user"|"gpt"|"assistant"|
  "system", "value": str}], "image": str}`` (or ``"images": [str]``); ``<image>`` in the text marks the image.
* **messages** (TRL, OpenAI): ``{"messages": [{"role": "user"|"assistant"|"system", "content": str | [part]}],
  "images": [...]}``, a part being ``{"type": "text", "text": str}``, ``{"type": "image"}`` (the next entry of
  ``images``) or ``{"type": "image", "image"|"path"|"url": str}`` (inline; OpenAI's ``{"type": "image_url",
  "image_url": {"url": str}}`` too).

Rules (each break is a ``DataError`` naming the record's index and the fix):

* ``<image>`` goes where the image part is: before the turn's text (``<image>\\n...``) or after it (``...\\n<image>``).
  It must be in the first user turn: LLaVA's files put it there, and ``preprocess_multimodal``
  (haotian-liu/LLaVA@c121f04 llava/train/train.py:316-321) moves it to the start of its turn anyway. A record with
  an image and no placeholder gets ``<image>\\n`` at the start of its first user turn, where LLaVA would move it.
* One image per record, LLaVA-1.5's format: a record with more is an error, never silently cut down.
* Roles alternate user/assistant, starting with the user and ending with the assistant (``preprocess_v1`` asserts it:
  llava/train/train.py:432).
* System messages: LLaVA's templates carry a fixed system prompt (``conv_vicuna_v1.system``, llava/conversation.py:
  242-244) and its training code has no role for a ``system`` turn (``roles`` in llava/train/train.py:420 knows only
  human and gpt). ``system="error"`` (the default) refuses them; ``system="fold"`` prepends leading system text to the
  first user turn (after a leading ``<image>``), so the model sees it after LLaVA's own system prompt.
* Images are paths relative to the image folder (LLaVA opens ``image_folder/image``: llava/train/train.py:701); URLs
  and non-path values are errors. Text-only records get no ``image`` key (LLaVA tests ``'image' in sample``:
  llava/train/train.py:697).
* Other top-level keys (``id``, ``question_type``, ...) are kept; a record without ``id`` gets its index.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..models.templates import IMAGE_TOKEN
from .records import DataError

FORMATS = ("ShareGPT ({'conversations': [{'from', 'value'}], 'image'}, LLaVA's own) or messages "
           "({'messages': [{'role', 'content'}], 'images'})")
ROLES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt", "system": "system"}
SYSTEM_POLICIES = ("error", "fold")
_OWN_KEYS = {"conversations", "messages", "image", "images", "system", "id"}


def _where(record, index: int) -> str:
    rid = record.get("id") if isinstance(record, dict) else None
    return f"record #{index}" + (f" (id {rid!r})" if rid is not None else "")


def detect_format(record, index: int) -> str:
    """``"sharegpt"`` or ``"messages"``; anything else is a one-line error naming the keys found."""
    if isinstance(record, dict) and "conversations" in record:
        return "sharegpt"
    if isinstance(record, dict) and "messages" in record:
        return "messages"
    found = sorted(record) if isinstance(record, dict) else type(record).__name__
    raise DataError(_where(record, index), f"is in no known format (keys found: {found})", f"give {FORMATS}")


def _image_source(value, where: str, k: int) -> str:
    """A relative path from an image entry: a string, or a dict with ``path`` (a 🤗 datasets export)."""
    if isinstance(value, dict) and isinstance(value.get("path"), str):
        value = value["path"]
    if not isinstance(value, str) or not value.strip():
        raise DataError(where, f"image #{k} is {value!r}, not a file path",
                        "give each image as a path relative to the image folder")
    if value.startswith(("http://", "https://", "data:")):
        raise DataError(where, f"image #{k} is a URL ({value[:60]})",
                        "download it and give its path relative to the image folder")
    return value


def _record_images(record: dict, where: str) -> list:
    if "image" in record and "images" in record:
        raise DataError(where, "has both 'image' and 'images'", "keep one of them")
    images = record.get("images", record.get("image"))
    if images in (None, "", []):
        return []
    return list(images) if isinstance(images, (list, tuple)) else [images]


def _sharegpt_turns(record: dict, where: str) -> list[tuple[str, str]]:
    convs = record["conversations"]
    if not isinstance(convs, list) or not convs:
        raise DataError(where, "has an empty or non-list 'conversations'", "give a list of {'from', 'value'} turns")
    turns = []
    if isinstance(record.get("system"), str) and record["system"].strip():  # LLaMA-Factory's top-level system
        turns.append(("system", record["system"]))
    for t, turn in enumerate(convs):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise DataError(where, f"turn {t} is not a {{'from', 'value'}} object", "fix the turn's keys")
        if not isinstance(turn["value"], str):
            raise DataError(where, f"turn {t}'s value is a {type(turn['value']).__name__}", "values must be strings")
        turns.append((_role(turn["from"], where, t), turn["value"]))
    return turns


def _role(name, where: str, t: int) -> str:
    role = ROLES.get(str(name).lower())
    if role is None:
        raise DataError(where, f"turn {t} has the unknown role {name!r}", f"use one of {sorted(ROLES)}")
    return role


def _part_text(part, where: str, t: int, inline: list) -> str:
    """A content part as text: its text, or ``<image>``; each image it holds adds its source to ``inline`` (None:
    the record's next entry of ``images``, as for a literal ``<image>`` in a text)."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text" and isinstance(part.get("text"), str):
        inline.extend([None] * part["text"].count(IMAGE_TOKEN))
        return part["text"]
    if kind in ("image", "image_url"):
        source = next((part[k] for k in ("image", "path", "url", "image_url") if part.get(k) is not None), None)
        if isinstance(source, dict) and "url" in source:  # OpenAI's {"image_url": {"url": ...}}
            source = source["url"]
        inline.append(source)  # None: the record's next entry of "images"
        return IMAGE_TOKEN
    raise DataError(where, f"turn {t} has the content part {part!r}",
                    "use {'type': 'text', 'text': ...} or {'type': 'image'} parts")


def _messages_turns(record: dict, where: str, images: list) -> tuple[list[tuple[str, str]], list]:
    msgs = record["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise DataError(where, "has an empty or non-list 'messages'", "give a list of {'role', 'content'} messages")
    turns, sources, pending = [], [], list(images)
    for t, msg in enumerate(msgs):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise DataError(where, f"message {t} is not a {{'role', 'content'}} object", "fix the message's keys")
        content, inline = msg["content"], []
        if isinstance(content, str):
            text = content
            inline = [None] * content.count(IMAGE_TOKEN)
        elif isinstance(content, list):
            text = "\n".join(_part_text(p, where, t, inline) for p in content)
        else:
            raise DataError(where, f"message {t}'s content is a {type(content).__name__}",
                            "give a string or a list of parts")
        for source in inline:
            if source is None and not pending:
                raise DataError(where, f"message {t} has more image parts than the record has 'images'",
                                "list one entry in 'images' per {'type': 'image'} part")
            sources.append(pending.pop(0) if source is None else source)
        turns.append((_role(msg["role"], where, t), text))
    if pending and sources:
        raise DataError(where, f"has {len(pending)} 'images' with no image part",
                        "add one {'type': 'image'} part per image, or drop the extra images")
    return turns, sources + pending


def _fold_system(turns: list[tuple[str, str]], where: str, system: str) -> list[tuple[str, str]]:
    """Leading system turns folded into the first user turn (``system="fold"``) or refused."""
    lead = []
    while turns and turns[0][0] == "system":
        lead.append(turns.pop(0)[1])
    if any(role == "system" for role, _ in turns):
        raise DataError(where, "has a system message after the conversation started",
                        "move it to the start (and pass system='fold') or drop it")
    if lead and system == "error":
        raise DataError(where, "has a system message; LLaVA's templates use a fixed system prompt",
                        "drop it, or fold it into the first user turn (system='fold', --system fold)")
    if lead and turns:
        prefix = "\n".join(s.strip() for s in lead)
        role, text = turns[0]
        opener = IMAGE_TOKEN + "\n" if text.startswith(IMAGE_TOKEN + "\n") else ""
        turns[0] = (role, opener + prefix + "\n" + text[len(opener):])
    return turns


def _check_turns(turns: list[tuple[str, str]], where: str) -> None:
    if not turns:
        raise DataError(where, "has no user/assistant turns", "give at least one question and its answer")
    for t, (role, text) in enumerate(turns):
        expected = "human" if t % 2 == 0 else "gpt"
        if role != expected:
            who = {"human": "user", "gpt": "assistant"}[role]
            raise DataError(where, f"turn {t} is from the {who}, but roles must alternate user/assistant starting "
                            "with the user", "merge consecutive turns of one role, or reorder them")
        if role == "gpt" and not text.strip():
            raise DataError(where, f"turn {t} is an empty answer", "give every assistant turn a non-empty answer")
    if turns[-1][0] != "gpt":
        raise DataError(where, "ends with a user turn that has no answer", "add the answer or drop the last turn")


def _place_image(turns: list[tuple[str, str]], sources: list, where: str) -> str | None:
    """The record's one image (or None), with its ``<image>`` in the first user turn."""
    placeholders = [t for t, (_, text) in enumerate(turns) for _ in range(text.count(IMAGE_TOKEN))]
    n = max(len(sources), len(placeholders))
    if n > 1:
        raise DataError(where, f"has {n} images; LLaVA-1.5 records hold one",
                        "split it into one record per image, or drop the extra images")
    if placeholders and not sources:
        raise DataError(where, "has an <image> placeholder but no image", "add the image's path or remove <image>")
    if not sources:
        return None
    if not placeholders:  # where LLaVA's preprocess_multimodal would move it
        turns[0] = (turns[0][0], IMAGE_TOKEN + "\n" + turns[0][1])
    elif placeholders[0] != 0:
        raise DataError(where, f"has its image in turn {placeholders[0]}, not the first user turn",
                        "move the image to the first user message (LLaVA-1.5 sees it before the first question)")
    return _image_source(sources[0], where, 0)


def convert_record(record, index: int, system: str = "error") -> dict:
    """One record (ShareGPT or messages) as a LLaVA record: ``{"id", "image"?, "conversations", ...extra keys}``."""
    if system not in SYSTEM_POLICIES:
        raise DataError("convert", f"unknown system policy {system!r}", f"use one of {SYSTEM_POLICIES}")
    fmt, where = detect_format(record, index), _where(record, index)
    images = _record_images(record, where)
    if fmt == "sharegpt":
        turns, sources = _sharegpt_turns(record, where), images
    else:
        turns, sources = _messages_turns(record, where, images)
    turns = _fold_system(turns, where, system)
    _check_turns(turns, where)
    image = _place_image(turns, sources, where)
    out = {"id": record.get("id", str(index))}
    if image is not None:
        out["image"] = image
    out["conversations"] = [{"from": role, "value": text} for role, text in turns]
    out.update({k: v for k, v in record.items() if k not in _OWN_KEYS})
    return out


def convert_records(records: list, system: str = "error") -> list[dict]:
    """Every record converted (see the module docstring); the first bad one raises ``DataError``."""
    return [convert_record(r, i, system) for i, r in enumerate(records)]


def to_messages(record: dict) -> dict:
    """A LLaVA record as a TRL/OpenAI ``messages`` record (the inverse of ``convert_record``): ``<image>`` at the
    start or the end of a turn becomes an image part before or after its text."""
    messages = []
    for turn in record["conversations"]:
        role, text = "user" if turn["from"] in ("human", "user") else "assistant", turn["value"]
        if text == IMAGE_TOKEN:
            content = [{"type": "image"}]
        elif text.startswith(IMAGE_TOKEN + "\n"):
            content = [{"type": "image"}, {"type": "text", "text": text[len(IMAGE_TOKEN) + 1:]}]
        elif text.endswith("\n" + IMAGE_TOKEN):
            content = [{"type": "text", "text": text[:-len(IMAGE_TOKEN) - 1]}, {"type": "image"}]
        else:
            content = [{"type": "text", "text": text}]
        messages.append({"role": role, "content": content})
    out = {k: v for k, v in record.items() if k not in ("image", "conversations")}
    out["messages"] = messages
    out["images"] = [record["image"]] if record.get("image") else []
    return out


def read_records(path) -> list:
    """The records of a JSON list or JSON Lines file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "does not exist", "give the path of a JSON or JSON Lines file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(str(path), f"is not valid JSON ({err})", "fix the file") from None
    if isinstance(records, dict):
        raise DataError(str(path), f"holds a JSON object with keys {sorted(records)[:8]}, not a list of records",
                        "pass the list of records (e.g. the value of its data key) as the file's top level")
    return records


def missing_images(records: list[dict], image_folder) -> list[str]:
    """The converted records' image paths that are no file under ``image_folder``."""
    folder = Path(image_folder)
    return [r["image"] for r in records if "image" in r and not (folder / r["image"]).is_file()]


def convert_file(src, dst, image_folder=None, force: bool = False, system: str = "error") -> dict:
    """Convert ``src`` (JSON or JSON Lines) into LLaVA's JSON at ``dst``; with ``image_folder``, every image must
    exist under it. ``dst`` is not overwritten unless ``force``. Returns counts of what was written."""
    dst = Path(dst)
    if dst.exists() and not force:
        raise DataError(str(dst), "already exists", "choose another output path or pass --force to overwrite it")
    if image_folder is not None and not Path(image_folder).is_dir():
        raise DataError(str(image_folder), "is not a folder", "give the folder the records' image paths start from")
    raw = read_records(src)
    formats = [detect_format(r, i) for i, r in enumerate(raw)]
    records = convert_records(raw, system)
    if image_folder is not None:
        missing = missing_images(records, image_folder)
        if missing:
            raise DataError(str(src), f"{len(missing)} image(s) missing under {image_folder}, e.g. {missing[:3]}",
                            "check --image-folder and the records' image paths")
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return {"input": str(src), "output": str(dst), "records": len(records),
            "with_image": sum("image" in r for r in records), "text_only": sum("image" not in r for r in records),
            "sharegpt": formats.count("sharegpt"), "messages": formats.count("messages")}
