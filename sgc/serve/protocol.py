"""The pydantic models of every request and response of `sgc serve`.

Native routes use SGLang's field names (`/generate`, `/get_model_info`, ...); the `/v1` routes use
OpenAI's. Sampling parameters stay a plain dict on the native route: `SamplingParams.from_dict`
validates them with messages naming the parameter (the same checks the in-process engine makes).
Request models ignore fields they do not know (as SGLang's and OpenAI's servers do) except where
a field would change the result and sgc cannot honour it: those are declared and refused with 400.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AbortRequest", "ChatCompletionRequest", "ChatCompletionResponse", "ChatMessage", "CompletionRequest",
    "CompletionResponse", "ErrorBody", "ErrorResponse", "GenerateReqInput", "GenerateResult", "ModelCard",
    "ModelInfo", "ModelList", "ProgramRunRequest", "ProgramRunResponse", "ScoreReqInput", "ScoreResult",
    "ServerInfo", "Usage",
]


class _Request(BaseModel):
    # strict: "yes" is not a bool and "8" is not an integer (JSON numbers still fill float fields)
    model_config = ConfigDict(extra="ignore", strict=True)


# -- errors -----------------------------------------------------------------------------------------
class ErrorBody(BaseModel):
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: int | str | None = None


class ErrorResponse(BaseModel):
    """Every error, on every route: OpenAI's shape (SGLang's `{"error": {"message"}}` is a subset)."""

    error: ErrorBody


# -- SGLang-native routes -----------------------------------------------------------------------------
class ModelInfo(BaseModel):
    model_path: str
    tokenizer_path: str | None
    is_generation: bool = True
    context_len: int
    vocab_size: int


class ServerInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    version: str
    model_path: str
    served_model_name: str
    context_len: int
    num_kv_slots: int
    max_running_requests: int
    schedule_policy: str
    max_queued_requests: int
    status: str


class GenerateReqInput(_Request):
    """SGLang's `POST /generate` body: `text` or `input_ids`, one prompt or a list (a batch)."""

    text: str | list[str] | None = None
    input_ids: list[int] | list[list[int]] | None = None
    sampling_params: dict[str, Any] | list[dict[str, Any]] | None = None
    return_logprob: bool | list[bool] = False
    logprob_start_len: int | list[int] = -1
    top_logprobs_num: int | list[int] = 0
    return_text_in_logprobs: bool = False
    stream: bool = False
    rid: str | list[str] | None = None
    # Declared so that a request asking for them is refused, not silently served without them.
    image_data: Any = None
    lora_path: Any = None
    token_ids_logprob: Any = None


class GenerateResult(BaseModel):
    """One prompt's result (a batch returns a JSON list of these)."""

    text: str
    output_ids: list[int]
    meta_info: dict[str, Any] = Field(description="id, prompt_tokens, completion_tokens, cached_tokens, "
                                                  "finish_reason, e2e_latency and the logprob lists")


class ScoreReqInput(_Request):
    """sgc's `POST /sgc/score`: the logprob of every token of each continuation after a prompt (what
    `select` uses), token ids in and out."""

    input_ids: list[int]
    continuations: list[list[int]] = Field(min_length=1)


class ScoreResult(BaseModel):
    logprobs: list[list[float]]
    meta_info: dict[str, Any]


class AbortRequest(_Request):
    rid: str = ""
    abort_all: bool = False


# -- OpenAI-compatible routes ------------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "sgc"
    root: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class StreamOptions(_Request):
    include_usage: bool = False


class JsonSchemaFormat(_Request):
    name: str = "schema"
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class _SamplingFields(_Request):
    """The sampling fields OpenAI's completions and chat share, plus SGLang/vLLM extensions."""

    model: str | None = None
    n: int = Field(default=1, ge=1, le=128)
    stop: str | list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    logit_bias: dict[str, float] | None = None
    # extensions (SGLang and vLLM accept these in the body; the openai client sends them via extra_body)
    top_k: int | None = None
    min_p: float | None = None
    min_tokens: int | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool | None = None
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool | None = None
    regex: str | None = None
    json_schema: str | dict[str, Any] | None = None
    response_format: ResponseFormat | None = None


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


class ContentPart(_Request):
    type: str
    text: str | None = None


class ChatMessage(_Request):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int] | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None
    matched_stop: int | str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None
    matched_stop: int | str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


# -- compiled programs -------------------------------------------------------------------------------
class ProgramRunRequest(_Request):
    """`POST /programs/{name}/run`: one function's arguments (`/run_batch`: a list of them)."""

    function: str | None = None
    arguments: dict[str, Any] = Field(default_factory=dict)
    batch: list[dict[str, Any]] | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False  # /run only: the state's text as SSE events, then the result


class ProgramRunResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    text: str | None = None
    variables: dict[str, Any] | None = None
    error: str | None = None
