"""The train-classifier task and CLI: manifest and latent-store inputs, GAN sources, resume, errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ganviews.classifiers.batches import SourceConfig
from ganviews.classifiers.checkpoints import load_classifier
from ganviews.classifiers.training import TrainConfig
from ganviews.cli import main as cli_main
from ganviews.core.config import from_dict
from ganviews.core.errors import ConfigError
from ganviews.inversion.align import AlignConfig
from storage.latents import LatentStore
from storage.manifest import write_manifest
from tasks.train_classifier import run_train_classifier, train_classifier_task

SMALL = {"arch": "smallcnn", "width": 4}
FAST = TrainConfig(epochs=2, lr=3e-3, log_every=0)


def views(**keys) -> SourceConfig:
    return from_dict(SourceConfig, keys, key="views")


@pytest.fixture(scope="module")
def G(stylegan2_fixtures):
    from ganviews.stylegan.generator import load_generator

    return load_generator(stylegan2_fixtures / "nvidia-ada-res32.pkl")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, G):
    """12 real 32² PNGs (label = dominant colour), a manifest, and a store of their 'latents'."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        label = i % 2
        img = rng.integers(0, 80, size=(32, 32, 3), dtype=np.uint8)
        img[..., 2 * label] += 150  # red (0) or blue (1)
        Image.fromarray(img).save(root / f"im{i:02d}.png")
        rows.append(
            {
                "image_id": f"im{i:02d}",
                "path": f"im{i:02d}.png",
                "split": "train" if i < 8 else "val",
                "colour": label,
            }
        )
    frame = pd.DataFrame(rows)
    frame.attrs["label_columns"] = ["colour"]
    write_manifest(frame, root / "manifest.parquet")
    store = LatentStore.create(
        root / "store",
        12,
        G.num_ws,
        G.w_dim,
        4,
        attrs={"generator_sha256": G.sha256},
        manifest=frame,
    )
    with torch.no_grad():
        ws = G.mapping(torch.randn(12, G.z_dim, generator=torch.Generator().manual_seed(0)), None)
    done = [i for i in range(12) if i != 3]
    store.write(done, w=ws[done].numpy())
    store.mark_failed([3], ["no face found"])
    store.ensure_array("images/aligned", (3, 32, 32), np.uint8)
    pixels = np.stack(
        [np.asarray(Image.open(root / f"im{i:02d}.png")).transpose(2, 0, 1) for i in range(12)]
    )
    store.write_array("images/aligned", list(range(12)), pixels)
    bare = LatentStore.create(
        root / "bare-store",
        12,
        G.num_ws,
        G.w_dim,
        4,
        attrs={"generator_sha256": G.sha256},
        manifest=frame,
    )
    bare.write(list(range(12)), w=ws.numpy())  # latents, but no persisted aligned images
    return root


def test_real_images_from_a_manifest(dataset, tmp_path):
    out = tmp_path / "colour.safetensors"
    report = run_train_classifier(
        dataset / "manifest.parquet",
        task="colour",
        config=SMALL,
        out=out,
        align=AlignConfig(mode="none", resolution=32),
        train=FAST,
        seed=1,
    )
    assert (report["n_train"], report["n_val"]) == (8, 4)
    assert len(report["history"]) == 2 and report["history"][-1]["val_acc"] is not None
    C = load_classifier(out)
    assert (C.task, C.num_outputs, C.arch) == (
        "colour",
        1,
        "smallcnn",
    )  # 2 classes → one sigmoid logit
    assert C.sha256 == report["sha256"]
    saved = json.loads((tmp_path / "colour.safetensors.train.json").read_text())
    assert saved["manifest_sha256"] and saved["views"]["source"] == "real"
    assert (tmp_path / "colour.safetensors.ckpt").is_file()


