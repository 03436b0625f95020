"""Mean positions: `prompt_mean` (over the prompt's tokens) and `image_mean` (over image patches).

The reference is always the `all`-positions capture of the same samples, averaged by hand over the
right token positions of each unpadded sequence.
"""

import dataclasses

import pytest
import torch
from vlm_samples import shape_samples

from headpursuit.capture import (
    MEAN_ROW_POSITION,
    POSITIONS,
    CaptureSample,
    capture_heads,
    image_token_id,
    prepare_vlm_batch,
)
from headpursuit.models.inputs import teacher_forced_ids

PROMPTS = [
    "The Eiffel Tower is in",
    "Water boils at one hundred degrees and",
    "Hi",
    "In which country is the Colosseum? It is in Italy, a country in southern Europe",
]
ANSWERS = [" Paris, France.", " yes", " Hello there, how are you", None]


def _reference_means(all_rows, spans):
    """Per sample, the mean of its `all` rows over the positions in `spans[i]`."""
    out = []
    for i, span in enumerate(spans):
        mine = all_rows.sample_index == i
        z, pos = all_rows.z[mine], all_rows.position[mine]
        keep = torch.isin(pos, torch.tensor(span))
        assert int(keep.sum()) == len(span)
        out.append(z[keep].double().mean(0).float())
    return torch.stack(out)


def _check_prompt_mean(lm, samples, side, batch_size, tol):
    mean = capture_heads(lm, samples, positions="prompt_mean", batch_size=batch_size, padding_side=side, progress=False)
    rows = capture_heads(lm, samples, positions="all", batch_size=1, progress=False)
    spans = [list(range(teacher_forced_ids(lm, s.prompt, s.answer).prompt_len)) for s in samples]
    assert mean.n_rows == len(samples)
    assert mean.sample_index.tolist() == list(range(len(samples)))
    assert mean.position.tolist() == [MEAN_ROW_POSITION] * len(samples)
    assert mean.target_token.tolist() == [-1] * len(samples)
    torch.testing.assert_close(mean.z, _reference_means(rows, spans), rtol=tol, atol=tol)
    return mean


def test_mean_positions_are_known():
    assert "prompt_mean" in POSITIONS and "image_mean" in POSITIONS


@pytest.mark.parametrize("side", ["left", "right"])
def test_prompt_mean_equals_mean_of_all_rows_tiny(tiny_llama, side):
    samples = [CaptureSample(p, answer=a) for p, a in zip(PROMPTS, ANSWERS)]
    _check_prompt_mean(tiny_llama, samples, side, batch_size=4, tol=1e-5)


def test_prompt_mean_excludes_the_answer(tiny_llama):
    lm = tiny_llama
    with_answer = capture_heads(lm, [CaptureSample(PROMPTS[0], " Paris")], positions="prompt_mean", progress=False)
    without = capture_heads(lm, [PROMPTS[0]], positions="prompt_mean", progress=False)
    # Causal attention: the prompt's z do not see the answer, so the mean is the same.
    torch.testing.assert_close(with_answer.z, without.z, rtol=1e-5, atol=1e-5)
    all_rows = capture_heads(lm, [CaptureSample(PROMPTS[0], " Paris")], positions="all", progress=False)
    assert not torch.allclose(all_rows.z.mean(0), with_answer.z[0], atol=1e-5)


def test_prompt_mean_is_cached_under_its_own_key(tiny_llama, tmp_path):
    first = capture_heads(tiny_llama, PROMPTS, positions="prompt_mean", cache_dir=tmp_path, progress=False)
    again = capture_heads(tiny_llama, PROMPTS, positions="prompt_mean", cache_dir=tmp_path, progress=False)
    last = capture_heads(tiny_llama, PROMPTS, positions="last_prompt", cache_dir=tmp_path, progress=False)
    assert not first.meta["from_cache"] and again.meta["from_cache"] and not last.meta["from_cache"]
    torch.testing.assert_close(first.z, again.z)
    assert len(list(tmp_path.glob("acts/*.safetensors"))) == 2


