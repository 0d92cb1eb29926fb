"""The OpenAPI 3.1 document of ``xflow serve`` (``GET /openapi.json``; ``/docs`` renders it in the browser)."""

from __future__ import annotations

from typing import Any

from xflow import __version__

_ERROR = {"$ref": "#/components/schemas/Error"}
_TRACK = {"$ref": "#/components/schemas/Track"}


def _answer(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    if schema is None:
        return {"description": description}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    meaning = {400: "a mistake in the request (the message says which, as the CLI would)",
               401: "the token is missing or wrong (servers started with --token)",
               404: "no such workflow, event, stream, execution or route",
               413: "the body is over the transport's max_record_bytes",
               503: "a backend is unavailable for now (try again)"}
    return {str(code): _answer(meaning[code], _ERROR) for code in codes}


def _path_parameter(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": description}


WORKFLOW_ID = _path_parameter("workflow_id", "the workflow's id (its workflow_id:, or the file's name)")
EXECUTION_ID = _path_parameter("execution_id", "the execution's id")


def openapi_document(workflow_ids: list[str]) -> dict[str, Any]:
    """The document; ``workflow_ids`` (the served workflows) are listed as the example values of ``workflow_id``."""
    workflow_id = dict(WORKFLOW_ID, schema={"type": "string", "examples": workflow_ids} if workflow_ids else
                       {"type": "string"})
    data_body = {"required": True, "description": "the event's data: a JSON object (execution_id optional)",
                 "content": {"application/json": {"schema": {"type": "object"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "xflow serve", "version": __version__,
                 "description": "Publish events to, list and track executions of, and re-drive the workflows this "
                                "server serves. Errors are {\"error\", \"hint\"}. With a token, send "
                                "'Authorization: Bearer TOKEN' (every route but /ping)."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"],
                          "properties": {"error": {"type": "string"}, "hint": {"type": ["string", "null"]}}},
                "Track": {"type": "object", "description": "exactly what `xflow track -o json` prints",
                          "required": ["workflow_id", "execution_id", "status", "events", "last_unprocessed_event"],
                          "properties": {
                              "workflow_id": {"type": "string"}, "execution_id": {"type": "string"},
                              "status": {"enum": ["succeeded", "failed", "running", "unknown"]},
                              "events": {"type": "array", "items": {"type": "object"}},
                              "last_unprocessed_event": {"type": ["string", "null"]}}},
                "Execution": {"type": "object", "properties": {
                    "execution_id": {"type": "string"},
                    "status": {"enum": ["succeeded", "failed", "running", "unknown"]},
                    "started_at": {"type": "string", "format": "date-time"},
                    "updated_at": {"type": "string", "format": "date-time"},
                    "last_unprocessed_event": {"type": ["string", "null"]},
                    "failed_functions": {"type": "array", "items": {"type": "string"}}}},
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/ping": {"get": {"summary": "Health check (no token needed): xFlow's name and version", "security": [],
                              "responses": {"200": _answer("alive", {"type": "object", "properties": {
                                  "name": {"const": "xFlow"}, "version": {"type": "string"}}})}}},
            "/workflows": {"get": {"summary": "The served workflows",
                                   "responses": {"200": _answer("the workflows", {"type": "object"}), **_errors(401)}}},
            "/workflows/{workflow_id}": {"get": {
                "summary": "A workflow: functions, events (with streams, subscribers, publishers), plugins, graph",
                "parameters": [workflow_id],
                "responses": {"200": _answer("the workflow", {"type": "object"}), **_errors(401, 404)}}},
            "/workflows/{workflow_id}/graph.svg": {"get": {
                "summary": "The workflow's graph as SVG (events and functions; data-event/data-function attributes)",
                "parameters": [workflow_id],
                "responses": {"200": {"description": "SVG", "content": {"image/svg+xml": {}}}, **_errors(401, 404)}}},
            "/workflows/{workflow_id}/events/{event}": {"post": {
                "summary": "Publish an event (the checks and messages of `xflow publish`)",
                "parameters": [workflow_id, _path_parameter("event", "the event's name"),
                               {"name": "execution_id", "in": "query", "required": False, "schema": {"type": "string"},
                                "description": "the execution id (default: the data's execution_id, else a new one)"}],
                "requestBody": data_body,
                "responses": {"200": _answer("published", {"type": "object", "properties": {
                    "execution_id": {"type": "string"}}}), **_errors(400, 401, 404, 413, 503)}}},
            "/workflows/{workflow_id}/executions": {"get": {
                "summary": "Executions, most recently started first, paged",
                "parameters": [workflow_id,
                               {"name": "status", "in": "query", "schema": {
                                   "enum": ["failed", "running", "succeeded", "unknown"]}},
                               {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                           "maximum": 200, "default": 20}},
                               {"name": "cursor", "in": "query", "schema": {"type": "string"},
                                "description": "next_cursor of the previous page"}],
                "responses": {"200": _answer("a page", {"type": "object", "properties": {
                    "workflow_id": {"type": "string"}, "status": {"type": ["string", "null"]},
                    "executions": {"type": "array", "items": {"$ref": "#/components/schemas/Execution"}},
                    "next_cursor": {"type": ["string", "null"]}}}), **_errors(400, 401, 404, 503)}}},
            "/workflows/{workflow_id}/executions/{execution_id}": {"get": {
                "summary": "An execution's tracking summary (`xflow track -o json`)",
                "parameters": [workflow_id, EXECUTION_ID],
                "responses": {"200": _answer("the summary", _TRACK), **_errors(401, 404, 503)}}},
            "/workflows/{workflow_id}/executions/{execution_id}/redrive": {"post": {
                "summary": "Publish again the events that functions failed on for good (`xflow redrive -o json`)",
                "parameters": [workflow_id, EXECUTION_ID],
                "requestBody": {"required": False, "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"functions": {"type": "array", "items": {"type": "string"}}}}}}},
                "responses": {"200": _answer("what was re-driven", {"type": "object", "properties": {
                    "workflow_id": {"type": "string"}, "execution_id": {"type": "string"},
                    "redriven": {"type": "array", "items": {"type": "object"}}}}), **_errors(400, 401, 404, 503)}}},
            "/publish": {"post": {
                "summary": "xFlow's original publish: {\"stream\": event or stream name, \"event\": {execution_id, ...}}",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["stream", "event"],
                    "properties": {"stream": {"type": "string"}, "event": {"type": "object",
                                                                           "required": ["execution_id"]}}}}}},
                "responses": {"200": _answer("published", {"type": "object"}), **_errors(400, 401, 404, 413, 503)}}},
            "/track/workflows/{workflow_id}/executions/{execution_id}": {"get": {
                "summary": "xFlow's original track route: the tracking summary",
                "parameters": [workflow_id, EXECUTION_ID],
                "responses": {"200": _answer("the summary", _TRACK), **_errors(401, 404, 503)}}},
        },
    }
