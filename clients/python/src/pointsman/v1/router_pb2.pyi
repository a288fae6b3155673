from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HealthState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEALTH_STATE_UNSPECIFIED: _ClassVar[HealthState]
    HEALTH_STATE_HEALTHY: _ClassVar[HealthState]
    HEALTH_STATE_DEGRADED: _ClassVar[HealthState]
    HEALTH_STATE_COOLING_DOWN: _ClassVar[HealthState]
    HEALTH_STATE_PROBING: _ClassVar[HealthState]

class ExclusionReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXCLUSION_REASON_UNSPECIFIED: _ClassVar[ExclusionReason]
    EXCLUSION_REASON_CONTEXT_WINDOW: _ClassVar[ExclusionReason]
    EXCLUSION_REASON_BUDGET: _ClassVar[ExclusionReason]
    EXCLUSION_REASON_MIN_QUALITY: _ClassVar[ExclusionReason]
    EXCLUSION_REASON_MODEL_NOT_ALLOWED: _ClassVar[ExclusionReason]
    EXCLUSION_REASON_PROVIDER_NOT_ALLOWED: _ClassVar[ExclusionReason]
    EXCLUSION_REASON_NOT_COVERED: _ClassVar[ExclusionReason]
    EXCLUSION_REASON_BELOW_CUTOFF: _ClassVar[ExclusionReason]
    EXCLUSION_REASON_OUT_OF_DOMAIN: _ClassVar[ExclusionReason]
    EXCLUSION_REASON_UNHEALTHY: _ClassVar[ExclusionReason]
    EXCLUSION_REASON_PROVIDER_PREFERENCES: _ClassVar[ExclusionReason]
    EXCLUSION_REASON_CAPABILITY: _ClassVar[ExclusionReason]
    EXCLUSION_REASON_MAX_LATENCY: _ClassVar[ExclusionReason]

class SessionVerdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SESSION_VERDICT_UNSPECIFIED: _ClassVar[SessionVerdict]
    SESSION_VERDICT_NEW: _ClassVar[SessionVerdict]
    SESSION_VERDICT_KEPT: _ClassVar[SessionVerdict]
    SESSION_VERDICT_MOVED: _ClassVar[SessionVerdict]

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_SUCCESS: _ClassVar[Outcome]
    OUTCOME_TIMEOUT: _ClassVar[Outcome]
    OUTCOME_RATE_LIMITED: _ClassVar[Outcome]
    OUTCOME_SERVER_ERROR: _ClassVar[Outcome]
    OUTCOME_REFUSED: _ClassVar[Outcome]
HEALTH_STATE_UNSPECIFIED: HealthState
HEALTH_STATE_HEALTHY: HealthState
HEALTH_STATE_DEGRADED: HealthState
HEALTH_STATE_COOLING_DOWN: HealthState
HEALTH_STATE_PROBING: HealthState
EXCLUSION_REASON_UNSPECIFIED: ExclusionReason
EXCLUSION_REASON_CONTEXT_WINDOW: ExclusionReason
EXCLUSION_REASON_BUDGET: ExclusionReason
EXCLUSION_REASON_MIN_QUALITY: ExclusionReason
EXCLUSION_REASON_MODEL_NOT_ALLOWED: ExclusionReason
EXCLUSION_REASON_PROVIDER_NOT_ALLOWED: ExclusionReason
EXCLUSION_REASON_NOT_COVERED: ExclusionReason
EXCLUSION_REASON_BELOW_CUTOFF: ExclusionReason
EXCLUSION_REASON_OUT_OF_DOMAIN: ExclusionReason
EXCLUSION_REASON_UNHEALTHY: ExclusionReason
EXCLUSION_REASON_PROVIDER_PREFERENCES: ExclusionReason
EXCLUSION_REASON_CAPABILITY: ExclusionReason
EXCLUSION_REASON_MAX_LATENCY: ExclusionReason
SESSION_VERDICT_UNSPECIFIED: SessionVerdict
SESSION_VERDICT_NEW: SessionVerdict
SESSION_VERDICT_KEPT: SessionVerdict
SESSION_VERDICT_MOVED: SessionVerdict
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_SUCCESS: Outcome
OUTCOME_TIMEOUT: Outcome
OUTCOME_RATE_LIMITED: Outcome
OUTCOME_SERVER_ERROR: Outcome
OUTCOME_REFUSED: Outcome