def test_image_mean_needs_images(tiny_llama):
    with pytest.raises(ValueError, match="image_mean.*needs samples with images"):
        capture_heads(tiny_llama, PROMPTS[:1], positions="image_mean", progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("side", ["left", "right"])
def test_prompt_mean_equals_mean_of_all_rows_smollm2(smollm2, side):
    lm = smollm2
    questions = ["Hi", "What is the capital of a large country in Europe?", "Name a country in Asia."]
    answers = [" Hello!", " Paris is the capital of France", None]
    samples = [CaptureSample(lm.format_prompt(q), answer=a) for q, a in zip(questions, answers)]
    _check_prompt_mean(lm, samples, side, batch_size=3, tol=1e-4)


# ------------------------------------------------------------------------------------------
# VLMs: image_mean over the image-patch tokens, prompt_mean over the processed prompt
# ------------------------------------------------------------------------------------------


def _vlm_samples(lm):
    """The VLM tests' three image samples (`vlm_samples.shape_samples`), the last one without an answer."""
    samples = shape_samples(lm)
    samples[2] = dataclasses.replace(samples[2], answer=None)
    return samples


@pytest.fixture(scope="module")
def tiny_llava():
    from headpursuit.models.tiny_vlm import tiny_family_model_with_processor

    return tiny_family_model_with_processor("llava")


def _vlm_spans(lm, samples):
    """Per sample: (prompt positions, image-token positions) in processed-token space."""
    _, prepared, _ = prepare_vlm_batch(lm, samples, "last_prompt", None, "left")
    image_id = image_token_id(lm)
    return [(list(range(p.prompt_len)), [t for t in range(p.prompt_len) if p.ids[t] == image_id]) for p in prepared]


@pytest.mark.parametrize("model_type", ["llava", "qwen2_vl", "gemma3"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_image_and_prompt_mean_tiny_vlm(model_type, side):
    from headpursuit.models.tiny_vlm import tiny_family_model_with_processor

    lm = tiny_family_model_with_processor(model_type)
    samples = _vlm_samples(lm)
    spans = _vlm_spans(lm, samples)
    assert all(len(img) > 0 and len(img) < len(prompt) for prompt, img in spans)
    rows = capture_heads(lm, samples, positions="all", batch_size=1, progress=False)
    for mode, which in (("image_mean", 1), ("prompt_mean", 0)):
        mean = capture_heads(lm, samples, positions=mode, batch_size=3, padding_side=side, progress=False)
        assert mean.position.tolist() == [MEAN_ROW_POSITION] * 3 and mean.target_token.tolist() == [-1] * 3
        ref = _reference_means(rows, [s[which] for s in spans])
        torch.testing.assert_close(mean.z, ref, rtol=1e-4, atol=1e-4)


def test_image_mean_errors(tiny_llava, tiny_llama):
    lm = tiny_llava
    with pytest.raises(ValueError, match="image_mean.*needs samples with images"):
        capture_heads(lm, [CaptureSample(lm.format_prompt("Hi"), "Hello")], positions="image_mean", progress=False)
    with pytest.raises(ValueError, match="image_token_id"):
        image_token_id(tiny_llama)


@pytest.mark.slow
def test_image_mean_tiny_vlm_smollm2(tiny_vlm):
    lm = tiny_vlm
    samples = _vlm_samples(lm)
    spans = _vlm_spans(lm, samples)
    assert [len(img) for _, img in spans] == [16, 16, 16]
    rows = capture_heads(lm, samples, positions="all", batch_size=1, layers=[0, 29], progress=False)
    for side in ("left", "right"):
        mean = capture_heads(
            lm, samples, positions="image_mean", layers=[0, 29], batch_size=3, padding_side=side, progress=False
        )
        torch.testing.assert_close(mean.z, _reference_means(rows, [img for _, img in spans]), rtol=1e-4, atol=1e-4)
