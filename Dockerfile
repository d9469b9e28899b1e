# apiinone image for operators: one image runs the API (`apiinone serve`) or a worker node
# (`apiinone worker`). Untested in this repository's CI (no Docker engine there); the tested
# path to a cluster is scripts/cluster.sh. See README, "Scale out".
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home /data apiinone && mkdir -p /data && chown apiinone /data
COPY --from=build /install /usr/local
USER apiinone
WORKDIR /data
ENV APIINONE_DATA_DIR=/data APIINONE_ENV=production APIINONE_LOG_JSON=true
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)" || exit 1
CMD ["apiinone", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2", "--no-worker"]
