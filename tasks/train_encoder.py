"""The train_encoder stage: the RGBM encoder on (w, G(w)) pairs (Chai et al. 2021, Eq. 2–3).

:func:`run_train_encoder` is the one body: ``ganviews train-encoder`` and the pipeline's
``train_encoder`` stage both call it with an :class:`~tasks.pipeline_config.EncoderTrainingConfig`.
A resumable checkpoint (default ``<out>.ckpt``) is kept next to the output; without
``resume`` an existing checkpoint is an error, so a run is never restarted by accident.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from ganviews.core.errors import ConfigError, GanviewsError
from ganviews.core.runtime import resolve_device, set_numerics_policy
from tasks.pipeline_config import EncoderTrainingConfig, PipelineConfig
from tasks.shard_runner import run_logger


def run_train_encoder(
    generator: str | Path,
    out: str | Path,
    settings: EncoderTrainingConfig,
    *,
    device: str = "auto",
    seed: int = 0,
    lpips_weights_dir: str | Path | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
):
    """Train the encoder for ``generator`` and save it to ``out`` → the library's training result."""
    from ganviews.inversion.encoder import EncoderConfig, save_encoder
    from ganviews.inversion.encoder_training import train_encoder
    from ganviews.stylegan.generator import load_generator

    out = Path(out)
    ckpt = Path(checkpoint) if checkpoint is not None else out.with_name(out.name + ".ckpt")
    if ckpt.exists() and not resume:
        raise GanviewsError(
            f"training checkpoint {ckpt} exists: pass --resume to continue it, or delete it to start over"
        )
    dev = resolve_device(device)
    set_numerics_policy(dev)
    G = load_generator(generator, device=dev)
    P = None
    if settings.perceptual != "none":
        from ganviews.inversion.perceptual import load_perceptual

        P = load_perceptual(
            settings.perceptual,
            device=dev,
            weights_dir=lpips_weights_dir,
            resolution=settings.perceptual_resolution,
        )
    identity = None
    if settings.lambda_id > 0:
        from ganviews.inversion.identity import load_identity_net

        if settings.identity_weights is None:
            raise ConfigError(
                "encoder_training.identity_weights: lambda_id > 0 needs the local IR-SE-50 file"
            )
        identity = load_identity_net(settings.identity_weights, device=dev)
    arch = EncoderConfig(
        num_ws=G.num_ws,
        w_dim=G.w_dim,
        img_channels=G.img_channels,
        depth=settings.depth,
        resolution=settings.resolution or min(G.resolution, 256),
        width=settings.width,
        norm=settings.norm,
    )
    result = train_encoder(
        G,
        steps=settings.steps,
        batch_size=settings.batch_size,
        lr=settings.lr,
        lambda_latent=settings.lambda_latent,
        perceptual=P,
        config=arch,
        truncation_psi=settings.truncation_psi,
        style_mix_prob=settings.style_mix_prob,
        betas=(settings.beta1, 0.999),
        mask_kind=settings.masks,
        pixel_loss=settings.pixel_loss,
        identity=identity,
        lambda_id=settings.lambda_id,
        device=dev,
        seed=seed,
        checkpoint=ckpt,
        checkpoint_every=settings.checkpoint_every,
        resume=resume,
        log_every=settings.log_every,
    )
    save_encoder(
        result.encoder,
        out,
        metadata={"steps": str(result.steps), "perceptual": settings.perceptual, "seed": str(seed)},
    )
    run_logger().info("encoder %s: %d steps in %.0f s", out, result.steps, result.seconds)
    return result


def encoder_done(cfg: PipelineConfig) -> bool:
    """The pipeline's encoder file exists."""
    return cfg.models.encoder is not None and Path(cfg.models.encoder).is_file()


@task(name="train-encoder", cache_policy=NO_CACHE)
def train_encoder_task(
    generator: Path,
    out: Path,
    settings: EncoderTrainingConfig,
    device: str = "auto",
    seed: int = 0,
    lpips_weights_dir: Path | None = None,
) -> dict[str, Any]:
    """Prefect task: train the encoder into ``out``, continuing ``<out>.ckpt`` when it exists."""
    result = run_train_encoder(
        generator, out, settings, device=device, seed=seed,
        lpips_weights_dir=lpips_weights_dir, resume=True,
    )  # fmt: skip
    return {"encoder": str(out), "sha256": result.encoder.sha256, "steps": result.steps}
