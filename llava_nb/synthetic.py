"""A deterministic synthetic visual-QA data set: coloured shapes in the quadrants of an image.

Each image holds 1-3 objects, each in its own quadrant, with distinct shapes and distinct colours, so every
question has one right answer that can only be read off the image:

    colour    What color is the shape at the top left?   red
    shape     What shape is at the top left?             circle
    count     How many shapes are there?                 two
    position  Where is the red shape?                    top left
    exists    Is there a blue shape?                     no

Stage 1 gets captions ("A red circle at the top left and a blue square at the bottom right."). Stage 2 gets single-
and multi-turn conversations; half of the questions carry LLaVA-1.5's short-answer prompt ("Answer the question
using a single word or phrase.") with a one-word answer, the others a sentence. The held-out test split asks
short-answer questions and records each question's type.

Files are LLaVA's own format: PNG images in nested folders plus JSON lists of
``{"id", "image", "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": ...}]}``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

COLOURS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 235), "yellow": (235, 215, 40),
    "purple": (155, 60, 205), "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "cross")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
COUNT_WORDS = ("zero", "one", "two", "three", "four")
QUESTION_TYPES = ("colour", "shape", "count", "position", "exists")
SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
BACKGROUND = (30, 30, 30)

#: image sizes (height, width): square for v1/v1.5; several aspect ratios for v1.6's anyres
SIZES = {"square": [(84, 84)], "anyres": [(84, 84), (84, 168), (168, 84), (168, 168), (84, 252), (252, 84)]}

CAPTION_PROMPTS = ["Describe the image briefly.", "Give a short caption.", "What is in the picture?"]


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    position: str


def random_scene(rng: random.Random) -> list[Obj]:
    """1-3 objects in distinct quadrants, with distinct shapes and distinct colours."""
    n = rng.randint(1, 3)
    positions = rng.sample(POSITIONS, n)
    shapes = rng.sample(SHAPES, n)
    colours = rng.sample(sorted(COLOURS), n)
    return sorted((Obj(s, c, p) for s, c, p in zip(shapes, colours, positions)), key=lambda o: POSITIONS.index(o.position))


def draw_scene(scene: list[Obj], size: tuple[int, int], rng: random.Random):
    """Render a scene as an RGB image of ``size`` = (height, width); shapes jitter a little inside their quadrant."""
    from PIL import Image, ImageDraw

    h, w = size
    img = Image.new("RGB", (w, h), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for obj in scene:
        row, col = divmod(POSITIONS.index(obj.position), 2)
        qh, qw = h / 2, w / 2
        r = 0.32 * min(qh, qw) * rng.uniform(0.85, 1.1)
        cy = (row + 0.5) * qh + rng.uniform(-0.08, 0.08) * qh
        cx = (col + 0.5) * qw + rng.uniform(-0.08, 0.08) * qw
        fill = COLOURS[obj.colour]
        box = [cx - r, cy - r, cx + r, cy + r]
        if obj.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif obj.shape == "square":
            draw.rectangle([cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r], fill=fill)
        elif obj.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx - r, cy + 0.8 * r), (cx + r, cy + 0.8 * r)], fill=fill)
        else:  # cross
            t = 0.33 * r
            draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fill)
            draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fill)
    return img


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def caption(scene: list[Obj]) -> str:
    parts = [f"{_a(o.colour)} {o.shape} at the {o.position}" for o in scene]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text[0].upper() + text[1:] + "."


def question(scene: list[Obj], qtype: str, rng: random.Random) -> tuple[str, str, str]:
    """(question, short answer, sentence answer) of one type about a scene."""
    obj = rng.choice(scene)
    if qtype == "colour":
        return (f"What color is the shape at the {obj.position}?", obj.colour,
                f"The shape at the {obj.position} is {obj.colour}.")
    if qtype == "shape":
        return f"What shape is at the {obj.position}?", obj.shape, f"There is {_a(obj.shape)} at the {obj.position}."
    if qtype == "count":
        n = COUNT_WORDS[len(scene)]
        return "How many shapes are there?", n, f"There {'is' if len(scene) == 1 else 'are'} {n} shape{'s' * (len(scene) > 1)}."
    if qtype == "position":
        return f"Where is the {obj.colour} shape?", obj.position, f"The {obj.colour} shape is at the {obj.position}."
    if qtype == "exists":
        if rng.random() < 0.5:
            return f"Is there {_a(obj.colour)} shape?", "yes", f"Yes, there is {_a(obj.colour)} shape."
        absent = rng.choice(sorted(set(COLOURS) - {o.colour for o in scene}))
        return f"Is there {_a(absent)} shape?", "no", f"No, there is no {absent} shape."
    raise ValueError(f"unknown question type {qtype!r}; choose one of {', '.join(QUESTION_TYPES)}")


def _image_turn(text: str, rng: random.Random, image_first: bool | None = None) -> str:
    """Put ``<image>`` before or after the first human turn's text, as real LLaVA files do."""
    first = rng.random() < 0.8 if image_first is None else image_first
    return f"<image>\n{text}" if first else f"{text}\n<image>"


