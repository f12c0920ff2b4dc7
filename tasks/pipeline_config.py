"""One YAML for the whole pipeline (Chai et al., CVPR 2021, Sec. 3–4 end to end).

``PipelineConfig`` is a frozen dataclass tree: data and paths, model checkpoints, and the
configs of every stage (alignment, encoder training, inversion, PCA statistics, views,
classifier training, ensembles/report), plus how the work is orchestrated (shards, devices,
embedded or distributed mode, retries). :func:`load_pipeline_config` maps a YAML (or a
mapping) onto it with :func:`ganviews.core.config.from_dict`, so every mistake is one line that
names the dotted key; relative paths are resolved against the YAML's folder.

The stage sections reuse the library's own configs (``AlignConfig``, ``InversionConfig``,
``ViewConfig``, ``ReportConfig`` …); ``configs/example.yaml`` documents every key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ganviews.classifiers.batches import SourceConfig
from ganviews.classifiers.training import TrainConfig
from ganviews.core.config import from_dict, load_yaml, to_dict
from ganviews.core.errors import ConfigError
from ganviews.corruptions.conditions import Condition, check_labels
from ganviews.ensemble.config import SPLITS as EVALUATION_SPLITS
from ganviews.genrep.experiment import MultiviewConfig
from ganviews.inversion.align import AlignConfig
from ganviews.inversion.invert import InversionConfig
from ganviews.report.tables import ReportConfig
from ganviews.views.config import PRESETS, ViewConfig, with_preset

STAGES = ("train_encoder", "invert", "train_classifier", "pca", "render", "corrupt", "evaluate")
MODES = ("embedded", "distributed")
MAX_SHARD_SIZE = 1 << 16  # images per shard: 65,536 w+ of a 1024 px generator is a 2.4 GB chunk


@dataclass(frozen=True)
class DataConfig:
    """Which images the pipeline works on."""

    manifest: Path  # dataset manifest (Parquet): image_id, path, split, label columns
    image_root: Path | None = None  # base of relative manifest paths (None: the manifest's folder)
    splits: tuple[str, ...] = (
        "val",
        "test",
    )  # manifest splits inverted and evaluated (empty: every row)


@dataclass(frozen=True)
class PathsConfig:
    """Where the outputs go (all may live on shared storage for distributed runs)."""

    store: Path  # latent store (Zarr): w*, losses, status, aligned/recon images
    logits: Path  # root of the logits Parquet dataset
    report: Path  # folder of the ensemble report (results.csv, plots, report.md)
    state: Path | None = None  # per-shard progress and stage markers (None: <store>.state)


@dataclass(frozen=True)
class ClassifierRef:
    """One classifier whose views are evaluated."""

    path: Path  # checkpoint (project format, or a weights file with a sidecar config)
    task: str = ""  # manifest label column it predicts ("": the classifier's own config names it)
    # ClassifierConfig keys for a file that does not record them (arch: torchscript or
    # torchvision.<name>, num_outputs, preprocessing …); None: the file's own, else its sidecar
    config: dict[str, Any] | None = None


@dataclass(frozen=True)
class ModelsConfig:
    """Checkpoints (local files; nothing is downloaded)."""

    generator: Path  # StyleGAN2 checkpoint (.pkl / .pt / .safetensors)
    encoder: Path | None = (
        None  # RGBM encoder (None: inversion starts at G's mean w); train_encoder writes it
    )
    classifiers: dict[str, ClassifierRef] = field(default_factory=dict)  # name → checkpoint + task
    lpips_weights_dir: Path | None = (
        None  # folder holding the LPIPS backbone weights (alexnet/vgg .pth)
    )
    class_column: str | None = None  # label column fed to a class-conditional generator (c_dim > 0)


@dataclass(frozen=True)
class EncoderTrainingConfig:
    """The train_encoder stage (paper Eq. 2–3); writes ``models.encoder``."""

    enabled: bool = False  # run the stage (models.encoder must name the output file)
    steps: int = 20000  # Adam steps in total (a resumed run continues to this count)
    batch_size: int = 8  # (w, G(w)) pairs per step
    lr: float = 1e-4  # Adam learning rate
    lambda_latent: float = 1.0  # weight of the latent ℓ2 term
    perceptual: Literal["lpips-alex", "lpips-vgg", "lpips-random", "none"] = (
        "lpips-alex"  # image term besides L1
    )
    depth: Literal[18, 34, 50] = 34  # ResNet depth
    resolution: int | None = None  # encoder input side (None: min(generator resolution, 256))
    width: int = 64  # ResNet stem width
    norm: Literal["batch", "group"] = "batch"  # normalisation layers
    truncation_psi: float = 1.0  # ψ of the sampled w
    style_mix_prob: float = 0.9  # share of style-mixed training samples (authors' recipe: 0)
    # the authors' recipe (latent-composition train_sgan_encoder.py): pixel_loss mse, perceptual
    # lpips-vgg at perceptual_resolution 256, beta1 0.5, masks blobs, style_mix_prob 0
    pixel_loss: Literal["l1", "mse"] = "l1"  # image term besides the perceptual one
    perceptual_resolution: int | None = None  # area-downsample to at most this side before LPIPS
    beta1: float = 0.9  # Adam β1 (β2 = 0.999)
    masks: Literal["rects", "blobs"] = "rects"  # rectangles / border crops, or the authors' blobs
    # face identity loss (the authors' FFHQ encoder: 1.0 with pixel2style2pixel's IR-SE-50
    # ArcFace, model_ir_se50.pth, which is not shipped: identity_weights names your copy)
    lambda_id: float = 0.0
    identity_weights: Path | None = None  # local IR-SE-50 state dict (needed when lambda_id > 0)
    checkpoint_every: int = 1000  # steps between resumable checkpoints (<encoder>.ckpt)
    log_every: int = 100  # steps per logged loss average


@dataclass(frozen=True)
class PCAConfig:
    """The pca stage: PCA of G's w space, cached as <store>/pca_stats.npz (paper Sec. 3.3)."""

    samples: int = 100_000  # w samples
    seed: int = 0  # sampling seed
    batch_size: int = 4096  # mapping-network batch


