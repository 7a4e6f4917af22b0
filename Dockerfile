# openai-grpc gateway image. Build: docker build -t openai-grpc .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements ./requirements
COPY client_stubs/python ./client_stubs/python
COPY server ./server
RUN pip install --no-cache-dir --prefix=/install -c requirements/constraints.txt '.[server]'

FROM python:3.11-slim
RUN useradd --uid 10001 --create-home gateway
COPY --from=build /install /usr/local
USER 10001
EXPOSE 50051 9464
# Liveness/readiness use grpc.health.v1 (Kubernetes `grpc:` probes); the process drains on SIGTERM.
ENTRYPOINT ["openai-grpc-server"]
CMD ["--port", "50051"]
