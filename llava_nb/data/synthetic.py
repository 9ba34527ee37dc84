"""A deterministic synthetic visual-QA data set: copies of one coloured shape in the quadrants of an image.

Each image holds 1-4 copies of one shape in one colour, each copy in its own quadrant. Every question has one
right answer that can only be read off the image:

    colour    What color are the shapes?                red
    shape     What shape is in the image?               circle
    count     How many shapes are there?                two
    position  Is there a shape at the top left?         yes
    exists    Is there a blue shape?                    no

The scenes are deliberately simple: a model of a million parameters has to learn them on a laptop CPU in a few
minutes, and the point is to see it learn to *use the image* (a blank image leaves it at chance), not to
reach a benchmark. Stage 1 gets captions ("Two red circles at the top left and the bottom right."). Stage 2 gets
single- and multi-turn conversations; half of the questions carry LLaVA-1.5's short-answer prompt ("Answer the
question using a single word or phrase.") with a one-word answer, the others a sentence. The held-out test split
asks short-answer questions and records each question's type.

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
#: stage 2's description requests (LLaVA-Instruct's "detailed description" conversations)
DESCRIBE_PROMPTS = ["Describe the image.", "What do you see in this image?", "Describe the shapes and where they are."]


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    position: str


def random_scene(rng: random.Random) -> list[Obj]:
    """1-4 copies of one shape in one colour, in distinct quadrants (listed in quadrant order)."""
    n = rng.randint(1, 4)
    shape, colour = rng.choice(SHAPES), rng.choice(sorted(COLOURS))
    positions = sorted(rng.sample(POSITIONS, n), key=POSITIONS.index)
    return [Obj(shape, colour, p) for p in positions]


def draw_scene(scene: list[Obj], size: tuple[int, int], rng: random.Random):
    """Render a scene as an RGB image of ``size`` = (height, width); shapes jitter a little inside their quadrant."""
    from PIL import Image, ImageDraw

    h, w = size
    img = Image.new("RGB", (w, h), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for obj in scene:
        row, col = divmod(POSITIONS.index(obj.position), 2)
        qh, qw = h / 2, w / 2
        r = 0.4 * min(qh, qw) * rng.uniform(0.9, 1.05)
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


def _plural(n: int, word: str) -> str:
    return f"{COUNT_WORDS[n]} {word}{'s' * (n > 1)}"


def _places(scene: list[Obj]) -> str:
    places = [f"the {o.position}" for o in scene]
    return places[0] if len(places) == 1 else ", ".join(places[:-1]) + " and " + places[-1]


def caption(scene: list[Obj]) -> str:
    n, obj = len(scene), scene[0]
    text = f"{_plural(n, obj.colour + ' ' + obj.shape)} at {_places(scene)}."
    return text[0].upper() + text[1:]


def question(scene: list[Obj], qtype: str, rng: random.Random) -> tuple[str, str, str]:
    """(question, short answer, sentence answer) of one type about a scene."""
    n, obj = len(scene), scene[0]
    if qtype == "colour":
        return ("What color are the shapes?" if n > 1 else "What color is the shape?", obj.colour,
                f"The shape{'s are' if n > 1 else ' is'} {obj.colour}.")
    if qtype == "shape":
        return "What shape is in the image?", obj.shape, f"The image shows {_plural(n, obj.shape)}."
    if qtype == "count":
        return "How many shapes are there?", COUNT_WORDS[n], f"There {'is' if n == 1 else 'are'} {_plural(n, 'shape')}."
    if qtype == "position":
        where = rng.choice(POSITIONS)
        if any(o.position == where for o in scene):
            return f"Is there a shape at the {where}?", "yes", f"Yes, there is {_a(obj.shape)} at the {where}."
        return f"Is there a shape at the {where}?", "no", f"No, the {where} is empty."
    if qtype == "exists":
        colour = obj.colour if rng.random() < 0.5 else rng.choice(sorted(set(COLOURS) - {obj.colour}))
        if colour == obj.colour:
            return f"Is there {_a(colour)} shape?", "yes", f"Yes, there is {_a(colour)} {obj.shape}."
        return f"Is there {_a(colour)} shape?", "no", f"No, the shapes are {obj.colour}." if n > 1 else f"No, the shape is {obj.colour}."
    raise ValueError(f"unknown question type {qtype!r}; choose one of {', '.join(QUESTION_TYPES)}")


def _image_turn(text: str, rng: random.Random, image_first: bool | None = None) -> str:
    """Put ``<image>`` before or after the first human turn's text, as real LLaVA files do."""
    first = rng.random() < 0.8 if image_first is None else image_first
    return f"<image>\n{text}" if first else f"{text}\n<image>"


def generate(out_dir: Path | str, n_images: int = 2000, n_test: int = 300, seed: int = 0, sizes: str = "square",
             turns: tuple = (1, 1, 2, 3), distinct_types: bool = False, describe: float = 0.0,
             type_weights: dict | None = None) -> dict:
    """Write images and the three JSON files (``captions.json``, ``instruct.json``, ``test.json``) to ``out_dir``.

    ``describe``: the share of training conversations that open with a description turn ("Describe the image."
    -> the caption), as LLaVA-Instruct mixes detailed descriptions with its conversations. ``type_weights``: the
    relative frequency of each question type in training conversations (default: all equal); the test split
    always asks every type equally often.

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
            conv = []
            if describe and rng.random() < describe:
                conv += [{"from": "human", "value": _image_turn(rng.choice(DESCRIBE_PROMPTS), rng)},
                         {"from": "gpt", "value": caption(scene)}]
            n_turns = rng.choice(turns)
            qtypes = rng.sample(QUESTION_TYPES, n_turns) if distinct_types else None
            for t in range(n_turns):
                if qtypes:
                    qtype = qtypes[t]
                elif type_weights:
                    qtype = rng.choices(QUESTION_TYPES, [type_weights.get(k, 1.0) for k in QUESTION_TYPES])[0]
                else:
                    qtype = rng.choice(QUESTION_TYPES)
                q, short, sentence = question(scene, qtype, rng)
                if rng.random() < 0.5:
                    q, a = f"{q}\n{SHORT_ANSWER_PROMPT}", short
                else:
                    a = sentence
                conv += [{"from": "human", "value": _image_turn(q, rng) if not conv else q}, {"from": "gpt", "value": a}]
            instruct.append({"id": f"qa-{sid}", "image": rel, "conversations": conv})
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


def write_sample(out_dir: Path | str | None = None) -> Path:
    """The small sample committed under ``data/sample``: a few square records, and a few anyres ones in
    ``anyres/``, so readers can see the format without generating anything."""
    from ..paths import DATA_DIR

    out = Path(out_dir) if out_dir else DATA_DIR / "sample"
    generate(out, n_images=6, n_test=5, seed=0, sizes="square")
    generate(out / "anyres", n_images=4, n_test=2, seed=0, sizes="anyres")
    return out


def training_corpus(seed: int = 0) -> list[str]:
    """The tiny tokenizer's deterministic corpus: the synthetic data's captions, questions and answers, and the
    templates' fixed text."""
    from ..models.templates import VICUNA_SYSTEM

    fixed = [VICUNA_SYSTEM, "USER: ASSISTANT:", "[INST] [/INST]", SHORT_ANSWER_PROMPT,
             "Describe the image briefly. Give a short caption. What is in the picture?"]
    words = [" ".join(w) for w in (sorted(COLOURS), SHAPES, POSITIONS, COUNT_WORDS)]
    return fixed * 20 + words * 20 + text_corpus(n=3000, seed=seed)
