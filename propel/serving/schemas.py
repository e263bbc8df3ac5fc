"""Request and response bodies of the HTTP API (pydantic; they are also the OpenAPI schema).

Requests are strict (no "5" for 5, no unknown fields), so a wrong type, a missing field, a value out
of range or too many ids is a 400 whose `detail[].loc` names the field. Limits come from the
workspace's `[serve]` settings, hence the models are built by `schemas(settings)`.
"""

from types import SimpleNamespace
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from propel.config import ServeSettings

Id = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class Reason(BaseModel):
    feature: str
    contribution: float = Field(description="SHAP contribution in log-odds (uplift: treated minus control)")


class ScoreResult(BaseModel):
    customer_id: str
    status: int = Field(description="200 scored; 404 unknown customer (the others in the batch are still scored)")
    error: str | None = None
    probability: float | None = Field(None, description="calibrated probability (churn, propensity)")
    uplift: float | None = Field(None, description="p_treated - p_control (uplift)")
    p_treated: float | None = None
    p_control: float | None = None
    decile: int | None = Field(None, description="1 = top 10% of the training scores ... 10; null for models logged without edges")
    reasons: list[Reason] = []
    model_version: str | None = None


class ScoreResponse(BaseModel):
    task: str
    model_version: str
    unknown: int = Field(description="ids answered with status 404")
    results: list[ScoreResult]


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    explored: bool = Field(description="mixed in by the exploration share (a new item the model cannot rank yet)")


class RecommendResponse(BaseModel):
    recommendation_id: str = Field(description="send it back with the events it leads to (`recommendation_id` column)")
    customer_id: str
    items: list[RecommendedItem]
    model: str = Field(description="which model produced the list: als, popular, ...")
    model_version: str
    fallback: bool
    fallback_reason: str | None = Field(None, description="why: unknown_customer (popular items) ...")


class SimilarItem(BaseModel):
    item_id: str
    score: float


class SimilarItemsResponse(BaseModel):
    item_id: str
    items: list[SimilarItem]
    model_version: str


def schemas(cfg: ServeSettings) -> SimpleNamespace:
    """Request models with this workspace's limits."""
    Ids = Annotated[list[Id], Field(min_length=1, max_length=cfg.max_ids, description=f"at most {cfg.max_ids}")]
    K = Annotated[int, Field(ge=1, le=cfg.max_k, description=f"1..{cfg.max_k}")]
    Reasons = Annotated[int, Field(ge=0, le=10, description="reason codes per customer (0 = none, faster)")]
    Items = Annotated[list[Id], Field(max_length=cfg.max_k * 10)]

    class ScoreRequest(Strict):
        customer_ids: Ids
        reasons: Reasons = cfg.reasons

    class ContactScoreRequest(ScoreRequest):
        """Propensity and uplift score a contact: what is sent is part of the model input."""

        campaign_channel: Id | None = Field(None, description="channel of the message (required when the model uses it)")
        offer_type: Id | None = Field(None, description="offer of the message (required when the model uses it)")

    class Filters(Strict):
        category: Id | None = None
        min_price: Annotated[float, Field(ge=0)] | None = None
        max_price: Annotated[float, Field(ge=0)] | None = None
        exclude: Items = Field(default_factory=list, description="item ids never to return")

        @model_validator(mode="after")
        def _price_range(self):
            if self.min_price is not None and self.max_price is not None and self.min_price > self.max_price:
                raise ValueError(f"filters.min_price ({self.min_price}) is above filters.max_price ({self.max_price})")
            return self

    class RecommendRequest(Strict):
        customer_id: Id
        k: K = 10
        filters: Filters = Field(default_factory=Filters)
        fresh_interactions: Items = Field(default_factory=list, description="recent item ids not yet in training, most recent last")

    class SimilarItemsRequest(Strict):
        item_id: Id
        k: K = 10

    return SimpleNamespace(ScoreRequest=ScoreRequest, ContactScoreRequest=ContactScoreRequest, Filters=Filters,
                           RecommendRequest=RecommendRequest, SimilarItemsRequest=SimilarItemsRequest)
