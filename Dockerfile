# kvstore: one replica per container (`kvstore serve`), non-root, data at /data.
#
#   docker build -t kvstore:0.1.0 .                      # from PyPI, on the official slim image
#   python -m kvstore.local.image --tag kvstore:0.1.0    # offline: local base image + wheelhouse
#
# BASE_IMAGE is any Debian-like image with python3 >= 3.11 and its venv module.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
# The label lets kvstore.local.image prune the images a rebuild replaces.
LABEL org.opencontainers.image.title="kvstore"
# Empty: pip installs the package and its dependencies from PyPI. Set to a
# directory of the build context holding wheels for all of them (the kvstore
# wheel included) and the build needs no network at all.
ARG WHEELHOUSE=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/kvstore
COPY . /src
# pip builds the venv; it is removed afterwards since nothing needs it at run time.
RUN if [ -n "$WHEELHOUSE" ]; then \
        /opt/kvstore/bin/pip install --no-index --find-links "/src/$WHEELHOUSE" kvstore; \
    else \
        /opt/kvstore/bin/pip install /src; \
    fi \
 && /opt/kvstore/bin/pip uninstall --yes pip \
 && /opt/kvstore/bin/kvstore --help > /dev/null

# Only the venv goes into the final image: no wheels, no sources, no pip.
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="kvstore" \
      org.opencontainers.image.description="A replicated key-value store built to run as a Kubernetes StatefulSet"
# A fixed numeric id: Kubernetes' runAsNonRoot can only verify a numeric USER,
# and k8s/base/statefulset.yaml sets the same runAsUser/fsGroup.
RUN groupadd --system --gid 10001 kv \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin kv \
 && mkdir /data && chown 10001:10001 /data && chmod 0750 /data
# No .pyc writes at run time (read-only root filesystem); logs unbuffered.
ENV PATH=/opt/kvstore/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    KV_DATA_DIR=/data
# No VOLUME: Kubernetes mounts a PVC at /data; under Docker, pass -v NAME:/data
# (a VOLUME line would leave an anonymous volume behind every `docker run`).
USER 10001:10001
WORKDIR /data
EXPOSE 8080 8081
# Exec form: kvstore is PID 1 and receives SIGTERM itself (no shell in between).
ENTRYPOINT ["kvstore"]
CMD ["serve"]
# Last, so that everything above stays cached when only the code changes.
COPY --from=build /opt/kvstore /opt/kvstore