class Message(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class Requirements(_message.Message):
    __slots__ = ("tools", "images", "audio", "files", "json_schema", "reasoning_effort", "max_output_tokens")
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    REASONING_EFFORT_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    tools: bool
    images: bool
    audio: bool
    files: bool
    json_schema: bool
    reasoning_effort: str
    max_output_tokens: int
    def __init__(self, tools: _Optional[bool] = ..., images: _Optional[bool] = ..., audio: _Optional[bool] = ..., files: _Optional[bool] = ..., json_schema: _Optional[bool] = ..., reasoning_effort: _Optional[str] = ..., max_output_tokens: _Optional[int] = ...) -> None: ...

class Percentiles(_message.Message):
    __slots__ = ("p50", "p75", "p90", "p99")
    P50_FIELD_NUMBER: _ClassVar[int]
    P75_FIELD_NUMBER: _ClassVar[int]
    P90_FIELD_NUMBER: _ClassVar[int]
    P99_FIELD_NUMBER: _ClassVar[int]
    p50: float
    p75: float
    p90: float
    p99: float
    def __init__(self, p50: _Optional[float] = ..., p75: _Optional[float] = ..., p90: _Optional[float] = ..., p99: _Optional[float] = ...) -> None: ...

class MaxPrice(_message.Message):
    __slots__ = ("prompt", "completion")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    prompt: float
    completion: float
    def __init__(self, prompt: _Optional[float] = ..., completion: _Optional[float] = ...) -> None: ...

class ProviderPreferences(_message.Message):
    __slots__ = ("order", "only", "ignore", "allow_fallbacks", "sort", "partition", "max_price", "quantizations", "data_collection", "zdr", "require_parameters", "preferred_max_latency", "preferred_min_throughput")
    ORDER_FIELD_NUMBER: _ClassVar[int]
    ONLY_FIELD_NUMBER: _ClassVar[int]
    IGNORE_FIELD_NUMBER: _ClassVar[int]
    ALLOW_FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    SORT_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    MAX_PRICE_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATIONS_FIELD_NUMBER: _ClassVar[int]
    DATA_COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ZDR_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_MAX_LATENCY_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_MIN_THROUGHPUT_FIELD_NUMBER: _ClassVar[int]
    order: _containers.RepeatedScalarFieldContainer[str]
    only: _containers.RepeatedScalarFieldContainer[str]
    ignore: _containers.RepeatedScalarFieldContainer[str]
    allow_fallbacks: bool
    sort: str
    partition: str
    max_price: MaxPrice
    quantizations: _containers.RepeatedScalarFieldContainer[str]
    data_collection: str
    zdr: bool
    require_parameters: bool
    preferred_max_latency: Percentiles
    preferred_min_throughput: Percentiles
    def __init__(self, order: _Optional[_Iterable[str]] = ..., only: _Optional[_Iterable[str]] = ..., ignore: _Optional[_Iterable[str]] = ..., allow_fallbacks: _Optional[bool] = ..., sort: _Optional[str] = ..., partition: _Optional[str] = ..., max_price: _Optional[_Union[MaxPrice, _Mapping]] = ..., quantizations: _Optional[_Iterable[str]] = ..., data_collection: _Optional[str] = ..., zdr: _Optional[bool] = ..., require_parameters: _Optional[bool] = ..., preferred_max_latency: _Optional[_Union[Percentiles, _Mapping]] = ..., preferred_min_throughput: _Optional[_Union[Percentiles, _Mapping]] = ...) -> None: ...

class RouteRequest(_message.Message):
    __slots__ = ("request_id", "messages", "prompt", "profile", "cost_weight", "max_cost_usd", "min_quality", "allowed_models", "denied_models", "allowed_providers", "denied_providers", "max_fallbacks", "explain", "requirements", "provider", "max_latency", "explore", "session")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    COST_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    MAX_COST_USD_FIELD_NUMBER: _ClassVar[int]
    MIN_QUALITY_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_MODELS_FIELD_NUMBER: _ClassVar[int]
    DENIED_MODELS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    DENIED_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    MAX_FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    REQUIREMENTS_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MAX_LATENCY_FIELD_NUMBER: _ClassVar[int]
    EXPLORE_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    prompt: str
    profile: str
    cost_weight: float
    max_cost_usd: float
    min_quality: float
    allowed_models: _containers.RepeatedScalarFieldContainer[str]
    denied_models: _containers.RepeatedScalarFieldContainer[str]
    allowed_providers: _containers.RepeatedScalarFieldContainer[str]
    denied_providers: _containers.RepeatedScalarFieldContainer[str]
    max_fallbacks: int
    explain: bool
    requirements: Requirements
    provider: ProviderPreferences
    max_latency: LatencyLimit
    explore: bool
    session: Session
    def __init__(self, request_id: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., prompt: _Optional[str] = ..., profile: _Optional[str] = ..., cost_weight: _Optional[float] = ..., max_cost_usd: _Optional[float] = ..., min_quality: _Optional[float] = ..., allowed_models: _Optional[_Iterable[str]] = ..., denied_models: _Optional[_Iterable[str]] = ..., allowed_providers: _Optional[_Iterable[str]] = ..., denied_providers: _Optional[_Iterable[str]] = ..., max_fallbacks: _Optional[int] = ..., explain: _Optional[bool] = ..., requirements: _Optional[_Union[Requirements, _Mapping]] = ..., provider: _Optional[_Union[ProviderPreferences, _Mapping]] = ..., max_latency: _Optional[_Union[LatencyLimit, _Mapping]] = ..., explore: _Optional[bool] = ..., session: _Optional[_Union[Session, _Mapping]] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("id", "user", "conversation", "escalate_only")
    ID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    ESCALATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    id: str
    user: str
    conversation: str
    escalate_only: bool
    def __init__(self, id: _Optional[str] = ..., user: _Optional[str] = ..., conversation: _Optional[str] = ..., escalate_only: _Optional[bool] = ...) -> None: ...

class LatencyLimit(_message.Message):
    __slots__ = ("ms", "percentile")
    MS_FIELD_NUMBER: _ClassVar[int]
    PERCENTILE_FIELD_NUMBER: _ClassVar[int]
    ms: float
    percentile: str
    def __init__(self, ms: _Optional[float] = ..., percentile: _Optional[str] = ...) -> None: ...

class EndpointMeasurements(_message.Message):
    __slots__ = ("state", "window_requests", "error_rate", "rate_limited_rate", "measured_requests", "latency_ms", "ttft_ms", "tokens_per_second", "consecutive_failures", "cool_down_remaining_s")
    STATE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMITED_RATE_FIELD_NUMBER: _ClassVar[int]
    MEASURED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    COOL_DOWN_REMAINING_S_FIELD_NUMBER: _ClassVar[int]
    state: HealthState
    window_requests: int
    error_rate: float
    rate_limited_rate: float
    measured_requests: int
    latency_ms: Percentiles
    ttft_ms: Percentiles
    tokens_per_second: Percentiles
    consecutive_failures: int
    cool_down_remaining_s: float
    def __init__(self, state: _Optional[_Union[HealthState, str]] = ..., window_requests: _Optional[int] = ..., error_rate: _Optional[float] = ..., rate_limited_rate: _Optional[float] = ..., measured_requests: _Optional[int] = ..., latency_ms: _Optional[_Union[Percentiles, _Mapping]] = ..., ttft_ms: _Optional[_Union[Percentiles, _Mapping]] = ..., tokens_per_second: _Optional[_Union[Percentiles, _Mapping]] = ..., consecutive_failures: _Optional[int] = ..., cool_down_remaining_s: _Optional[float] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("provider", "input_usd_per_mtok", "output_usd_per_mtok", "cached_input_usd_per_mtok", "context_tokens", "max_output_tokens", "quantization", "predicted_cost_usd", "predicted_latency_ms", "measured", "latency_measured")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    INPUT_USD_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_USD_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_USD_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_COST_USD_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    MEASURED_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MEASURED_FIELD_NUMBER: _ClassVar[int]
    provider: str
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    cached_input_usd_per_mtok: float
    context_tokens: int
    max_output_tokens: int
    quantization: str
    predicted_cost_usd: float
    predicted_latency_ms: float
    measured: EndpointMeasurements
    latency_measured: bool
    def __init__(self, provider: _Optional[str] = ..., input_usd_per_mtok: _Optional[float] = ..., output_usd_per_mtok: _Optional[float] = ..., cached_input_usd_per_mtok: _Optional[float] = ..., context_tokens: _Optional[int] = ..., max_output_tokens: _Optional[int] = ..., quantization: _Optional[str] = ..., predicted_cost_usd: _Optional[float] = ..., predicted_latency_ms: _Optional[float] = ..., measured: _Optional[_Union[EndpointMeasurements, _Mapping]] = ..., latency_measured: _Optional[bool] = ...) -> None: ...

class Attempt(_message.Message):
    __slots__ = ("model", "provider")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    model: str
    provider: str
    def __init__(self, model: _Optional[str] = ..., provider: _Optional[str] = ...) -> None: ...

class EndpointExplanation(_message.Message):
    __slots__ = ("endpoint", "rank", "reason", "detail")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    endpoint: Endpoint
    rank: int
    reason: ExclusionReason
    detail: str
    def __init__(self, endpoint: _Optional[_Union[Endpoint, _Mapping]] = ..., rank: _Optional[int] = ..., reason: _Optional[_Union[ExclusionReason, str]] = ..., detail: _Optional[str] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("model", "provider", "predicted_quality", "predicted_output_tokens", "predicted_cost_usd", "utility", "predicted_latency_ms", "health", "endpoints", "latency_measured")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_QUALITY_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_COST_USD_FIELD_NUMBER: _ClassVar[int]
    UTILITY_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MEASURED_FIELD_NUMBER: _ClassVar[int]
    model: str
    provider: str
    predicted_quality: float
    predicted_output_tokens: int
    predicted_cost_usd: float
    utility: float
    predicted_latency_ms: float
    health: HealthState
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    latency_measured: bool
    def __init__(self, model: _Optional[str] = ..., provider: _Optional[str] = ..., predicted_quality: _Optional[float] = ..., predicted_output_tokens: _Optional[int] = ..., predicted_cost_usd: _Optional[float] = ..., utility: _Optional[float] = ..., predicted_latency_ms: _Optional[float] = ..., health: _Optional[_Union[HealthState, str]] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., latency_measured: _Optional[bool] = ...) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("candidate", "rank", "reason", "detail", "kept_despite", "endpoints")
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    KEPT_DESPITE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    candidate: Candidate
    rank: int
    reason: ExclusionReason
    detail: str
    kept_despite: ExclusionReason
    endpoints: _containers.RepeatedCompositeFieldContainer[EndpointExplanation]
    def __init__(self, candidate: _Optional[_Union[Candidate, _Mapping]] = ..., rank: _Optional[int] = ..., reason: _Optional[_Union[ExclusionReason, str]] = ..., detail: _Optional[str] = ..., kept_despite: _Optional[_Union[ExclusionReason, str]] = ..., endpoints: _Optional[_Iterable[_Union[EndpointExplanation, _Mapping]]] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("prepare_us", "encode_us", "predict_us", "rank_us", "total_us", "cache_hit")
    PREPARE_US_FIELD_NUMBER: _ClassVar[int]
    ENCODE_US_FIELD_NUMBER: _ClassVar[int]
    PREDICT_US_FIELD_NUMBER: _ClassVar[int]
    RANK_US_FIELD_NUMBER: _ClassVar[int]
    TOTAL_US_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    prepare_us: int
    encode_us: int
    predict_us: int
    rank_us: int
    total_us: int
    cache_hit: bool
    def __init__(self, prepare_us: _Optional[int] = ..., encode_us: _Optional[int] = ..., predict_us: _Optional[int] = ..., rank_us: _Optional[int] = ..., total_us: _Optional[int] = ..., cache_hit: _Optional[bool] = ...) -> None: ...

class RouteResponse(_message.Message):
    __slots__ = ("request_id", "candidates", "router_version", "timings", "explanations", "cost_weight", "input_tokens", "profile", "attempts", "savings", "session", "propensity", "explored", "shadow")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    ROUTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    EXPLANATIONS_FIELD_NUMBER: _ClassVar[int]
    COST_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    SAVINGS_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    EXPLORED_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    router_version: str
    timings: Timings
    explanations: _containers.RepeatedCompositeFieldContainer[Explanation]
    cost_weight: float
    input_tokens: int
    profile: str
    attempts: _containers.RepeatedCompositeFieldContainer[Attempt]
    savings: Savings
    session: SessionDecision
    propensity: float
    explored: bool
    shadow: ShadowDecision
    def __init__(self, request_id: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., router_version: _Optional[str] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., explanations: _Optional[_Iterable[_Union[Explanation, _Mapping]]] = ..., cost_weight: _Optional[float] = ..., input_tokens: _Optional[int] = ..., profile: _Optional[str] = ..., attempts: _Optional[_Iterable[_Union[Attempt, _Mapping]]] = ..., savings: _Optional[_Union[Savings, _Mapping]] = ..., session: _Optional[_Union[SessionDecision, _Mapping]] = ..., propensity: _Optional[float] = ..., explored: _Optional[bool] = ..., shadow: _Optional[_Union[ShadowDecision, _Mapping]] = ...) -> None: ...

class ShadowDecision(_message.Message):
    __slots__ = ("head_id", "model", "predicted_quality", "predicted_cost_usd", "agrees")
    HEAD_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_QUALITY_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_COST_USD_FIELD_NUMBER: _ClassVar[int]
    AGREES_FIELD_NUMBER: _ClassVar[int]
    head_id: str
    model: str
    predicted_quality: float
    predicted_cost_usd: float
    agrees: bool
    def __init__(self, head_id: _Optional[str] = ..., model: _Optional[str] = ..., predicted_quality: _Optional[float] = ..., predicted_cost_usd: _Optional[float] = ..., agrees: _Optional[bool] = ...) -> None: ...

class SessionDecision(_message.Message):
    __slots__ = ("verdict", "reason", "detail", "previous_model", "previous_provider", "cached_saving_usd", "saving_utility", "utility_gain", "turn", "session_hash")
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_MODEL_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    CACHED_SAVING_USD_FIELD_NUMBER: _ClassVar[int]
    SAVING_UTILITY_FIELD_NUMBER: _ClassVar[int]
    UTILITY_GAIN_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    SESSION_HASH_FIELD_NUMBER: _ClassVar[int]
    verdict: SessionVerdict
    reason: str
    detail: str
    previous_model: str
    previous_provider: str
    cached_saving_usd: float
    saving_utility: float
    utility_gain: float
    turn: int
    session_hash: str
    def __init__(self, verdict: _Optional[_Union[SessionVerdict, str]] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ..., previous_model: _Optional[str] = ..., previous_provider: _Optional[str] = ..., cached_saving_usd: _Optional[float] = ..., saving_utility: _Optional[float] = ..., utility_gain: _Optional[float] = ..., turn: _Optional[int] = ..., session_hash: _Optional[str] = ...) -> None: ...

class Savings(_message.Message):
    __slots__ = ("baseline_model", "baseline_cost_usd", "baseline_quality", "predicted_cost_usd", "saving_usd")
    BASELINE_MODEL_FIELD_NUMBER: _ClassVar[int]
    BASELINE_COST_USD_FIELD_NUMBER: _ClassVar[int]
    BASELINE_QUALITY_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_COST_USD_FIELD_NUMBER: _ClassVar[int]
    SAVING_USD_FIELD_NUMBER: _ClassVar[int]
    baseline_model: str
    baseline_cost_usd: float
    baseline_quality: float
    predicted_cost_usd: float
    saving_usd: float
    def __init__(self, baseline_model: _Optional[str] = ..., baseline_cost_usd: _Optional[float] = ..., baseline_quality: _Optional[float] = ..., predicted_cost_usd: _Optional[float] = ..., saving_usd: _Optional[float] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model", "provider", "input_usd_per_mtok", "output_usd_per_mtok", "context_tokens", "covered_by_head", "health", "endpoints")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    INPUT_USD_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_USD_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COVERED_BY_HEAD_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    provider: str
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    context_tokens: int
    covered_by_head: bool
    health: ModelHealth
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    def __init__(self, model: _Optional[str] = ..., provider: _Optional[str] = ..., input_usd_per_mtok: _Optional[float] = ..., output_usd_per_mtok: _Optional[float] = ..., context_tokens: _Optional[int] = ..., covered_by_head: _Optional[bool] = ..., health: _Optional[_Union[ModelHealth, _Mapping]] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ...) -> None: ...

class ModelHealth(_message.Message):
    __slots__ = ("state", "window_requests", "error_rate", "p50_latency_ms", "consecutive_failures", "cool_down_remaining_s")
    STATE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    P50_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    COOL_DOWN_REMAINING_S_FIELD_NUMBER: _ClassVar[int]
    state: HealthState
    window_requests: int
    error_rate: float
    p50_latency_ms: float
    consecutive_failures: int
    cool_down_remaining_s: float
    def __init__(self, state: _Optional[_Union[HealthState, str]] = ..., window_requests: _Optional[int] = ..., error_rate: _Optional[float] = ..., p50_latency_ms: _Optional[float] = ..., consecutive_failures: _Optional[int] = ..., cool_down_remaining_s: _Optional[float] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("request_id", "model", "outcome", "latency_ms", "input_tokens", "output_tokens", "cost_usd", "quality", "provider", "ttft_ms", "generation_ms")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_MS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    outcome: Outcome
    latency_ms: float
    input_tokens: int
    output_tokens: int
    cost_usd: float
    quality: float
    provider: str
    ttft_ms: float
    generation_ms: float
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., latency_ms: _Optional[float] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., cost_usd: _Optional[float] = ..., quality: _Optional[float] = ..., provider: _Optional[str] = ..., ttft_ms: _Optional[float] = ..., generation_ms: _Optional[float] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("known_request", "health", "counted", "verified", "endpoint")
    KNOWN_REQUEST_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    COUNTED_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    known_request: bool
    health: ModelHealth
    counted: bool
    verified: bool
    endpoint: EndpointMeasurements
    def __init__(self, known_request: _Optional[bool] = ..., health: _Optional[_Union[ModelHealth, _Mapping]] = ..., counted: _Optional[bool] = ..., verified: _Optional[bool] = ..., endpoint: _Optional[_Union[EndpointMeasurements, _Mapping]] = ...) -> None: ...

class ReloadRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadResponse(_message.Message):
    __slots__ = ("router_version", "previous_version", "models", "load_ms")
    ROUTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    router_version: str
    previous_version: str
    models: int
    load_ms: float
    def __init__(self, router_version: _Optional[str] = ..., previous_version: _Optional[str] = ..., models: _Optional[int] = ..., load_ms: _Optional[float] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "router_version", "encoder", "profiles", "default_profile")
    class ProfilesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODELS_FIELD_NUMBER: _ClassVar[int]
    ROUTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    PROFILES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_PROFILE_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    router_version: str
    encoder: str
    profiles: _containers.ScalarMap[str, float]
    default_profile: str
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., router_version: _Optional[str] = ..., encoder: _Optional[str] = ..., profiles: _Optional[_Mapping[str, float]] = ..., default_profile: _Optional[str] = ...) -> None: ...
