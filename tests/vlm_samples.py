"""Samples with images shared by the VLM tests (tests/test_vlm.py, tests/test_positions.py)."""

from __future__ import annotations

from headpursuit.capture import CaptureSample
from headpursuit.models.inputs import image_prompt
from headpursuit.synthetic import draw_pattern, draw_shape


def shape_samples(lm) -> list[CaptureSample]:
    """Three samples with drawn images and answers: a short prompt, a long one, the short one again
    (prompts of two lengths, so a batch of them is padded)."""
    short = image_prompt(lm, "What shape?")
    long = image_prompt(lm, "What shape is shown in this image? Answer with one word.")
    return [
        CaptureSample(short, "A red circle.", draw_shape("circle", "red")),
        CaptureSample(long, "It is a blue square on white", draw_shape("square", "blue")),
        CaptureSample(short, "Stripes", draw_pattern("vertical stripes")),
    ]