@dataclass(frozen=True)
class ClassifierTrainingConfig:
    """The train_classifier stage (paper Eq. 8); writes ``models.classifiers[name].path``."""

    enabled: bool = False  # run the stage
    name: str = ""  # which models.classifiers entry is trained (its path is the output)
    data: Literal["store", "manifest"] = (
        "store"  # images from the latent store or straight from the manifest
    )
    source: Literal["real", "recon", "views"] = (
        "real"  # real images, G(w*) mixed in, or perturbed views G(w̃)
    )
    classifier: dict[str, Any] = field(
        default_factory=lambda: {"arch": "resnet18"}
    )  # ClassifierConfig keys (num_outputs defaults to the label count)
    train: TrainConfig = field(
        default_factory=TrainConfig
    )  # optimisation (epochs, lr, scheduler …)
    views: SourceConfig = field(
        default_factory=SourceConfig
    )  # the Eq. 8 mixture (its source is `source`)
    init_from: Path | None = (
        None  # backbone weights to start from (e.g. ImageNet), None: random init
    )
    train_split: str = "train"  # manifest split trained on
    val_split: str | None = "val"  # split for validation accuracy (None: none)
    # validation images: the real ones, or G(w*) of the val latents (the authors' *_latent.py
    # scripts choose the checkpoint by accuracy on G(w*) of val; needs a store)
    val_source: Literal["real", "recon"] = "real"


@dataclass(frozen=True)
class CorruptionsConfig:
    """The corrupt stage (paper Sec. 4.1, Fig. 7; docs/corruptions.md): corrupted copies of the
    inverted images, then inverted, rendered and classified again, one store per condition."""

    conditions: tuple[Condition, ...] = ()  # attacks / corruptions (empty: the stage does nothing)
    classifier: str = ""  # attacks: the models.classifiers entry attacked ("": the only one)
    splits: tuple[str, ...] = ("val", "test")  # splits corrupted (α is chosen on the val split)
    max_images: int | None = None  # per split, only its first N inverted images (None: all)
    gan_method: str = (
        "stylemix_fine"  # the table's GAN ensemble: a views.gan group <method>_<layers>
    )
    image_method: str = "crop"  # the combined ensemble's image views (one of views.image_methods)
    stores: Path | None = None  # folder of the conditions' stores (None: <paths.store>-conditions)


