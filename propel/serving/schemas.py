"""Request and response bodies of the HTTP API (pydantic; they are also the OpenAPI schema).

Requests are strict (no "5" for 5, no unknown fields), so a wrong type, a missing field, a value out
of range or too many ids is a 400 whose `detail[].loc` names the field. Limits come from the
workspace's `[serve]` settings, hence the models are built by `schemas(settings)`.
"""

import copy
from types import SimpleNamespace
from typing import Annotated, Any

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


class EventResult(BaseModel):
    index: int = Field(description="the event's position in the request")
    event_id: str | None = None
    status: str = Field(description="accepted (in the event log), duplicate (event_id seen before) or rejected")
    field: str | None = Field(None, description="rejected: the field at fault")
    reason: str | None = Field(None, description="rejected: the reason code, as in the ingest quarantine")
    customer_id: str | None = Field(None, description="accepted: the person the event is about (the identity map's "
                                    "customer_id; an unknown device gets an anonymous profile, `anon-...`)")


class EventsResponse(BaseModel):
    accepted: int
    duplicates: int
    rejected: int
    results: list[EventResult]


class SimilarItem(BaseModel):
    item_id: str
    score: float


class SimilarItemsResponse(BaseModel):
    item_id: str
    items: list[SimilarItem]
    model_version: str


def schemas(cfg: ServeSettings, max_events: int) -> SimpleNamespace:
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

        campaign_channel: Id = Field(description="channel of the message: one the model was trained on")
        offer_type: Id = Field(description="offer of the message: one the model was trained on")

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

    class EventsRequest(Strict):
        events: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=max_events, description=(
            f"at most {max_events} events, each with the columns of the data contract's `events` table "
            "(docs/data-contract.md); each is validated on its own"))]

    return SimpleNamespace(ScoreRequest=ScoreRequest, ContactScoreRequest=ContactScoreRequest, Filters=Filters,
                           RecommendRequest=RecommendRequest, SimilarItemsRequest=SimilarItemsRequest,
                           EventsRequest=EventsRequest)


ERROR = {"type": "object", "required": ["error"], "properties": {
    "error": {"type": "string"},
    "detail": {"type": "array", "description": "what is wrong, per field (`loc` is the field's path)", "items": {
        "type": "object", "required": ["loc", "msg"],
        "properties": {"loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                       "msg": {"type": "string"}}}}}}
RETRY_AFTER = {"Retry-After": {"required": True, "schema": {"type": "integer"}}}
MODEL_ROUTES = ("/recommend", "/similar_items", "/score/churn", "/score/propensity", "/score/uplift")


def _answer(description: str, media: str = "application/json", **extra) -> dict:
    schema = {"$ref": "#/components/schemas/Error"} if media == "application/json" else {"type": "string"}
    return {"description": description, "content": {media: {"schema": schema}}, **extra}


def openapi(base: dict, *, api_key: bool, open_paths: set[str], max_body: int,
            levels: dict[str, dict[str, list[str]]], categories: list[str] | None) -> dict:
    """BentoML's spec of the service made true to what the server answers: errors as they are sent
    (`detail` a list), every status an endpoint answers (401 with an API key, 413, 415, 429, 503, never a
    500), the pages outside BentoML's APIs, and the values the loaded champions accept (`levels`: per
    route, the campaign fields' trained values; the catalogue's `categories`), so a request the spec calls
    valid is one the server accepts. Schemathesis checks it (tests/test_serving.py)."""
    spec = copy.deepcopy(base)
    components = spec.setdefault("components", {})
    for name in ("InvalidArgument", "NotFound", "InternalServerError"):
        components.get("schemas", {}).pop(name, None)
    components.setdefault("schemas", {})["Error"] = ERROR
    paths = spec["paths"]
    paths["/metadata"] = {"get": {"description": "The loaded models and the request limits.", "responses": {
        "200": {"description": "per task: version, training run, feature service, load time",
                "content": {"application/json": {"schema": {"type": "object"}}}}}}}
    paths["/report"] = {"get": {"description": "The analytics report (HTML), rendered in the background.", "responses": {
        "200": {"description": "the report", "content": {"text/html": {"schema": {"type": "string"}}}},
        "202": _answer("being rendered: retry after Retry-After seconds", headers=RETRY_AFTER),
        "503": _answer("the report cannot be rendered (e.g. nothing ingested yet)")}}}
    paths["/readyz"]["get"]["responses"]["503"] = _answer("no model can serve, or the online store is unreachable")
    paths["/metrics"]["get"]["responses"]["200"] = {"description": "Prometheus metrics",
                                                    "content": {"text/plain": {"schema": {"type": "string"}}}}
    for path, item in paths.items():
        for method, op in item.items():
            responses = op["responses"] = {str(code): answer for code, answer in op["responses"].items()}
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            if body.get("required"):
                op["requestBody"]["required"] = True  # no body is `{}`, which lacks the required fields
            responses.pop("500", None)
            for code in ("400", "404"):
                if code in responses:
                    responses[code] = _answer(responses[code]["description"])
            if method == "post":
                responses["413"] = _answer(f"the body is larger than {max_body:,} bytes (serve.max_body_bytes)")
                responses["415"] = _answer("the body is not sent as application/json")
            if path != "/similar_items":
                responses.pop("404", None)
            if path in MODEL_ROUTES:
                responses["503"] = _answer("the model is not loaded, or the online store failed")
            if path.startswith("/score/"):
                responses["429"] = _answer("the worker's scoring queue is full: retry after Retry-After seconds",
                                           headers=RETRY_AFTER)
            if path == "/events":
                responses["503"] = _answer("the event log is unavailable: nothing of the batch is acknowledged, send it again")
            if path == "/reload":
                responses["202"] = {"description": "still loading (see /metadata)",
                                    "content": {"application/json": {"schema": {"type": "object"}}}}
            if api_key and path not in open_paths:
                responses["401"] = _answer("missing or wrong X-API-Key header")
                op["security"] = [{"ApiKey": []}]
    if api_key:
        components["securitySchemes"] = {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
    for path, fields in levels.items():
        props = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
        for name, values in fields.items():
            props[name]["enum"] = list(values)
    if categories is not None and "Filters" in components["schemas"]:
        components["schemas"]["Filters"]["properties"]["category"] = {
            "anyOf": [{"type": "string", "enum": list(categories)}, {"type": "null"}], "default": None,
            "description": "a catalogue category"}
    return spec
