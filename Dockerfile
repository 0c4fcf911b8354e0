# imagesvc: the gRPC image service (pyvips with the bundled libvips of pyvips-binary).
# The image also carries the Triton model repository at /app/model_repository; the Kubernetes pod
# copies it into the Triton sidecar's model volume (see k8s/README.md).
#
#   docker build -t imagesvc:0.1.0 .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: generate the protobuf code and install the project into /opt/venv ----
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml ./

# Pins come from pyproject.toml: the runtime dependencies, and grpcio-tools from the `codegen`
# extra (it only generates code, so it gets its own venv and stays out of the runtime image).
RUN python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"]))' > /tmp/requirements.txt \
 && python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["optional-dependencies"]["codegen"]))' > /tmp/codegen.txt \
 && python -m venv /opt/codegen \
 && /opt/codegen/bin/pip install -r /tmp/codegen.txt \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install -r /tmp/requirements.txt

COPY protos/ protos/
COPY imagesvc/ imagesvc/
COPY inference/ inference/
RUN mkdir -p imagesvc/v1 \
 && touch imagesvc/v1/__init__.py \
 && /opt/codegen/bin/python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. \
      protos/imagesvc/v1/image_service.proto \
 && /opt/venv/bin/pip install .

# ---- runtime ----
FROM ${PYTHON_IMAGE}

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN groupadd --system --gid 10001 imagesvc \
 && useradd --system --uid 10001 --gid imagesvc --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin imagesvc

COPY --from=build /opt/venv /opt/venv
COPY model_repository/ /app/model_repository/

WORKDIR /app
# Numeric, so Kubernetes can check runAsNonRoot without a runAsUser.
USER 10001:10001
EXPOSE 50051 9464
CMD ["python", "-m", "imagesvc.server"]