@dataclass(frozen=True)
class OrchestrationConfig:
    """How stages are split into shards and where the shards run (docs/orchestration.md)."""

    shard_size: int = (
        64  # images per shard = the store's chunk along the image axis (fixed at creation)
    )
    mode: Literal["embedded", "distributed"] = (
        "embedded"  # in-process, or runs of a deployment on a work pool
    )
    devices: str | tuple[str, ...] = (
        "auto"  # embedded: one concurrent shard per entry ("cuda:0", "cpu" …); "auto" = every visible GPU, else the CPU
    )
    task_runner: Literal["thread", "process"] = (
        "thread"  # embedded: threads (one process) or a process pool (isolation)
    )
    cpu_threads: int = 0  # torch threads per shard on CPU (0: leave torch's default)
    work_pool: str = "ganviews"  # distributed: the process work pool
    shard_queue: str = (
        "shards"  # distributed: queue the per-GPU workers (--limit 1) pull shard runs from
    )
    control_queue: str = "control"  # distributed: queue of the stage / pipeline runs (a CPU worker)
    deployment: str = "ganviews"  # distributed: deployment name (ganviews-shard/<deployment>)
    retries: int = 2  # retries of a shard after a transient error (same process / same flow run)
    # invert: rerun images whose inversion failed on every run/resume (false: give up on them;
    # they stay failed in the store and are reported as excluded, or classified from the original)
    retry_failed_images: bool = True
    # invert: give up on an image after its inversion failed this often (null: never; it counts
    # over runs, in the store; retry_failed_images: false is 1)
    max_image_attempts: int | None = None
    retry_delay_seconds: tuple[float, ...] = (
        10.0,
        60.0,
        300.0,
    )  # back-off before retry 1, 2, … (last repeats)
    shard_attempts: int = 1  # distributed: new child runs per shard in one job when one crashes (1: leave it to `resume`)
    poll_seconds: float = 2.0  # distributed: how often the parent polls its child runs
    job: str = ""  # job name in run names and idempotency keys ("": derived from the store path)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything one job needs: ``ganviews run CONFIG`` runs every stage from it."""

    data: DataConfig  # images and splits
    paths: PathsConfig  # outputs
    models: ModelsConfig  # checkpoints
    seed: int = 0  # base seed of every view and of training
    device: str = "auto"  # device of the non-sharded stages (train_encoder, pca, train_classifier)
    align: AlignConfig = field(default_factory=AlignConfig)  # ganviews.inversion.align.AlignConfig
    encoder_training: EncoderTrainingConfig = field(default_factory=EncoderTrainingConfig)
    invert: InversionConfig = field(
        default_factory=InversionConfig
    )  # ganviews.inversion.invert.InversionConfig
    pca: PCAConfig = field(default_factory=PCAConfig)
    views: ViewConfig = field(
        default_factory=ViewConfig
    )  # ganviews.views.render.ViewConfig (`preset:` allowed)
    classifier_training: ClassifierTrainingConfig = field(default_factory=ClassifierTrainingConfig)
    report: ReportConfig = field(
        default_factory=ReportConfig
    )  # ganviews.report.tables.ReportConfig (with `ensemble:`)
    corruptions: CorruptionsConfig = field(default_factory=CorruptionsConfig)  # Fig. 7 conditions
    orchestration: OrchestrationConfig = field(default_factory=OrchestrationConfig)
    multiview: MultiviewConfig = field(
        default_factory=MultiviewConfig
    )  # ganviews.genrep.experiment.MultiviewConfig (`ganviews multiview`, docs/genrep.md)

    @property
    def state_dir(self) -> Path:
        """Per-shard progress files and stage markers."""
        return self.paths.state or self.paths.store.with_name(self.paths.store.name + ".state")

    @property
    def conditions_dir(self) -> Path:
        """Folder of the conditions' latent stores (one per condition label)."""
        store = self.paths.store
        return self.corruptions.stores or store.with_name(store.name + "-conditions")

    @property
    def image_root(self) -> Path:
        return self.data.image_root or self.data.manifest.parent


# ----------------------------------------------------------------------------- loading


