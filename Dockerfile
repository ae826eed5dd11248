# tideflow as a container image: `tideflow` is the entrypoint, so the container's command is
# what follows it, e.g. `run /pipelines/reckoning.yaml --worker-id reckoning-0`.
#
#   docker build -t tideflow .                                      # python:3.12-slim
#   docker build --build-arg EXTRAS=kafka,postgres -t tideflow .     # fewer connectors
#   docker build --build-arg BASE_IMAGE=my-registry/python:3.12 .    # another base
#
# BASE_IMAGE must provide python3 (3.11 or newer) with its venv module, and useradd. The
# image runs as the unprivileged user `tideflow` (uid 10001) in /app.
ARG BASE_IMAGE=docker.io/library/python:3.12-slim-bookworm

# ---- deps: a virtual environment holding the dependencies of tideflow and its extras -----
FROM ${BASE_IMAGE} AS deps
# Extras of pyproject.toml to install: connectors (kafka, postgres, mysql, s3, mqtt, redis,
# amqp) and `service` (tideflow serve, Prometheus metrics).
ARG EXTRAS=kafka,postgres,s3,service
# A CA bundle pip should trust (a build behind a TLS-inspecting proxy mounts it); unset: the
# base image's own.
ARG PIP_CERT=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/tideflow
# From pyproject.toml alone: this stage is rebuilt only when the dependencies change, not on
# every change of the source.
COPY pyproject.toml /src/pyproject.toml
RUN python3 -c "import sys, tomllib; p = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']; extras = [e for e in sys.argv[1].split(',') if e]; print('\n'.join(p['dependencies'] + [d for e in extras for d in p['optional-dependencies'][e]]))" "$EXTRAS" > /src/requirements.txt \
 && if [ -n "$PIP_CERT" ]; then export PIP_CERT; else unset PIP_CERT; fi \
 && /opt/tideflow/bin/pip install --quiet -r /src/requirements.txt

# ---- wheel: tideflow itself, built with hatchling in an environment of its own -----------
FROM ${BASE_IMAGE} AS wheel
ARG PIP_CERT=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/build \
 && if [ -n "$PIP_CERT" ]; then export PIP_CERT; else unset PIP_CERT; fi \
 && /opt/build/bin/pip install --quiet "hatchling>=1.21"
COPY pyproject.toml README.md /src/
COPY src /src/src
COPY examples /src/examples
RUN /opt/build/bin/pip wheel --quiet --no-deps --no-build-isolation --wheel-dir /dist /src

# ---- runtime: the environment, an unprivileged user, the entrypoint and a health check ---
FROM ${BASE_IMAGE}
RUN groupadd --gid 10001 tideflow \
 && useradd --uid 10001 --gid tideflow --home-dir /app --create-home \
    --shell /usr/sbin/nologin tideflow
# The dependencies' layer is shared by every build with the same pyproject.toml; only the
# small layer of the wheel changes with the source.
COPY --from=deps /opt/tideflow /opt/tideflow
COPY --from=wheel /dist /tmp/dist
RUN /opt/tideflow/bin/pip install --quiet --no-deps --no-cache-dir --disable-pip-version-check \
    /tmp/dist/*.whl \
 && rm -rf /tmp/dist \
 && /opt/tideflow/bin/tideflow --version
ENV PATH=/opt/tideflow/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TIDEFLOW_HEALTH_URL=http://127.0.0.1:8081/healthz
WORKDIR /app
USER 10001:10001
# 8081: `tideflow run --metrics-port 8081` (/metrics, /healthz, /readyz); 8080: `tideflow serve`.
EXPOSE 8080 8081
# GETs TIDEFLOW_HEALTH_URL (with TIDEFLOW_TOKEN as a bearer token, if set): `tideflow run
# ... --metrics-port 8081` (or --health-port 8081) answers /healthz there; for `tideflow
# serve`, set it to http://127.0.0.1:8080/api/health. Any answer but 2xx is unhealthy.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request as u; t = os.environ.get('TIDEFLOW_TOKEN'); u.urlopen(u.Request(os.environ['TIDEFLOW_HEALTH_URL'], headers={'Authorization': 'Bearer ' + t} if t else {}), timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["tideflow"]
CMD ["--help"]