def test_views_from_a_store_and_resume(dataset, tmp_path, G, stylegan2_fixtures):
    out = tmp_path / "views.safetensors"
    gen = stylegan2_fixtures / "nvidia-ada-res32.pkl"
    kwargs = dict(
        task="colour",
        config={**SMALL, "num_outputs": 2},
        out=out,
        source="views",
        generator_path=gen,
        train=FAST,
        views=views(method="stylemix", layers="fine", batch_size=4, p_generated=0.5),
    )
    report = run_train_classifier(dataset / "store", **kwargs)
    assert report["n_train"] == 7  # image 3 failed inversion: left out
    assert report["generator_sha256"] == G.sha256
    hist = report["history"]
    assert sum(h["n_train"] for h in hist) == 14 and 0 < sum(h["n_generated"] for h in hist) < 14

    with pytest.raises(
        ConfigError, match=r"views\.safetensors\.ckpt exists from an earlier run: pass resume"
    ):
        run_train_classifier(dataset / "store", **kwargs)
    again = run_train_classifier(dataset / "store", resume=True, **kwargs)
    assert again["history"] == hist  # finished: nothing retrained
    assert load_classifier(out).num_outputs == 2


def test_recon_through_the_prefect_task(dataset, tmp_path, stylegan2_fixtures):
    report = train_classifier_task.fn(
        str(dataset / "store"),
        task="colour",
        config=SMALL,
        out=tmp_path / "r.safetensors",
        source="recon",
        generator_path=stylegan2_fixtures / "nvidia-ada-res32.pkl",
        train=TrainConfig(epochs=1, log_every=0),
        views=views(p_generated=1.0),
    )
    assert report["history"][0]["n_generated"] == 7


def test_input_errors(dataset, tmp_path, stylegan2_fixtures):
    with pytest.raises(ConfigError, match=r"task: 'smile' is not a label column .*\['colour'\]"):
        run_train_classifier(
            dataset / "manifest.parquet", task="smile", config=SMALL, out=tmp_path / "a.st"
        )
    with pytest.raises(
        ConfigError, match=r"source: 'recon' needs latents; .*manifest\.parquet is a manifest"
    ):
        run_train_classifier(
            dataset / "manifest.parquet",
            task="colour",
            config=SMALL,
            out=tmp_path / "b.st",
            source="recon",
        )
    with pytest.raises(
        ConfigError, match=r"rosinality-res32\.pt .* is not the generator the store's latents"
    ):
        run_train_classifier(
            dataset / "store",
            task="colour",
            config=SMALL,
            out=tmp_path / "c.st",
            source="recon",
            generator_path=stylegan2_fixtures / "rosinality-res32.pt",
        )
    with pytest.raises(
        ConfigError, match=r"bare-store has no 'images/aligned' array and no align config"
    ):
        run_train_classifier(
            dataset / "bare-store", task="colour", config=SMALL, out=tmp_path / "e.st"
        )
    with pytest.raises(ConfigError, match=r"views: layers: 'top'; allowed"):
        run_train_classifier(
            dataset / "store",
            task="colour",
            config=SMALL,
            out=tmp_path / "f.st",
            source="views",
            generator_path=stylegan2_fixtures / "nvidia-ada-res32.pkl",
            views=views(method="stylemix", layers="top"),
        )
    with pytest.raises(ConfigError, match=r"train: scheduler='plateau' .* need a validation split"):
        run_train_classifier(
            dataset / "manifest.parquet",
            task="colour",
            config=SMALL,
            out=tmp_path / "g.st",
            val_split=None,
            train=TrainConfig(scheduler="plateau"),
            align=AlignConfig(resolution=32),
        )
    with pytest.raises(ConfigError, match=r"views\.setting: method 'isotropic' needs σ"):
        run_train_classifier(
            dataset / "store",
            task="colour",
            config=SMALL,
            out=tmp_path / "d.st",
            source="views",
            generator_path=stylegan2_fixtures / "nvidia-ada-res32.pkl",
        )