def load_pipeline_config(
    source: str | Path | Mapping[str, Any], *, base_dir: str | Path | None = None
) -> PipelineConfig:
    """A PipelineConfig from a YAML path or a mapping (ConfigError: one line per mistake, naming the key).

    Relative paths are resolved against the YAML's folder (or ``base_dir`` for a mapping,
    default the working directory).
    """
    if isinstance(source, (str, Path)):
        data = load_yaml(source)
        base = Path(source).resolve().parent
    elif isinstance(source, Mapping):
        data = dict(source)
        base = Path(base_dir or Path.cwd()).resolve()
    else:
        raise ConfigError(f"config: expected a YAML path or a mapping, got {type(source).__name__}")
    data = _expand_view_preset(data)
    _validate_sections(data)
    cfg = from_dict(
        PipelineConfig, data
    )  # sections are valid: only top-level scalars can fail here
    cfg = _resolve_paths(cfg, base)
    check_pipeline_config(cfg)
    return cfg


def as_config(config: PipelineConfig | Mapping[str, Any] | str | Path) -> PipelineConfig:
    """The flows' one coercion: a PipelineConfig from itself, its plain dict
    (:func:`pipeline_config_dict`, a flow-run parameter) or a YAML path."""
    return config if isinstance(config, PipelineConfig) else load_pipeline_config(config)


def pipeline_config_dict(cfg: PipelineConfig) -> dict[str, Any]:
    """Plain data (absolute paths) that :func:`load_pipeline_config` maps back onto ``cfg``."""
    return to_dict(cfg)


def _expand_view_preset(data: dict[str, Any]) -> dict[str, Any]:
    views = data.get("views")
    if not isinstance(views, Mapping) or "preset" not in views:
        return data
    views = dict(views)
    name = views.pop("preset")
    if name not in PRESETS:
        raise ConfigError(f"views.preset: {name!r} is not one of {sorted(PRESETS)}")
    return {**data, "views": with_preset(name, views)}


def _validate_sections(data: Mapping[str, Any]) -> None:
    """Every mistake in every section at once, each line naming its full dotted key.

    Sections are built one by one so that the messages of a library config's own checks
    (``n_views: got 1``, ``train.epochs: …``) get the section's key in front.
    """
    fields = {f.name: f for f in dataclasses.fields(PipelineConfig)}
    hints = typing.get_type_hints(PipelineConfig)
    errors = [
        f"{k}: unknown key (allowed: {', '.join(sorted(fields))})" for k in data if k not in fields
    ]
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                errors.append(f"{name}: required section is missing")
            continue
        if not dataclasses.is_dataclass(hints[name]):
            continue
        try:
            from_dict(hints[name], data[name], key=name)
        except ConfigError as exc:
            errors.extend(_prefixed(line, name) for line in str(exc).splitlines())
    if errors:
        raise ConfigError("\n".join(errors))


def _prefixed(line: str, section: str) -> str:
    if line.startswith((f"{section}.", f"{section}[", f"{section}:")):
        return line
    return f"{section}.{line}"


def _resolve_paths(cfg: Any, base: Path) -> Any:
    """Every Path field (nested, in dicts too) made absolute against ``base``."""
    if isinstance(cfg, Path):
        return cfg if cfg.is_absolute() else (base / cfg).resolve()
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        hints = typing.get_type_hints(type(cfg))
        changes = {}
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if _holds_paths(hints[f.name]):
                changes[f.name] = _resolve_paths(value, base)
        return dataclasses.replace(cfg, **changes) if changes else cfg
    if isinstance(cfg, dict):
        return {k: _resolve_paths(v, base) for k, v in cfg.items()}
    return cfg


def _holds_paths(tp: Any) -> bool:
    if tp is Path:
        return True
    if dataclasses.is_dataclass(tp):
        return tp.__module__ == __name__  # library configs hold no paths
    return any(_holds_paths(a) for a in typing.get_args(tp))


