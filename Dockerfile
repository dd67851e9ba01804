# syntax=docker/dockerfile:1
# cc-sidecar container image.
#   docker build -t cc-sidecar:0.1.0 .
#   docker run --read-only -v "$PWD/config:/etc/cc-sidecar:ro" -e CC_CLIENT_SECRET -e CC_SIDECAR_SECRET \
#     -p 8080:8080 -p 9090:9090 cc-sidecar:0.1.0
# Both stages use the same base, so the venv's interpreter link (/usr/local/bin/python3.11) holds in
# the final stage. The base is a patch tag; pin it by digest as well when your registry policy asks:
#   docker buildx imagetools inspect python:3.11.14-slim-bookworm    (prints the index digest)
#   docker build --build-arg PYTHON_DIGEST=sha256:<that digest> -t cc-sidecar:0.1.0 .
# (No digest is written here: one copied from somewhere else would pin an image nobody checked.)
# 3.11 on purpose: `make bench` measured 3.12 and 3.13 about 20 % slower per proxied request
# (pyenv builds of each with the same flags).
# `make chart-check` replays this file's stages without Docker (tools/image_replay.py): the build
# runs twice, must give the same wheel, and what it built must answer /readyz.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG PYTHON_DIGEST=

# --- Stage 1: build the wheel and install it, with uvloop, into a self-contained venv. ---
FROM ${PYTHON_IMAGE}${PYTHON_DIGEST:+@}${PYTHON_DIGEST} AS build
# The wheel's zip entries carry this time instead of the build's, so two builds of one commit give
# the same wheel (same sha256). Pass the commit's time to date it:
#   --build-arg SOURCE_DATE_EPOCH="$(git log -1 --format=%ct)"
# The default is the earliest time a zip can hold (1980-01-01).
ARG SOURCE_DATE_EPOCH=315532800
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH}
# A C compiler for mypyc, in this stage only.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY requirements/build.txt requirements/runtime.txt ./requirements/
COPY pyproject.toml setup.py README.md ./
COPY proxy ./proxy
# The request path is compiled with mypyc (setup.py): about 15 % less CPU per proxied request.
# Both venvs install the lock (requirements/, `make lock`), every file checked by its sha256: the
# build venv holds the runtime dependencies plus mypy, whose types mypyc reads, and the wheel is
# compiled against exactly the versions the runtime venv then installs, the ones `make test` ran on.
# pip compiles every module to .pyc here, so the read-only final image never writes bytecode.
# The runtime venv is made without pip (and so without setuptools): the build venv's pip installs
# into it (--python), so neither is in the image.
# The last check imports the installed package in isolated mode (-I): plain `python -c` puts the
# working directory, /src with the source proxy/, first on sys.path and would check the source.
RUN python -m venv /opt/build \
 && /opt/build/bin/pip install --require-hashes --no-deps -r requirements/build.txt \
 && CC_SIDECAR_COMPILE=1 /opt/build/bin/pip wheel --no-build-isolation --no-deps --wheel-dir /wheels . \
 && python -m venv --without-pip /opt/cc-sidecar \
 && /opt/build/bin/pip --python /opt/cc-sidecar/bin/python install --require-hashes --no-deps \
      -r requirements/runtime.txt \
 && /opt/build/bin/pip --python /opt/cc-sidecar/bin/python install --no-deps /wheels/cc_sidecar-*.whl \
 && /opt/cc-sidecar/bin/cc-sidecar --help >/dev/null \
 && /opt/cc-sidecar/bin/python -I -c "import proxy.compiled, proxy.handler; assert proxy.compiled.is_compiled(proxy.handler)"

# --- Stage 2: the runtime: the base image plus the venv, nothing else. ---
FROM ${PYTHON_IMAGE}${PYTHON_DIGEST:+@}${PYTHON_DIGEST}
LABEL org.opencontainers.image.title="cc-sidecar" \
      org.opencontainers.image.description="Reverse proxy that gives legacy shops Customer's Canvas customer tokens" \
      org.opencontainers.image.licenses="MIT"
ENV PATH=/opt/cc-sidecar/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CC_SIDECAR_CONFIG=/etc/cc-sidecar/sidecar.yaml
COPY --from=build /opt/cc-sidecar /opt/cc-sidecar
# A numeric user (no passwd entry needed) so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
# 8080: shop traffic (listen). 9090: /healthz /readyz /metrics (admin_listen).
EXPOSE 8080 9090
# No curl in slim images; python's urllib does the request. Exit 1 on any failure or non-2xx.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["cc-sidecar"]
CMD ["run", "--config", "/etc/cc-sidecar/sidecar.yaml"]
