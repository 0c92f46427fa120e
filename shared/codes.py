"""Every stable machine-readable code ingestd answers with: the one home of these strings.

An HTTP error body is ``{"code", "message", "pointer"?}``; a receipt's or a sync
issue's entry carries a ``code`` too. Clients branch on these values, so a value
never changes once released. ``tests/unit/test_codes.py`` holds the README's two
code tables to exactly :data:`API_ERRORS` and :data:`ISSUES`.
"""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    # -- request bodies and parameters (400)
    INVALID_JSON = "invalid_json"
    BODY_NOT_OBJECT = "body_not_object"
    BODY_NOT_ARRAY = "body_not_array"
    INVALID_XML = "invalid_xml"
    XML_FORBIDDEN = "xml_forbidden"
    XML_MIXED_CONTENT = "xml_mixed_content"
    XML_TOO_DEEP = "xml_too_deep"
    XML_DUPLICATE_PROPERTY = "xml_duplicate_property"
    INVALID_PARAMETER = "invalid_parameter"
    INVALID_CURSOR = "invalid_cursor"
    INVALID_CHARACTER = "invalid_character"
    NUMBER_OUT_OF_RANGE = "number_out_of_range"
    DUPLICATE_KEY = "duplicate_key"
    INVALID_IDEMPOTENCY_KEY = "invalid_idempotency_key"
    TOO_MANY_ITEMS = "too_many_items"
    # -- integration data (400)
    INVALID_VENDOR_ID = "invalid_vendor_id"
    INVALID_INTEGRATION_DATA = "invalid_integration_data"
    # -- registry input (400)
    INVALID_PREFIX = "invalid_prefix"
    INVALID_TABLE = "invalid_table"
    INVALID_NAME = "invalid_name"
    INVALID_TITLE = "invalid_title"
    INVALID_SCHEMA_GROUP = "invalid_schema_group"
    # -- schema rules (400)
    SCHEMA_NOT_OBJECT = "schema_not_object"
    SCHEMA_ROOT_NOT_OBJECT = "schema_root_not_object"
    UNSUPPORTED_DRAFT = "unsupported_draft"
    INVALID_SCHEMA = "invalid_schema"
    MISSING_RESMO = "missing_resmo"
    INVALID_RESMO = "invalid_resmo"
    MISSING_RESMO_ID = "missing_resmo_id"
    INVALID_RESMO_PATH = "invalid_resmo_path"
    RESMO_PATH_NOT_SINGULAR = "resmo_path_not_singular"
    # -- pull sources (400)
    INVALID_SOURCE_SPEC = "invalid_source_spec"
    INVALID_SOURCE_PARAMS = "invalid_source_params"
    INVALID_SOURCE = "invalid_source"
    # -- webhooks (400)
    INVALID_WEBHOOK = "invalid_webhook"
    INVALID_WEBHOOK_URL = "invalid_webhook_url"
    WEBHOOK_URL_PRIVATE = "webhook_url_private"
    # -- authentication (401)
    UNAUTHORIZED = "unauthorized"
    MISSING_INGEST_KEY = "missing_ingest_key"
    INVALID_INGEST_KEY = "invalid_ingest_key"
    # -- not found (404)
    NOT_FOUND = "not_found"
    TABLE_NOT_FOUND = "table_not_found"
    SCHEMA_GROUP_NOT_FOUND = "schema_group_not_found"
    SCHEMA_NOT_FOUND = "schema_not_found"
    INTEGRATION_NOT_FOUND = "integration_not_found"
    KEY_NOT_FOUND = "key_not_found"
    EVENT_NOT_FOUND = "event_not_found"
    RESOURCE_TYPE_NOT_FOUND = "resource_type_not_found"
    RESOURCE_NOT_FOUND = "resource_not_found"
    SESSION_NOT_FOUND = "session_not_found"
    SOURCE_SPEC_NOT_FOUND = "source_spec_not_found"
    SOURCE_NOT_FOUND = "source_not_found"
    RUN_NOT_FOUND = "run_not_found"
    INTEGRATION_DATA_NOT_FOUND = "integration_data_not_found"
    WEBHOOK_NOT_FOUND = "webhook_not_found"
    # -- method (405), other HTTP errors aiohttp raises, and defects (500)
    METHOD_NOT_ALLOWED = "method_not_allowed"
    HTTP_ERROR = "http_error"
    INTERNAL_ERROR = "internal_error"
    # -- snapshot sessions (409)
    PART_CONFLICT = "part_conflict"
    FINAL_CONFLICT = "final_conflict"
    PART_AFTER_FINAL = "part_after_final"
    SESSION_CLOSED = "session_closed"
    SESSION_ABORTED = "session_aborted"
    SESSION_CONFLICT = "session_conflict"
    SESSION_SUPERSEDED = "session_superseded"
    # -- registry conflicts (409)
    DUPLICATE_NAME = "duplicate_name"
    DUPLICATE_PREFIX = "duplicate_prefix"
    DUPLICATE_TABLE = "duplicate_table"
    DUPLICATE_RESOURCE_TYPE = "duplicate_resource_type"
    DUPLICATE_TITLE = "duplicate_title"
    AMBIGUOUS_TITLE = "ambiguous_title"
    INCOMPATIBLE_SCHEMA = "incompatible_schema"
    # -- pull source conflicts (409)
    SPEC_IN_USE = "spec_in_use"
    RUN_IN_PROGRESS = "run_in_progress"
    RUN_FINISHED = "run_finished"
    # -- replay conflicts (409)
    ALREADY_REPLAYED = "already_replayed"
    NOT_REPLAYABLE = "not_replayable"
    # -- field ownership (409 from a PATCH; an issue of a synced record too)
    FIELD_NOT_OWNED = "field_not_owned"
    # -- integration data conflicts (409) and preconditions (412)
    VENDOR_MISMATCH = "vendor_mismatch"
    DUPLICATE_VENDOR_ID = "duplicate_vendor_id"
    PRECONDITION_FAILED = "precondition_failed"
    # -- an Idempotency-Key sent again with another request (422)
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    # -- a remote API's answers (502 from a preview; a source run's ``error.code``)
    SOURCE_HTTP_ERROR = "source_http_error"
    SOURCE_UNAVAILABLE = "source_unavailable"
    INVALID_RESPONSE = "invalid_response"
    REDIRECT_REFUSED = "redirect_refused"
    CONTENT_PATH_NOT_FOUND = "content_path_not_found"
    PAGINATION_LOOP = "pagination_loop"
    MAX_REQUESTS_REACHED = "max_requests_reached"
    RUN_ABANDONED = "run_abandoned"
    # -- limits and availability
    BODY_TOO_LARGE = "body_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    BACKLOG_FULL = "backlog_full"
    UNAVAILABLE = "unavailable"
    UNHEALTHY = "unhealthy"
    # -- issues in receipts and sync_issues
    SCHEMA_VIOLATION = "schema_violation"
    UNKNOWN_FIELD = "unknown_field"
    MISSING_FIELD = "missing_field"
    MISSING_ID = "missing_id"
    INVALID_ID = "invalid_id"
    DUPLICATE_ID = "duplicate_id"
    NOT_AN_OBJECT = "not_an_object"
    TOO_DEEP = "too_deep"
    PATTERN_TOO_COSTLY = "pattern_too_costly"
    DELETIONS_SKIPPED = "deletions_skipped"
    SNAPSHOT_SUPERSEDED = "snapshot_superseded"
    SESSION_EXPIRED = "session_expired"
    SESSION_MISSING = "session_missing"
    UNPROCESSABLE = "unprocessable"
    ID_CHANGED = "id_changed"
    INVALID_FORMAT = "invalid_format"
    SKIPPED_MISSING_REQUIRED = "skipped_missing_required"


