"""Service Quotas: the EC2 vCPU quotas, which moto's Service Quotas lacks (moto 5.2.5 knows only VPC quotas).

Codes, names and default values are the EC2 User Guide's: "On-Demand Instance quotas" (every family 0 vCPUs
but Standard, 5) and "Spot Instance quotas" (the same). GetServiceQuota returns the applied value, which is the
default until an increase is approved; GetAWSDefaultServiceQuota returns the default (Service Quotas API
Reference, "GetServiceQuota", "GetAWSDefaultServiceQuota"). An approved increase is set through the control API
(`POST /_sortie/quotas {"ec2/L-DB2E81BA": 8}`); it holds in every region, and /moto-api/reset forgets it.
Other services keep moto's behaviour.
"""

from __future__ import annotations

import json
import threading
from typing import Any

EC2_SERVICE_NAME = "Amazon Elastic Compute Cloud (Amazon EC2)"

# code -> (name, default vCPUs)
EC2_VCPU_QUOTAS: dict[str, tuple[str, float]] = {
    "L-1216C47A": ("Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances", 5.0),
    "L-6E869C2A": ("Running On-Demand DL instances", 0.0),
    "L-74FC7D96": ("Running On-Demand F instances", 0.0),
    "L-DB2E81BA": ("Running On-Demand G and VT instances", 0.0),
    "L-F7808C92": ("Running On-Demand HPC instances", 0.0),
    "L-43DA4232": ("Running On-Demand High Memory instances", 0.0),
    "L-1945791B": ("Running On-Demand Inf instances", 0.0),
    "L-417A185B": ("Running On-Demand P instances", 0.0),
    "L-2C3B7624": ("Running On-Demand Trn instances", 0.0),
    "L-7295265B": ("Running On-Demand X instances", 0.0),
    "L-34B43A08": ("All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests", 5.0),
    "L-85EED4F7": ("All DL Spot Instance Requests", 0.0),
    "L-88CF9481": ("All F Spot Instance Requests", 0.0),
    "L-3819A6DF": ("All G and VT Spot Instance Requests", 0.0),
    "L-B5D1601B": ("All Inf Spot Instance Requests", 0.0),
    "L-7212CCBC": ("All P Spot Instance Requests", 0.0),
    "L-6B0D517C": ("All Trn Spot Instance Requests", 0.0),
    "L-E3A00192": ("All X Spot Instance Requests", 0.0),
}

_lock = threading.Lock()
_applied: dict[str, float] = {}  # "ec2/L-..." -> approved value
_installed = False


def applied() -> dict[str, float]:
    with _lock:
        return dict(_applied)


def set_applied(values: dict[str, Any]) -> dict[str, float]:
    """Record approved increases; raises ValueError for a quota this endpoint does not model."""
    parsed = {}
    for key, value in values.items():
        service, _, code = key.partition("/")
        if service != "ec2" or code not in EC2_VCPU_QUOTAS:
            raise ValueError(f"unknown quota {key!r}: give ec2/<code> of an EC2 vCPU quota")
        parsed[key] = float(value)
    with _lock:
        _applied.update(parsed)
        return dict(_applied)


def reset() -> None:
    with _lock:
        _applied.clear()


def _quota(region: str, account: str, code: str, value: float) -> dict[str, Any]:
    name, _ = EC2_VCPU_QUOTAS[code]
    return {
        "ServiceCode": "ec2",
        "ServiceName": EC2_SERVICE_NAME,
        "QuotaArn": f"arn:aws:servicequotas:{region}:{account}:ec2/{code}",
        "QuotaCode": code,
        "QuotaName": name,
        "Value": value,
        "Unit": "None",
        "Adjustable": True,
        "GlobalQuota": False,
    }


def install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    from moto.servicequotas.exceptions import NoSuchResource
    from moto.servicequotas.models import ServiceQuotasBackend
    from moto.servicequotas.responses import ServiceQuotasResponse

    orig_get = ServiceQuotasBackend.get_service_quota

    def get_service_quota(self: Any, service_code: str, quota_code: str) -> dict[str, Any]:
        if service_code == "ec2" and quota_code in EC2_VCPU_QUOTAS:
            default = EC2_VCPU_QUOTAS[quota_code][1]
            value = applied().get(f"ec2/{quota_code}", default)
            return _quota(self.region_name, self.account_id, quota_code, value)
        return orig_get(self, service_code, quota_code)

    def get_aws_default_service_quota(self: Any, service_code: str, quota_code: str) -> dict[str, Any]:
        if service_code == "ec2" and quota_code in EC2_VCPU_QUOTAS:
            return _quota(self.region_name, "", quota_code, EC2_VCPU_QUOTAS[quota_code][1])
        raise NoSuchResource()

    def response_get_aws_default_service_quota(self: Any) -> str:
        params = json.loads(self.body)
        quota = self.backend.get_aws_default_service_quota(
            str(params.get("ServiceCode")), str(params.get("QuotaCode"))
        )
        return json.dumps({"Quota": quota})

    ServiceQuotasBackend.get_service_quota = get_service_quota  # type: ignore[method-assign]
    ServiceQuotasBackend.get_aws_default_service_quota = get_aws_default_service_quota  # type: ignore[attr-defined]
    ServiceQuotasResponse.get_aws_default_service_quota = response_get_aws_default_service_quota  # type: ignore[attr-defined]
