"""SSM errors, in the JSON wire shape moto sends."""

from __future__ import annotations

from moto.core.exceptions import ServiceException


class SSMError(ServiceException):
    def __init__(self, code: str, message: str):
        super().__init__(code, message)


def _invalid_instance(ids: list[str], account_id: str) -> SSMError:
    listed = ", ".join(ids)
    return SSMError(
        "InvalidInstanceId",
        f"Instances [[{listed}]] not in a valid state for account {account_id}",
    )


def _no_invocation() -> SSMError:
    return SSMError(
        "InvocationDoesNotExist",
        "The command ID and managed node ID you specified didn't match any invocations.",
    )


def _invalid_command_id() -> SSMError:
    return SSMError("InvalidCommandId", "The specified command ID isn't valid.")
