"""Input conditions (Fig. 7): attacks lower the demo classifier's accuracy, images are 8-bit and
reproducible, corruptions are seeded per image, labels and config errors name what they should."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ganviews.classifiers.checkpoints import load_classifier
from ganviews.core.errors import ConfigError
from ganviews.corruptions.conditions import Condition, check_labels, corrupt_images

DEMO_CLASSIFIER = (
    Path(__file__).resolve().parents[2] / "ganviews/assets/demo/classifier.safetensors"
)


@pytest.fixture(scope="module")
def digits():
    """32 real test digits, rendered as the demo renders them, and their labels."""
    from sklearn.datasets import load_digits

    from storage.adapters.digits import render_digit

    d = load_digits()
    idx = np.arange(0, len(d.images), 56)[:32]
    images = np.stack([render_digit(d.images[i]) for i in idx]).transpose(0, 3, 1, 2).copy()
    return images, d.target[idx].astype(np.int64), [f"d{i}" for i in idx]


@pytest.fixture(scope="module")
def classifier():
    torch.set_num_threads(1)
    return load_classifier(DEMO_CLASSIFIER)


def _accuracy(C, images: np.ndarray, labels: np.ndarray) -> float:
    with torch.no_grad():
        pred = C.predict(torch.from_numpy(images).float() / 127.5 - 1.0).numpy()
    return float((pred == labels).mean())


@pytest.mark.parametrize(
    "condition",
    [
        Condition(kind="fgsm"),
        Condition(kind="pgd", steps=5),
        Condition(kind="pgd", steps=5, targeted=False),
    ],
    ids=lambda c: c.label,
)
def test_attacks_lower_the_demo_classifiers_accuracy(digits, classifier, condition):
    images, labels, ids = digits
    clean = _accuracy(classifier, images, labels)
    out = corrupt_images(condition, images, image_ids=ids, labels=labels, classifier=classifier)
    attacked = _accuracy(classifier, out.images, labels)
    assert clean >= 0.9  # the demo classifier reads real digits
    assert attacked <= 0.25, (clean, attacked)
    assert out.success.mean() >= 0.75
    # 8-bit images within the L∞ budget of 8 grey levels
    assert out.images.dtype == np.uint8
    assert np.abs(out.images.astype(int) - images.astype(int)).max() <= 8
    # the recorded predictions are the classifier's on the stored (rounded) images
    with torch.no_grad():
        again = classifier.predict(torch.from_numpy(out.images).float() / 127.5 - 1.0).numpy()
    np.testing.assert_array_equal(out.adv_pred, again)
    if condition.targeted:  # binary flips; 10 classes: the runner-up of the clean logits
        assert (out.target != out.clean_pred).all()
        np.testing.assert_array_equal(out.success, out.adv_pred == out.target)
    else:
        assert (out.target == -1).all()
        np.testing.assert_array_equal(out.success, out.adv_pred != labels)


def test_attack_images_do_not_depend_on_the_batch(digits, classifier):
    images, labels, ids = digits
    cond = Condition(kind="pgd", steps=3, batch_size=32)
    whole = corrupt_images(cond, images, image_ids=ids, labels=labels, classifier=classifier)
    parts = [
        corrupt_images(
            Condition(kind="pgd", steps=3, batch_size=5),
            images[s],
            image_ids=ids[s.start : s.stop],
            labels=labels[s],
            classifier=classifier,
        ).images
        for s in (slice(0, 7), slice(7, 32))
    ]
    assert np.abs(whole.images.astype(int) - np.concatenate(parts).astype(int)).max() <= 1


def test_noise_is_seeded_per_image(digits):
    images, _, ids = digits
    cond = Condition(kind="noise", sigma=0.1)
    a = corrupt_images(cond, images, image_ids=ids, seed=3).images
    b = corrupt_images(cond, images[5:9], image_ids=ids[5:9], seed=3).images
    np.testing.assert_array_equal(a[5:9], b)  # independent of the batch
    c = corrupt_images(cond, images, image_ids=ids, seed=4).images
    assert (a != c).any()
    diff = a.astype(float) - images.astype(float)
    inside = (images > 40) & (images < 215)  # away from clipping: σ in grey levels ≈ 25.5
    assert 22.0 < diff[inside].std() < 29.0


def test_jpeg_and_blur_change_images_deterministically(digits):
    images, _, ids = digits
    for cond in (Condition(kind="jpeg", quality=20), Condition(kind="blur", sigma=1.0)):
        a = corrupt_images(cond, images, image_ids=ids).images
        np.testing.assert_array_equal(a, corrupt_images(cond, images, image_ids=ids).images)
        assert a.dtype == np.uint8 and a.shape == images.shape
        assert np.abs(a.astype(int) - images.astype(int)).mean() > 2.0
    harsh = corrupt_images(Condition(kind="jpeg", quality=5), images, image_ids=ids).images
    mild = corrupt_images(Condition(kind="jpeg", quality=95), images, image_ids=ids).images
    err = lambda x: np.abs(x.astype(int) - images.astype(int)).mean()  # noqa: E731
    assert err(harsh) > 3 * err(mild)


def test_labels_and_config_errors():
    assert Condition(kind="pgd").label == "pgd-8_255"
    assert Condition(kind="fgsm", targeted=False, epsilon=4 / 255).label == "fgsm-untargeted-4_255"
    assert Condition(kind="pgd", norm="2", epsilon=0.5).label == "pgd-l2-0.5"
    assert Condition(kind="cw").label == "cw-l2"
    assert Condition(kind="jpeg", quality=20).label == "jpeg-20"
    assert Condition(kind="blur", sigma=1.5).label == "blur-1.5"
    assert Condition(kind="noise", name="n1").label == "n1"
    with pytest.raises(ConfigError, match=r"corruptions.kind: 'rain'.*allowed: fgsm, pgd"):
        Condition(kind="rain")
    with pytest.raises(ConfigError, match=r"corruptions.quality: 0"):
        Condition(kind="jpeg", quality=0)
    with pytest.raises(ConfigError, match=r"corruptions.name: 'clean'"):
        Condition(kind="jpeg", name="clean")
    with pytest.raises(ConfigError, match=r"corruptions\[1\]: label 'jpeg-20'"):
        check_labels([Condition(kind="jpeg", quality=20), Condition(kind="jpeg", quality=20)])
    with pytest.raises(ConfigError, match="an attack needs the classifier"):
        corrupt_images(Condition(kind="fgsm"), np.zeros((1, 3, 8, 8), np.uint8), image_ids=["a"])


def test_carlini_wagner_flips_predictions(digits, classifier):
    images, labels, ids = digits
    cond = Condition(kind="cw", steps=5, binary_search_steps=1)
    out = corrupt_images(
        cond, images[:4], image_ids=ids[:4], labels=labels[:4], classifier=classifier
    )
    assert out.success.mean() >= 0.75
    assert _accuracy(classifier, out.images, labels[:4]) <= 0.25
