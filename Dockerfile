# syntax=docker/dockerfile:1.7
# facebatch on Ray's own image: one image for the head, the workers and the job submitters.
#
#   docker build --build-context weights=../shared/data/weights -t facebatch:0.1.0-cpu .
#   docker build --build-context weights=../shared/data/weights --build-arg FLAVOR=gpu -t facebatch:0.1.0-gpu .
#
# The detector weights come from the named build context `weights` (a folder holding
# mobilenet0.25_Final.pth and SHA256SUMS); they never enter the repository. Nothing secret is
# baked in: S3 credentials come from a Kubernetes Secret at run time (cluster/raycluster.yaml).
# No Docker daemon runs on the project's machines, so this file is linted (hadolint) and
# checked by tests/test_cluster.py, not built there.

# RAY_VERSION must match the ray that `pip install -e '.[dev]'` resolves (2.60.0 now):
# a job's driver and the cluster must run the same Ray.
ARG RAY_VERSION=2.60.0
# cpu: rayproject/ray:<ver>-py311-cpu (Ubuntu). gpu: rayproject/ray:<ver>-py311-gpu, Ray's alias
# for its default CUDA tag (-cuXXX); pass e.g. FLAVOR=cu128 to pin a CUDA version instead.
ARG FLAVOR=cpu
FROM rayproject/ray:${RAY_VERSION}-py311-${FLAVOR}

ARG RAY_VERSION
# The base image's user is `ray` (uid 1000, gid 100 `users`), home /home/ray, Python in
# /home/ray/anaconda3. Everything below runs and is owned by it; no step needs root.
USER 1000
WORKDIR /home/ray/facebatch

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    FACEBATCH_WEIGHTS_DIR=/home/ray/weights \
    FACEBATCH_DATA=/home/ray/data \
    DEEPFACE_BACKEND_ENGINE=pytorch \
    DEEPFACE_HOME=/home/ray/weights/deepface

# Install first from the package files only, so code edits do not redo the long torch layer.
# The pins (torch==2.14.1, torchvision==0.29.1, ...) come from pyproject.toml, the same file the
# README's install command reads; ray is held at the base image's version so pip cannot move it.
# The shipped models (facebatch/release/*.pt) and configs are package data: they land in
# site-packages with this install, so `--model keypoints68` needs no download in the image.
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 facebatch/ facebatch/
RUN pip install --no-cache-dir . "ray[data,train,serve]==${RAY_VERSION}"

# `ray job submit` entrypoints and bench scripts, so a RayJob can run `python jobs/preprocess.py`
# from the image without uploading a working dir.
COPY --chown=1000:100 jobs/ jobs/
COPY --chown=1000:100 cluster/ cluster/

# Detector weights from the named build context, checked against their SHA256SUMS
# (paths in it are `weights/<file>`, relative to the folder above the weights).
# DL3022 ("COPY --from should reference a previous FROM alias") is ignored on purpose: `weights`
# is a named build context (--build-context weights=DIR), which hadolint does not know about.
# hadolint ignore=DL3022
COPY --from=weights --chown=1000:100 . /home/ray/weights/
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN sed 's#  weights/#  /home/ray/weights/#' /home/ray/weights/SHA256SUMS | sha256sum -c - \
    && python -c "from facebatch.modelio import release_models as r; from facebatch.weights import find_weights as f; \
assert {'keypoints68', 'keypoints15', 'attributes'} <= set(r()), r(); print(r(), f('mobilenet0.25_Final.pth'))"

# No HEALTHCHECK: the image runs many roles (Ray head, worker, job submitter, one-shot CLI).
# Kubernetes ignores Docker's HEALTHCHECK; KubeRay gives head and worker pods their own
# liveness/readiness probes (raylet and dashboard agent health), and Serve's proxy has /-/healthz.
HEALTHCHECK NONE

# Ray's KubeRay pods override the command (`ray start ...`); run alone, the image is the CLI.
CMD ["facebatch", "--help"]
