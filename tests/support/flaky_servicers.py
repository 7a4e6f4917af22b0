"""Bare grpc.aio servicers that fail on purpose, to watch what a client channel's service config does."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from openai_grpc.v1 import chat_pb2, chat_pb2_grpc, models_pb2, models_pb2_grpc


class FlakyModels(models_pb2_grpc.ModelsServiceServicer):
    def __init__(self) -> None:
        self.attempts = 0
        self.stall = False

    async def GetModel(
        self, request: models_pb2.GetModelRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> models_pb2.GetModelResponse:
        self.attempts += 1
        if self.stall:
            await asyncio.sleep(30)
        if self.attempts == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        return models_pb2.GetModelResponse(model=models_pb2.Model(id=request.model))


class UnavailableChat(chat_pb2_grpc.ChatServiceServicer):
    def __init__(self) -> None:
        self.attempts = 0

    async def CreateChatCompletion(
        self, request: chat_pb2.CreateChatCompletionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> chat_pb2.CreateChatCompletionResponse:
        self.attempts += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