C = Code
_ISSUES_ONLY = frozenset(
    {
        C.SCHEMA_VIOLATION,
        C.UNKNOWN_FIELD,
        C.MISSING_FIELD,
        C.MISSING_ID,
        C.INVALID_ID,
        C.DUPLICATE_ID,
        C.NOT_AN_OBJECT,
        C.TOO_DEEP,
        C.PATTERN_TOO_COSTLY,
        C.DELETIONS_SKIPPED,
        C.SNAPSHOT_SUPERSEDED,
        C.SESSION_EXPIRED,
        C.SESSION_MISSING,
        C.UNPROCESSABLE,
        C.ID_CHANGED,
        C.INVALID_FORMAT,
        C.SKIPPED_MISSING_REQUIRED,
    }
)
#: codes of HTTP error bodies (the README's "Error codes" table)
API_ERRORS: frozenset[Code] = frozenset(Code) - _ISSUES_ONLY
#: codes of issues in receipts and ``sync_issues`` (the README's list below that table):
#: those above, and a few an HTTP answer uses too
ISSUES: frozenset[Code] = _ISSUES_ONLY | {
    C.INVALID_JSON,
    C.INVALID_CHARACTER,
    C.NUMBER_OUT_OF_RANGE,
    C.DUPLICATE_KEY,
    C.TABLE_NOT_FOUND,
    C.SESSION_SUPERSEDED,
    C.SESSION_ABORTED,
    C.FIELD_NOT_OWNED,
    C.RESOURCE_NOT_FOUND,
}


class Advice(StrEnum):
    """Codes of the ``warnings`` a schema create/update answer carries (the README's
    "Schema warnings" list): the schema is accepted, but it lacks what seed 003 advises."""

    OBJECT_WITHOUT_PROPERTIES = "object_without_properties"
    ARRAY_WITHOUT_ITEMS = "array_without_items"
    UNDESCRIBED_ATTRIBUTE = "undescribed_attribute"
