"""openai-grpc: a gRPC gateway for the OpenAI API."""

__version__ = "0.1.0"
