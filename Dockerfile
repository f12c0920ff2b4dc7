# ganviews worker image: the project and its pinned dependencies (PyTorch wheels bundle CUDA;
# the host needs the NVIDIA driver + container toolkit). Used by docker-compose.yml for the
# deploy job, the control worker and one worker per GPU. Build: docker compose build
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1

# OpenCV (headless) still needs glib; curl for health checks and debugging.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libglib2.0-0 curl \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# Dependencies first (cached layer), then the code.
COPY pyproject.toml README.md ./
COPY ganviews ./ganviews
COPY storage ./storage
COPY tasks ./tasks
COPY flows ./flows
COPY configs ./configs
RUN pip install . \
    && python -c "import ganviews, storage, tasks, flows.shards, prefect; print('ganviews image ok, prefect', prefect.__version__)"

# Stores, manifests, images and model files live on the shared volume mounted here.
VOLUME ["/data"]
CMD ["ganviews", "--help"]
