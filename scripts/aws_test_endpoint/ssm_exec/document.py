"""The AWS-RunShellScript document: its content (schema 1.2), and its parameters as SendCommand validates them."""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import SSMError

DOCUMENT = "AWS-RunShellScript"
PLUGIN_NAME = "aws:runShellScript"
# AWS-RunShellScript's executionTimeout allowedPattern (validated by the SSM service)
EXEC_TIMEOUT_PATTERN = re.compile(
    r"^(([1-9][0-9]{0,4})|(1[0-6][0-9]{4})|(17[0-1][0-9]{3})|(172[0-7][0-9]{2})|(172800))$"
)
# "The content of the document must not exceed 64KB. This quota also includes the content specified for input
# parameters at runtime." (SSM API reference, CreateDocument, Content); SendCommand's error for it is
# MaxDocumentSizeExceeded. The document's own content is AWS-RunShellScript's, reconstructed here (schema 1.2);
# how AWS measures the parameters is not documented: their compact JSON, in UTF-8, is what is counted here.
DOCUMENT_LIMIT = 64 * 1024
RUN_SHELL_SCRIPT_CONTENT = json.dumps(
    {
        "schemaVersion": "1.2",
        "description": "Run a shell script or specify the commands to run.",
        "parameters": {
            "commands": {
                "type": "StringList",
                "description": "(Required) Specify a shell script or a command to run.",
                "minItems": 1,
                "displayType": "textarea",
            },
            "workingDirectory": {
                "type": "String",
                "default": "",
                "description": "(Optional) The path to the working directory on your instance.",
                "maxChars": 4096,
            },
            "executionTimeout": {
                "type": "String",
                "default": "3600",
                "description": "(Optional) The time in seconds for a command to complete before it is considered "
                "to have failed. Default is 3600 (1 hour). Maximum is 172800 (48 hours).",
                "allowedPattern": EXEC_TIMEOUT_PATTERN.pattern.strip("^$"),
            },
        },
        "runtimeConfig": {
            "aws:runShellScript": {
                "properties": [
                    {
                        "id": "0.aws:runShellScript",
                        "runCommand": "{{ commands }}",
                        "workingDirectory": "{{ workingDirectory }}",
                        "timeoutSeconds": "{{ executionTimeout }}",
                    }
                ]
            }
        },
    },
    indent=2,
)


ALLOWED_PARAMS = {"commands", "workingDirectory", "executionTimeout"}


def _validate_parameters(params: Any) -> dict[str, list[str]]:
    if not isinstance(params, dict):
        raise SSMError("InvalidParameters", "Parameters must be a map of parameter name to values")
    for name, values in params.items():
        if name not in ALLOWED_PARAMS:
            raise SSMError("InvalidParameters", f"Parameter {name!r} is not defined in the document {DOCUMENT}")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise SSMError("InvalidParameters", f"Parameter {name!r} must be a list of strings")
    if not params.get("commands"):
        raise SSMError("InvalidParameters", "Parameter 'commands' is required")
    for single in ("workingDirectory", "executionTimeout"):
        if len(params.get(single) or []) > 1:
            raise SSMError("InvalidParameters", f"Parameter {single!r} takes one value")
    size = len(RUN_SHELL_SCRIPT_CONTENT) + len(
        json.dumps(params, separators=(",", ":"), ensure_ascii=False).encode()
    )
    if size > DOCUMENT_LIMIT:
        raise SSMError("MaxDocumentSizeExceeded", "The size limit of a document is 64 KB.")
    et = (params.get("executionTimeout") or [None])[0]
    if et is not None and not EXEC_TIMEOUT_PATTERN.match(et):
        raise SSMError(
            "InvalidParameters",
            f"Parameter \"executionTimeout\" \"{et}\" failed to satisfy constraint: must be 1..172800",
        )
    return params


def _document_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise SSMError("ValidationException", "DocumentName is required")
    short = name.rsplit("document/", 1)[-1] if name.startswith("arn:") else name
    if short != DOCUMENT:
        raise SSMError(
            "InvalidDocument",
            f"Document {name} is not supported by the sortie test endpoint (only {DOCUMENT} runs)",
        )
    return name