def check_pipeline_config(cfg: PipelineConfig) -> None:
    """Cross-field rules the types cannot express (each a ConfigError naming the key)."""
    orch = cfg.orchestration
    problems = []
    if not 1 <= orch.shard_size <= MAX_SHARD_SIZE:
        problems.append(
            f"orchestration.shard_size: {orch.shard_size} must be between 1 and {MAX_SHARD_SIZE} "
            "(images per shard and per store chunk)"
        )
    devices = (orch.devices,) if isinstance(orch.devices, str) else orch.devices
    if not devices:
        problems.append(
            'orchestration.devices: needs at least one entry ("auto", "cpu", "cuda:0" …)'
        )
    for i, dev in enumerate(devices):
        if dev != "auto" and not (
            dev == "cpu" or dev == "cuda" or (dev.startswith("cuda:") and dev[5:].isdigit())
        ):
            problems.append(f"orchestration.devices[{i}]: {dev!r} is not auto, cpu, cuda or cuda:N")
    if "auto" in devices and len(devices) > 1:
        problems.append(f'orchestration.devices: "auto" stands alone, got {list(devices)}')
    if orch.retries < 0:
        problems.append(f"orchestration.retries: {orch.retries} must be ≥ 0")
    if not orch.retry_delay_seconds or min(orch.retry_delay_seconds) < 0:
        problems.append(
            f"orchestration.retry_delay_seconds: {list(orch.retry_delay_seconds)} must be ≥ 0 seconds, at least one value"
        )
    if orch.shard_attempts < 1:
        problems.append(f"orchestration.shard_attempts: {orch.shard_attempts} must be ≥ 1")
    if orch.max_image_attempts is not None and orch.max_image_attempts < 1:
        problems.append(
            f"orchestration.max_image_attempts: {orch.max_image_attempts} must be ≥ 1 or null"
        )
    elif not orch.retry_failed_images and orch.max_image_attempts not in (None, 1):
        problems.append(
            f"orchestration.max_image_attempts: {orch.max_image_attempts} contradicts "
            "retry_failed_images: false (which means 1); drop one of them"
        )
    if orch.poll_seconds <= 0:
        problems.append(f"orchestration.poll_seconds: {orch.poll_seconds} must be > 0")
    if orch.cpu_threads < 0:
        problems.append(f"orchestration.cpu_threads: {orch.cpu_threads} must be ≥ 0")
    if cfg.pca.samples < 2:
        problems.append(f"pca.samples: {cfg.pca.samples} must be ≥ 2")
    if cfg.encoder_training.enabled and cfg.models.encoder is None:
        problems.append(
            "encoder_training.enabled: true needs models.encoder (the file the encoder is written to)"
        )
    enc = cfg.encoder_training
    if enc.lambda_id < 0:
        problems.append(f"encoder_training.lambda_id: {enc.lambda_id} must be ≥ 0")
    if enc.enabled and enc.lambda_id > 0 and enc.identity_weights is None:
        problems.append(
            f"encoder_training.identity_weights: lambda_id {enc.lambda_id} needs the IR-SE-50 "
            "ArcFace weights (pixel2style2pixel's model_ir_se50.pth, not shipped): name your "
            "local copy, or set lambda_id: 0"
        )
    ct = cfg.classifier_training
    if ct.train_split in EVALUATION_SPLITS:
        problems.append(
            f"classifier_training.train_split: {ct.train_split!r} is an evaluation split (α is "
            f"chosen on val, accuracy reported on test); allowed: any split but "
            f"{', '.join(map(repr, EVALUATION_SPLITS))}, e.g. 'train'"
        )
    if ct.enabled and ct.name not in cfg.models.classifiers:
        problems.append(
            f"classifier_training.name: {ct.name!r} is not a key of models.classifiers "
            f"({sorted(cfg.models.classifiers)})"
        )
    if (
        ct.enabled
        and ct.data == "store"
        and cfg.data.splits
        and ct.train_split not in cfg.data.splits
    ):
        problems.append(
            f"classifier_training.train_split: {ct.train_split!r} is not in data.splits "
            f"{list(cfg.data.splits)}; the store holds only those (add it, or use data: manifest)"
        )
    if ct.enabled and ct.data == "manifest" and ct.source != "real":
        problems.append(f"classifier_training.source: {ct.source!r} needs latents; set data: store")
    if ct.enabled:
        try:
            training_views(cfg)
        except ConfigError as exc:
            problems.append(f"classifier_training.{exc}")
    for name in cfg.models.classifiers:
        if not name or not all(c.isalnum() or c in "_.-" for c in name):
            problems.append(
                f"models.classifiers.{name}: names use letters, digits, '_', '.', '-' only"
            )
    problems += _corruption_problems(cfg)
    if problems:
        raise ConfigError("\n".join(problems))


def training_views(cfg: PipelineConfig) -> SourceConfig:
    """classifier_training.views as the stage uses it: its ``source``, and ``real_source`` /
    ``photo_size`` following views.original_source / photo_size unless given (the real side of
    Eq. 8 reads what view 0 classifies: the raw photo for cars)."""
    ct, views = cfg.classifier_training, cfg.views
    return dataclasses.replace(
        ct.views,
        source=ct.source,
        real_source=ct.views.real_source or views.original_source,
        photo_size=ct.views.photo_size or views.photo_size,
    )


