"""The whole job from one YAML: encoder → inversion → classifier → PCA → views/logits → report.

Chai et al. (CVPR 2021), Sec. 3–4. Each stage is its own flow (flows/stages.py) and skips
what is complete, so running the pipeline again — or ``ganviews resume`` — does only the
pending and failed work.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow
from prefect.logging import get_run_logger

from flows import stages as S
from ganviews.core.errors import ConfigError
from ganviews.core.stop import stop_requested
from tasks.pipeline_config import STAGES, as_config, check_files, job_name, pipeline_config_dict

STAGE_FLOWS = {
    "train_encoder": S.train_encoder,
    "invert": S.invert_dataset,
    "train_classifier": S.train_classifier,
    "pca": S.compute_pca_stats,
    "render": S.render_and_classify,
    "corrupt": S.corrupt_conditions,
    "evaluate": S.evaluate_ensembles,
}


def select_stages(stages: list[str] | str | None) -> list[str]:
    """Stages in pipeline order; ConfigError naming an unknown one."""
    if stages is None or stages == "all" or stages == ["all"]:
        return list(STAGES)
    wanted = [
        s.strip() for s in (stages.split(",") if isinstance(stages, str) else stages) if s.strip()
    ]
    unknown = [s for s in wanted if s not in STAGES]
    if unknown or not wanted:
        raise ConfigError(
            f"stages: {unknown or wanted} not known; choose from {list(STAGES)} (or all)"
        )
    return [s for s in STAGES if s in wanted]


@flow(name="ganviews-pipeline")
def pipeline(config: str | dict[str, Any], stages: list[str] | None = None) -> dict[str, Any]:
    """Run the selected stages (default all) in order; each skips its complete outputs."""
    cfg = as_config(config)
    chosen = select_stages(stages)
    check_files(cfg, chosen)
    logger = get_run_logger()
    logger.info(
        "job %s: stages %s, %s mode", job_name(cfg), ", ".join(chosen), cfg.orchestration.mode
    )
    params = pipeline_config_dict(cfg)  # stage flows are runs of their own: plain parameters
    outcome = {}
    for stage in chosen:
        if stop_requested():  # first Ctrl-C / SIGTERM: no further stage starts
            logger.warning("stop requested: stages from %s on not started", stage)
            break
        t0 = time.perf_counter()
        outcome[stage] = {**STAGE_FLOWS[stage](params)}
        outcome[stage]["seconds"] = round(time.perf_counter() - t0, 3)
    return outcome