def test_cli(dataset, tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    code = cli_main(
        [
            "train-classifier",
            "--store",
            str(dataset / "store"),
            "--task",
            "colour",
            "--arch",
            "smallcnn",
            "--width",
            "4",
            "--out",
            str(out),
            "--epochs",
            "1",
            "--preprocessing",
            "identity",
            "--real-source",
            "photo",
            "--photo-size",
            "24",
            "--image-root",
            str(dataset),
        ]
    )
    assert code == 0 and out.is_file()
    saved = json.loads((tmp_path / "cli.safetensors.train.json").read_text())
    assert (saved["views"]["real_source"], saved["views"]["photo_size"]) == ("photo", 24)
    assert "colour" in capsys.readouterr().out
    code = cli_main(
        [
            "train-classifier",
            "--store",
            str(dataset / "store"),
            "--task",
            "colour",
            "--arch",
            "smallcnn",
            "--out",
            str(out),
            "--epochs",
            "1",
        ]
    )
    assert code == 2
    assert "exists from an earlier run" in capsys.readouterr().err


def test_checkpoint_chosen_on_reconstructions_of_val(dataset, tmp_path, G, stylegan2_fixtures):
    """scripts/train_classifier/*_latent.py: the val loop classifies G(w*) of the val latents."""
    from ganviews.classifiers.batches import GanBatches
    from ganviews.classifiers.training import evaluate

    out = tmp_path / "rv.safetensors"
    report = run_train_classifier(
        dataset / "store", task="colour", config={**SMALL, "num_outputs": 2}, out=out,
        generator_path=stylegan2_fixtures / "nvidia-ada-res32.pkl", val_source="recon",
        train=TrainConfig(epochs=2, lr=3e-3, log_every=0, select="last"),
    )  # fmt: skip
    assert report["n_val"] == 4  # val images 8–11, all inverted
    store = LatentStore.open(dataset / "store", mode="r")
    ws = store.read(np.arange(8, 12), ["w"])["w"]
    val = GanBatches(G, ws, np.arange(8, 12) % 2, source="recon", shuffle=False, flip=False)
    _, acc = evaluate(load_classifier(out), val)
    assert report["history"][-1]["val_acc"] == pytest.approx(acc)
    with pytest.raises(
        ConfigError, match=r"val_source: 'recon' needs latents; .* pass a latent store"
    ):
        run_train_classifier(
            dataset / "manifest.parquet", task="colour", config=SMALL, out=tmp_path / "m.safetensors",
            val_source="recon",
        )  # fmt: skip


def test_eq8_real_side_reads_the_raw_photos(dataset, tmp_path, stylegan2_fixtures):
    """views.real_source: photo (data_cars.py imtrain / imval, multiclass_classifier_latent.py):
    the real images are the manifest's photos read at full size by the render stage's photo
    loader, not the store's aligned frames; the val split is their imval windows."""
    from ganviews.classifiers.augment import photo_center_windows
    from ganviews.core.errors import GanviewsError

    photo = views(
        real_source="photo", photo_size=24, resized_crop=[0.8, 1.0], crop_region=[0.75, 1.0]
    )
    kwargs = dict(
        task="colour", config=SMALL, source="recon", views=photo, image_root=dataset,
        generator_path=stylegan2_fixtures / "nvidia-ada-res32.pkl",
        train=TrainConfig(epochs=1, lr=3e-3, log_every=0),
    )  # fmt: skip
    out = tmp_path / "photo.safetensors"
    report = run_train_classifier(dataset / "store", out=out, **kwargs)
    assert report["views"]["real_source"] == "photo" and report["views"]["photo_size"] == 24
    assert (report["n_train"], report["n_val"]) == (7, 4)  # im03 failed to invert
    photos = [
        torch.from_numpy(np.array(Image.open(dataset / f"im{i:02d}.png"))).permute(2, 0, 1)
        for i in range(8, 12)
    ]
    x = photo_center_windows(photos, 24).float() / 127.5 - 1  # [4, 3, 24, 24], the val windows
    with torch.no_grad():
        logits = load_classifier(out)(x, geometry=False)
    acc = float(((logits[:, 0] > 0).long().numpy() == np.arange(8, 12) % 2).mean())
    assert report["history"][-1]["val_acc"] == pytest.approx(acc)
    # from a manifest (real images only): the photos held at full size, their imtrain crops
    real = run_train_classifier(
        dataset / "manifest.parquet", out=tmp_path / "m.safetensors",
        **{**kwargs, "source": "real", "generator_path": None},
    )  # fmt: skip
    assert (real["n_train"], real["n_val"], real["views"]["real_source"]) == (8, 4, "photo")
    with pytest.raises(GanviewsError, match=r"image im00 of .*its photo cannot be read again"):
        run_train_classifier(
            dataset / "store", out=tmp_path / "x.safetensors", **{**kwargs, "image_root": tmp_path}
        )


def _body(module: torch.nn.Module, head: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.named_parameters() if not k.startswith(head)}


def test_fine_tuning_a_timm_architecture_by_name(dataset, tmp_path):
    """Eq. 8 fine-tuning of timm.<name> from local weights with another class count: the head
    (found by shape) starts fresh; backbone_lr_scale 0 keeps every other parameter as loaded."""
    import timm

    torch.manual_seed(0)
    start = timm.create_model("test_resnet", pretrained=False, num_classes=5)
    torch.save(start.state_dict(), tmp_path / "start.pth")
    out = tmp_path / "tuned.safetensors"
    report = run_train_classifier(
        dataset / "manifest.parquet", task="colour", out=out,
        config={"arch": "timm.test_resnet", "preprocessing": "identity"},
        init_from=tmp_path / "start.pth", align=AlignConfig(mode="none", resolution=32),
        train=TrainConfig(epochs=1, lr=1e-2, backbone_lr_scale=0.0, log_every=0),
    )  # fmt: skip
    C = load_classifier(out)  # our format: the arch recorded, built by name again
    assert (C.arch, C.num_outputs, C.task) == ("timm.test_resnet", 1, "colour")
    assert report["init_from"] == str(tmp_path / "start.pth")
    tuned, body = _body(C.backbone, "fc."), _body(start, "fc.")
    assert tuned.keys() == body.keys() and len(body) > 10
    for k, v in body.items():
        torch.testing.assert_close(tuned[k], v, rtol=0, atol=0)
    assert C.backbone.fc.weight.shape == (1, start.fc.weight.shape[1])


def test_fine_tuning_a_torchscript_classifier(dataset, tmp_path):
    """A TorchScript classifier is fine-tuned from its file and saved as TorchScript with its
    config inside (it loads without a sidecar); only its head moves at backbone_lr_scale 0."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(4, 1),
    )  # fmt: skip
    torch.jit.save(torch.jit.script(module), str(tmp_path / "mine.pt"))
    config = {"arch": "torchscript", "num_outputs": 1, "preprocessing": "identity"}
    kwargs = dict(task="colour", config=config, align=AlignConfig(mode="none", resolution=32),
                  train=TrainConfig(epochs=2, lr=1e-2, backbone_lr_scale=0.0, log_every=0))  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"torchscript is fine-tuned from its file: pass it as init_from"
    ):
        run_train_classifier(dataset / "manifest.parquet", out=tmp_path / "a.pt", **kwargs)
    with pytest.raises(ConfigError, match=r"saved as a TorchScript archive .*: name it \.pt"):
        run_train_classifier(dataset / "manifest.parquet", out=tmp_path / "a.safetensors",
                             init_from=tmp_path / "mine.pt", **kwargs)  # fmt: skip
    out = tmp_path / "tuned.pt"
    run_train_classifier(
        dataset / "manifest.parquet", out=out, init_from=tmp_path / "mine.pt", **kwargs
    )
    C = load_classifier(out)  # no sidecar: the config is inside the archive
    assert (C.arch, C.num_outputs, C.task) == ("torchscript", 1, "colour")
    params = dict(C.backbone.named_parameters())
    torch.testing.assert_close(params["0.weight"], module[0].weight, rtol=0, atol=0)
    assert not torch.equal(params["4.weight"], module[4].weight)  # the head was trained