def _corruption_problems(cfg: PipelineConfig) -> list[str]:
    cor = cfg.corruptions
    if not cor.conditions:
        return []
    problems = []
    try:
        check_labels(cor.conditions)
    except ConfigError as exc:
        problems.append(str(exc))
    if any(c.is_attack for c in cor.conditions) and attacked_classifier(cfg) is None:
        problems.append(
            f"corruptions.classifier: {cor.classifier!r} is not a key of models.classifiers "
            f"({sorted(cfg.models.classifiers)}); attacks need the classifier they attack"
        )
    groups = [f"{g.method}_{g.layers}" for g in cfg.views.gan]
    if cor.gan_method not in groups:
        problems.append(
            f"corruptions.gan_method: {cor.gan_method!r} is not a views.gan group {groups}"
        )
    if cor.image_method not in cfg.views.image_methods:
        problems.append(
            f"corruptions.image_method: {cor.image_method!r} is not in views.image_methods "
            f"{list(cfg.views.image_methods)}"
        )
    missing = [s for s in cor.splits if cfg.data.splits and s not in cfg.data.splits]
    if missing:
        problems.append(
            f"corruptions.splits: {missing} are not in data.splits {list(cfg.data.splits)}"
        )
    if cor.max_images is not None and cor.max_images < 1:
        problems.append(f"corruptions.max_images: {cor.max_images} must be ≥ 1 (or null)")
    if cfg.views.original_source != "aligned":
        problems.append(
            f"corruptions: the conditions corrupt the aligned frames, which views.original_source "
            f"{cfg.views.original_source!r} does not classify; run Fig. 7 with "
            "original_source: aligned (its own config and logits folder)"
        )
    return problems


def attacked_classifier(cfg: PipelineConfig) -> str | None:
    """The models.classifiers key the attacks target: corruptions.classifier, else the only one."""
    names = cfg.models.classifiers
    if cfg.corruptions.classifier:
        return cfg.corruptions.classifier if cfg.corruptions.classifier in names else None
    return next(iter(names)) if len(names) == 1 else None


def job_name(cfg: PipelineConfig) -> str:
    """The job's name: ``orchestration.job``, else ``job-<hash of the store path>``."""
    if cfg.orchestration.job:
        return cfg.orchestration.job
    return "job-" + hashlib.sha1(str(cfg.paths.store).encode()).hexdigest()[:10]


_HINTS = {
    "models.encoder": " (put the authors' released RGBM encoder for this generator there, "
    "sgan_encoders_<ffhq|car|cat>_RGBM_model_initial.pth.tar, docs/quickstart.md; or name a "
    ".safetensors file and set encoder_training.enabled: true to train one)",
    "encoder_training.identity_weights": " (pixel2style2pixel's IR-SE-50 ArcFace, "
    "model_ir_se50.pth, is not shipped: put your copy there, or set lambda_id: 0)",
}


def check_files(cfg: PipelineConfig, stages: Sequence[str]) -> None:
    """ConfigError naming every input file the given stages need and cannot find."""
    need: list[tuple[str, Path | None]] = [("models.generator", cfg.models.generator)]
    if "invert" in stages:
        need.append(("data.manifest", cfg.data.manifest))
        if cfg.models.encoder is not None and not (
            "train_encoder" in stages and cfg.encoder_training.enabled
        ):
            need.append(("models.encoder", cfg.models.encoder))
    enc = cfg.encoder_training
    if "train_encoder" in stages and enc.enabled and enc.lambda_id > 0:
        need.append(("encoder_training.identity_weights", enc.identity_weights))
    trained = (
        cfg.classifier_training.name
        if cfg.classifier_training.enabled and "train_classifier" in stages
        else None
    )
    if "render" in stages:
        if not cfg.models.classifiers:
            raise ConfigError("models.classifiers: the render stage needs at least one classifier")
        need += [
            (f"models.classifiers.{k}.path", v.path)
            for k, v in cfg.models.classifiers.items()
            if k != trained
        ]
    missing = [
        f"{key}: {path} not found{_HINTS.get(key, '')}"
        for key, path in need
        if path is not None and not Path(path).is_file()
    ]
    if missing:
        raise ConfigError(
            "\n".join(missing) + "\n(put the files there or fix the paths in the config)"
        )
