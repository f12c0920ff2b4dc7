"""Classifier training: convergence, exact resume, Eq. 8 mixtures of real images and GAN views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ganviews.classifiers.batches import GanBatches, ImageBatches
from ganviews.classifiers.model import build_classifier
from ganviews.classifiers.training import evaluate, train_classifier
from ganviews.core.errors import CheckpointError
from ganviews.core.runtime import item_seed
from ganviews.views.perturb import perturb_from_seeds


def _toy(n: int, classes: int, size: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class k brightens channel k % 3 and, for k ≥ 3, darkens the left half: separable, noisy."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    x = 0.35 * torch.randn(n, 3, size, size, generator=g) - 0.2  # [N, 3, S, S]
    for k in range(classes):
        sel = labels == k
        x[sel, k % 3] += 0.8
        if k >= 3:
            x[sel, :, :, : size // 2] -= 0.8
    return x.clamp(-1, 1), labels


def _small(num_outputs: int, seed: int = 0):
    torch.manual_seed(seed)
    return build_classifier({"arch": "smallcnn", "num_outputs": num_outputs, "width": 8})


@pytest.mark.parametrize(("classes", "num_outputs"), [(2, 1), (2, 2), (4, 4)])
def test_smallcnn_learns_a_separable_problem(classes, num_outputs):
    x, y = _toy(96, classes)
    xv, yv = _toy(48, classes, seed=1)
    C = _small(num_outputs)
    train = ImageBatches(x, y, batch_size=16, seed=0)
    val = ImageBatches(xv, yv, batch_size=48, shuffle=False, flip=False)
    _, acc_before = evaluate(C, val)
    result = train_classifier(C, train, epochs=4, lr=3e-3, seed=0, val_batches=val)
    assert len(result.history) == 4
    assert acc_before < 0.8 <= 0.95 <= result.history[-1].val_acc
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert not C.training and not any(p.requires_grad for p in C.parameters())
    assert (C.predict(xv) == yv).float().mean() >= 0.95


def test_uint8_images_and_readers_give_the_same_batches():
    x, y = _toy(20, 3)
    u8 = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    seen: list[np.ndarray] = []

    def reader(idx: np.ndarray) -> np.ndarray:
        seen.append(idx.copy())
        return u8.numpy()[idx]

    a = list(ImageBatches(u8, y, batch_size=6, seed=5).epoch(3))
    b = list(ImageBatches(reader, y, batch_size=6, seed=5).epoch(3))
    assert len(a) == len(b) == 4
    for ba, bb in zip(a, b, strict=True):
        assert torch.equal(ba.images, bb.images) and torch.equal(ba.labels, bb.labels)
    assert all((np.diff(s) > 0).all() for s in seen)  # readers get sorted indices
    assert a[0].images.dtype == torch.float32 and a[0].images.min() >= -1 and a[0].images.max() <= 1
    c = list(ImageBatches(u8, y, batch_size=6, seed=5).epoch(4))
    assert not torch.equal(
        torch.cat([t.labels for t in a]), torch.cat([t.labels for t in c])
    )  # new order


@pytest.mark.parametrize("scheduler", ["cosine", "constant"])
def test_resume_is_exact(tmp_path, scheduler):
    x, y = _toy(40, 3)
    xv, yv = _toy(20, 3, seed=1)
    kwargs = dict(
        epochs=3,
        lr=2e-3,
        weight_decay=1e-4,
        seed=4,
        scheduler=scheduler,
        select="best",
        val_batches=ImageBatches(xv, yv, batch_size=20, shuffle=False, flip=False),
    )
    straight = _small(3)
    ref = train_classifier(straight, ImageBatches(x, y, batch_size=8, seed=4), **kwargs)

    class Killed(Exception):
        pass

    def kill_after_first(stats):
        if stats.epoch == 0:
            raise Killed

    ckpt = tmp_path / "run.ckpt"
    first = _small(3)  # same init as the straight run
    with pytest.raises(Killed):
        train_classifier(
            first,
            ImageBatches(x, y, batch_size=8, seed=4),
            checkpoint=ckpt,
            on_epoch=kill_after_first,
            **kwargs,
        )
    resumed = _small(3, seed=123)  # different init: the checkpoint must carry the weights
    out = train_classifier(
        resumed, ImageBatches(x, y, batch_size=8, seed=4), checkpoint=ckpt, **kwargs
    )
    assert out.resumed_from == 1
    assert [h.train_loss for h in out.history] == [h.train_loss for h in ref.history]
    assert (out.best_epoch, out.selected_epoch) == (ref.best_epoch, ref.selected_epoch)
    for (k, a), b in zip(
        straight.backbone.state_dict().items(), resumed.backbone.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k

    # a finished run resumes to a no-op; other hyperparameters are refused, naming the key
    again = train_classifier(
        _small(3), ImageBatches(x, y, batch_size=8, seed=4), checkpoint=ckpt, **kwargs
    )
    assert again.resumed_from == 3 and len(again.history) == 3
    with pytest.raises(
        CheckpointError,
        match=r"run\.ckpt: was written by a different run.*train\.lr: checkpoint 0\.002, now 0\.01",
    ):
        train_classifier(
            _small(3),
            ImageBatches(x, y, batch_size=8, seed=4),
            checkpoint=ckpt,
            **{**kwargs, "lr": 1e-2},
        )


def test_constant_schedule_can_be_extended_and_cosine_cannot(tmp_path):
    x, y = _toy(24, 2)
    one = _small(1)
    train_classifier(
        one,
        ImageBatches(x, y, batch_size=8),
        epochs=1,
        scheduler="constant",
        checkpoint=tmp_path / "c.ckpt",
    )
    more = train_classifier(
        _small(1, seed=7),
        ImageBatches(x, y, batch_size=8),
        epochs=2,
        scheduler="constant",
        checkpoint=tmp_path / "c.ckpt",
    )
    assert more.resumed_from == 1 and len(more.history) == 2
    train_classifier(
        _small(1), ImageBatches(x, y, batch_size=8), epochs=1, checkpoint=tmp_path / "k.ckpt"
    )
    with pytest.raises(
        CheckpointError, match=r"cosine schedule was planned for 1 epochs, now epochs=2"
    ):
        train_classifier(
            _small(1), ImageBatches(x, y, batch_size=8), epochs=2, checkpoint=tmp_path / "k.ckpt"
        )


def test_bad_labels_are_named():
    x, y = _toy(8, 2)
    with pytest.raises(ValueError, match=r"labels: value 2 is outside 0…1 .*num_outputs=1"):
        train_classifier(_small(1), ImageBatches(x, y + 1, batch_size=8), epochs=1)
    with pytest.raises(ValueError, match=r"val_batches: required by scheduler='plateau'"):
        train_classifier(_small(1), ImageBatches(x, y, batch_size=8), epochs=1, scheduler="plateau")


# ----------------------------------------------------------------------------- GAN sources


@pytest.fixture(scope="module")
def G(stylegan2_fixtures):
    from ganviews.stylegan.generator import load_generator

    return load_generator(stylegan2_fixtures / "nvidia-ada-res32.pkl")


@pytest.fixture(scope="module")
def latents(G):
    with torch.no_grad():
        z = torch.randn(12, G.z_dim, generator=torch.Generator().manual_seed(0))
        ws = G.mapping(z, None, truncation_psi=0.7)  # [12, 8, 64]
    return ws, torch.arange(12) % 2, [f"img{i:02d}" for i in range(12)]


def _by_id(source: GanBatches, epoch: int) -> dict[str, torch.Tensor]:
    out = {}
    for batch in source.epoch(epoch):
        for img, lab in zip(batch.images, batch.labels, strict=True):
            out.setdefault(len(out), (img, lab))
    return out


def test_recon_source_renders_G_of_w(G, latents):
    ws, labels, ids = latents
    src = GanBatches(
        G, ws, labels, image_ids=ids, source="recon", batch_size=5, shuffle=False, flip=False
    )
    batches = list(src.epoch(0))
    assert [len(b.labels) for b in batches] == [5, 5, 2]
    with torch.no_grad():
        want = G.synthesis(ws, noise_mode="const")  # [12, 3, 32, 32]
    got = torch.cat([b.images for b in batches])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert all(b.generated.all() for b in batches)


def test_views_are_seeded_per_image_and_epoch(G, latents):
    ws, labels, ids = latents
    sigma = 0.5

    def rendered(batch_size: int, epoch: int, setting: float = sigma) -> dict[str, torch.Tensor]:
        src = GanBatches(
            G,
            ws,
            labels,
            image_ids=ids,
            source="views",
            method="isotropic",
            layers="fine",
            setting=setting,
            batch_size=batch_size,
            seed=3,
            shuffle=True,
            flip=False,
        )
        out = {}
        batches, _, _ = src._plan(epoch, 1.0)
        for idx, batch in zip(batches, src.epoch(epoch), strict=True):
            out.update({ids[i]: img for i, img in zip(idx, batch.images, strict=True)})
        return out

    a, b = rendered(5, 0), rendered(4, 0)
    assert a.keys() == b.keys() == set(ids)
    for k in ids:
        torch.testing.assert_close(
            a[k], b[k], atol=1e-5, rtol=1e-5
        )  # batch composition does not matter
    # the view is exactly G(perturb_from_seeds(w*, seed(seed, image id, epoch)))
    i = 7
    seed_i = item_seed(3, "train-view", ids[i], 0)
    with torch.no_grad():
        w_view = perturb_from_seeds(
            G, ws[i : i + 1], [seed_i], method="isotropic", layers="fine", setting=sigma
        )
        torch.testing.assert_close(
            a[ids[i]], G.synthesis(w_view, noise_mode="const")[0], atol=1e-5, rtol=1e-5
        )
        recon = G.synthesis(ws, noise_mode="const")  # [12, 3, 32, 32]
    c = rendered(5, 1)
    assert all(not torch.allclose(a[k], c[k]) for k in ids)  # a fresh view every epoch
    zero = rendered(5, 0, setting=0.0)
    for j, k in enumerate(ids):
        torch.testing.assert_close(
            zero[k], recon[j], atol=1e-5, rtol=1e-5
        )  # σ = 0 is the reconstruction


def test_training_on_a_mixture_of_real_images_and_views(G, latents):
    ws, labels, ids = latents
    real = (torch.rand(12, 3, 24, 24, generator=torch.Generator().manual_seed(1)) * 255).to(
        torch.uint8
    )
    src = GanBatches(
        G,
        ws,
        labels,
        image_ids=ids,
        images=real,
        source="views",
        method="stylemix",
        layers="coarse",
        p_generated=0.5,
        batch_size=6,
        seed=0,
    )
    first = next(iter(src.epoch(0)))
    assert first.images.shape == (6, 3, 24, 24)  # GAN images resized to the real images' size
    C = build_classifier(
        {"arch": "smallcnn", "num_outputs": 1, "width": 4, "preprocessing": {"resize": 16}}
    )
    result = train_classifier(C, src, epochs=2, lr=1e-3, seed=0)
    counts = [h.n_generated for h in result.history]
    _, use_gen0, _ = src._plan(0, 0.5)
    _, use_gen1, _ = src._plan(1, 0.5)
    assert counts == [int(use_gen0.sum()), int(use_gen1.sum())]
    assert all(0 < n < 12 for n in counts)
    assert all(np.isfinite(h.train_loss) for h in result.history)


def test_gan_source_argument_errors(G, latents):
    ws, labels, ids = latents
    with pytest.raises(ValueError, match=r"setting: method 'isotropic' needs σ"):
        GanBatches(G, ws, labels, image_ids=ids, source="views", method="isotropic")
    with pytest.raises(ValueError, match=r"layers: 'top'; allowed: \['coarse', 'fine', 'middle'\]"):
        GanBatches(G, ws, labels, image_ids=ids, source="views", method="stylemix", layers="top")
    with pytest.raises(ValueError, match=r"pca: method 'pca' needs the generator's PCA statistics"):
        GanBatches(G, ws, labels, image_ids=ids, source="views", method="pca", setting=1.0)
    with pytest.raises(ValueError, match=r"ws: 11 rows, expected 12"):
        GanBatches(G, ws[:11], labels, image_ids=ids, source="recon")


def test_early_stop_is_the_authors_rule():
    """*_latent.py: stop when lr ≤ 1e-6 (plateau floor) and epoch ≥ best val epoch + patience."""
    x, y = _toy(32, 2)
    train = ImageBatches(x, y, batch_size=16, seed=0)
    val = ImageBatches(x, y, batch_size=32, shuffle=False, flip=False)
    kw = {"lr": 1e-6, "scheduler": "plateau", "select": "best", "seed": 0, "val_batches": val}
    stopped = train_classifier(_small(1), train, epochs=6, early_stop=1, **kw)
    best = stopped.best_epoch
    assert len(stopped.history) == best + 2 < 6  # one epoch after the best, then stop
    assert len(train_classifier(_small(1), train, epochs=3, **kw).history) == 3  # no rule: all
