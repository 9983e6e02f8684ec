"""The client side of plaudit's API, for trainers and scripts: what `pip install plaudit`
brings without torch, transformers or bentoml. For now the request and response types of
every endpoint (the same pydantic models the service validates with)."""
from plaudit.schemas import (CompareRequest, CompareResponse, ErrorResponse, FeedbackRequest, FeedbackResponse,
                             GetRewardRequest, GetRewardResponse, Item, JudgeRequest, JudgeResponse, Message,
                             ModelsResponse, Pair, RankRequest, RankResponse, ScoreRequest, ScoreResponse,
                             StepsRequest, StepsResponse)

__all__ = ["CompareRequest", "CompareResponse", "ErrorResponse", "FeedbackRequest", "FeedbackResponse",
           "GetRewardRequest", "GetRewardResponse", "Item", "JudgeRequest", "JudgeResponse", "Message",
           "ModelsResponse", "Pair", "RankRequest", "RankResponse", "ScoreRequest", "ScoreResponse", "StepsRequest",
           "StepsResponse"]