def generate(out_dir: Path | str, n_images: int = 2000, n_test: int = 300, seed: int = 0, sizes: str = "square") -> dict:
    """Write images and the three JSON files (``captions.json``, ``instruct.json``, ``test.json``) to ``out_dir``.

    Train and test images come from disjoint random streams of the same ``seed``. Returns the file paths.
    Deterministic: the same arguments give byte-identical files.
    """
    if sizes not in SIZES:
        raise ValueError(f"unknown sizes {sizes!r}; choose one of {', '.join(SIZES)}")
    out = Path(out_dir)
    captions, instruct, test = [], [], []
    for split, count in (("train", n_images), ("test", n_test)):
        rng = random.Random(f"{seed}-{split}")
        for i in range(count):
            scene = random_scene(rng)
            size = rng.choice(SIZES[sizes])
            rel = f"{split}/{i // 1000:03d}/{split}_{i:06d}.png"
            path = out / "images" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            draw_scene(scene, size, rng).save(path, optimize=False)
            sid = f"{split}-{i:06d}"
            if split == "test":
                qtype = QUESTION_TYPES[i % len(QUESTION_TYPES)]
                q, short, _ = question(scene, qtype, rng)
                test.append({"id": sid, "image": rel, "question_type": qtype, "conversations": [
                    {"from": "human", "value": _image_turn(f"{q}\n{SHORT_ANSWER_PROMPT}", rng, image_first=True)},
                    {"from": "gpt", "value": short}]})
                continue
            captions.append({"id": f"cap-{sid}", "image": rel, "conversations": [
                {"from": "human", "value": _image_turn(rng.choice(CAPTION_PROMPTS), rng)},
                {"from": "gpt", "value": caption(scene)}]})
            turns = []
            for t in range(rng.choice((1, 1, 2, 3))):
                q, short, sentence = question(scene, rng.choice(QUESTION_TYPES), rng)
                if rng.random() < 0.5:
                    q, a = f"{q}\n{SHORT_ANSWER_PROMPT}", short
                else:
                    a = sentence
                turns += [{"from": "human", "value": _image_turn(q, rng) if t == 0 else q}, {"from": "gpt", "value": a}]
            instruct.append({"id": f"qa-{sid}", "image": rel, "conversations": turns})
    files = {}
    for name, records in (("captions", captions), ("instruct", instruct), ("test", test)):
        files[name] = out / f"{name}.json"
        files[name].write_text(json.dumps(records, indent=1) + "\n")
    files["image_folder"] = out / "images"
    return files


def text_corpus(n: int = 4000, seed: int = 0) -> list[str]:
    """Sentences for pretraining the tiny language model: captions, questions and answers, no images."""
    rng = random.Random(f"{seed}-text")
    lines = []
    for _ in range(n):
        scene = random_scene(rng)
        lines.append(caption(scene))
        q, short, sentence = question(scene, rng.choice(QUESTION_TYPES), rng)
        lines.append(f"{q} {sentence}")
    return lines
