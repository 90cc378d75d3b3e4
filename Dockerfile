# segsearch image for the `api` and `indexer` services of docker-compose.yml.
#   docker build -t segsearch .                                   # CPU torch
#   docker build -t segsearch --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .  # CUDA
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SEGSEARCH_DATA=/data SEGSEARCH_CHECKPOINTS=/app/checkpoints

RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# torch first (its own index: CPU or the CUDA build), then SAM 2 (source-only; built against that torch,
# without its optional CUDA extension, which only speeds up a post-processing step segsearch does not use),
# then segsearch with PostgreSQL, Ray and SAM 2 support
RUN pip install torch==${TORCH_VERSION} torchvision==${TORCHVISION_VERSION} --index-url ${TORCH_INDEX}
RUN pip install setuptools && SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2==1.1.0
COPY pyproject.toml README.md ./
COPY segsearch ./segsearch
COPY indexer ./indexer
COPY api ./api
COPY cli ./cli
COPY migrations ./migrations
COPY checkpoints ./checkpoints
RUN pip install '.[postgres,ray,sam2]'

# Run as an unprivileged user (uid 1000, the usual first host user, so the bind-mounted checkpoints/
# stays writable for downloads; compose's `user:` overrides it). checkpoints/ is also mounted from the
# host by docker-compose (downloaded real weights).
RUN useradd --create-home --uid 1000 --user-group segsearch \
    && mkdir -p /data && chown -R segsearch:segsearch /data /app/checkpoints
USER segsearch
VOLUME ["/data"]
EXPOSE 8000
ENTRYPOINT ["segsearch"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
