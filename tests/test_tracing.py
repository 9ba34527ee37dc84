import pytest
import torch

import llava_nb
from llava_nb.models.tracing import meta_inputs


@pytest.mark.parametrize("name", ["tiny-llava-v1", "tiny-llava-1.5", "tiny-llava-v1.6"])
def test_trace_reproduces_model_logits(name):
    model = llava_nb.build_model(name).eval()
    batch = llava_nb.build_processor(name)(images=llava_nb.sample_image("astronaut"),
                                           text="USER: <image>\nHi ASSISTANT:", return_tensors="pt")
    with torch.no_grad():
        _, logits = llava_nb.trace_forward(model, batch["input_ids"], batch["pixel_values"], batch.get("image_sizes"))
        assert torch.equal(logits, model(**batch).logits)


@pytest.mark.parametrize("name,h,w", [("llava-1.5-7b", 336, 336), ("llava-v1.6-mistral-7b", 480, 640)])
def test_meta_trace_shapes(name, h, w):
    model = llava_nb.build_model(name, device="meta")
    ids, pixels, sizes = meta_inputs(model, h, w, prompt_tokens=10)
    steps, logits = llava_nb.trace_forward(model, ids, pixels, sizes)
    n = llava_nb.count_image_tokens(name, h, w)
    shapes = {s.name: s.shape for s in steps}
    assert shapes["layer -2, CLS dropped"][1:] == (576, 1024)
    assert shapes["ViT hidden states"][0] == 25  # embeddings + 24 layers
    assert shapes["LLM"] == (1, 10 + n, 4096)
    assert logits.shape == (1, 10 + n, 32064)
    if "anyres packing" in shapes:
        assert shapes["anyres packing"] == (n, 4096)


def test_trace_casts_inputs_to_the_model_dtype():
    model = llava_nb.build_model("tiny-llava-1.5", dtype=torch.bfloat16).eval()
    batch = llava_nb.build_processor("tiny-llava-1.5")(images=llava_nb.sample_image("coffee"), text="<image>\nHi",
                                                        return_tensors="pt")
    assert batch["pixel_values"].dtype == torch.float32
    with torch.no_grad():
        _, logits = llava_nb.trace_forward(model, batch["input_ids"], batch["pixel_values"])
        reference = model(**{**batch, "pixel_values": batch["pixel_values"].to(torch.bfloat16)}).logits
    assert logits.dtype == torch.bfloat16 and torch.equal(logits, reference)
