# One image for the coordinator and for partner nodes (the command decides the role).
# Untested in the project's CI environment (no container engine there); see docs/DEPLOYMENT.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    FLWR_TELEMETRY_ENABLED=0 FEDCUSTOMER_THREADS=1 OMP_NUM_THREADS=1

RUN useradd --create-home --uid 10001 fed
WORKDIR /opt/fedcustomer

# CPU torch first so pip does not pull CUDA wheels, then the package.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY fedcustomer ./fedcustomer
RUN pip install . grpcio-health-checking

# Mount points owned by the unprivileged user, so fresh named volumes inherit that ownership.
RUN mkdir -p /certs /coordinator /home/partner /data && chown fed /certs /coordinator /home/partner /data
USER fed
WORKDIR /data
ENTRYPOINT ["fedcustomer"]
CMD ["--help"]
