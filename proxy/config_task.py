"""A classification task in the config: which requests, whose answers, what is promised."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskMatch(Strict):
    """A request belongs to the task when every given criterion holds."""

    model: str | None = None
    system_prompt_contains: str | None = None

    @model_validator(mode="after")
    def _needs_one(self) -> TaskMatch:
        if self.model is None and self.system_prompt_contains is None:
            raise ValueError("give `model`, `system_prompt_contains`, or both")
        return self


class TaskInput(Strict):
    """Which text of the conversation is the classifier's input."""

    message: Literal["last_user", "first_user", "all_user"] = "last_user"
    pattern: str | None = Field(
        default=None,
        description="optional regex; its first group (or whole match) is the input",
    )

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class TaskOutput(Strict):
    format: Literal["text", "json"] = "text"
    field: str | None = None

    @model_validator(mode="after")
    def _json_needs_field(self) -> TaskOutput:
        if self.format == "json" and not self.field:
            raise ValueError("`field` is required when format is json")
        return self


class TaskConfig(Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    match: TaskMatch
    teacher: str
    kind: Literal["classify", "tools"] = Field(
        default="classify",
        description="tools: requests carry `tools`, and the label is the teacher's tool choice",
    )
    mode: Literal["serve", "shadow"] = Field(
        default="serve",
        description="shadow: score every request, but let the teacher answer all of them",
    )
    narrow_to: str | None = Field(
        default=None,
        description="tools: the model_name that fills a call's arguments when only its "
        "tool is certain (default: the teacher)",
    )
    lanes: list[str] = Field(
        default_factory=list,
        description="cheaper LLMs (model_names) that may answer what the surrogate defers, "
        "each only in the clusters of inputs where it is certified",
    )
    prompt: str | None = Field(
        default=None,
        description="system prompt /v1/classify sends to the teacher; default: the matched text",
    )
    input: TaskInput = Field(default_factory=TaskInput)
    labels: list[str] | None = None
    output: TaskOutput = Field(default_factory=TaskOutput)
    target: float = Field(default=0.95, gt=0, lt=1)
    confidence: float = Field(default=0.95, gt=0, lt=1)
    min_coverage: float = Field(default=0.2, ge=0, le=1)
    horizon: int = Field(
        default=0,
        ge=0,
        description="0: target is promised on average; N: on the next N handled requests",
    )
    ood_quantile: float = Field(
        default=0.01,
        ge=0,
        lt=0.5,
        description="share of in-distribution inputs the out-of-distribution check may "
        "defer; higher defers more unseen topics at some cost in coverage; 0 disables it",
    )
    audit_rate: float = Field(
        default=0.02, ge=0, le=1, description="share of served traffic sampled, at least"
    )
    audit_boost: int = Field(
        default=1000,
        ge=0,
        description="while the task has few sampled traces, sample "
        "min(1, audit_boost / sampled traces so far) instead; 0: audit_rate only",
    )
    probation_boost: int = Field(
        default=40,
        ge=0,
        description="a newly served version samples min(1, probation_boost / (its audits + 1)) "
        "of its traffic for the teacher, so it proves itself within hours; 0: off",
    )
    embedder: str = Field(
        default="tfidf",
        description="tfidf, an encoder folder (model.onnx, tokenizer.json), hf:OWNER/NAME (an "
        "ONNX export on the Hugging Face hub), or tfidf+ either of them",
    )
    encoder_weight: float = Field(
        default=2.0, gt=0, description="scale of the encoder block when joined with TF-IDF"
    )

    @field_validator("labels")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("an empty label set would reject every answer")
            folded = [v.strip().lower() for v in value]
            if len(set(folded)) != len(folded):
                raise ValueError("labels must be distinct (compared without case)")
        return value
