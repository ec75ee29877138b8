"""docs/IAM.md's policies, linted with parliament (its bundled copy of the Service Authorization Reference):
every action exists, every resource ARN fits a resource type the action takes, and every condition key is one
the action documents. Findings parliament gets wrong are listed with the reason, and nothing else may appear.
What a linter cannot see (which requests sortie makes) is checked by tests/aws_iam.rs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import parliament
import pytest

DOC = Path(__file__).resolve().parents[3] / "docs" / "IAM.md"
FILL = {"ACCOUNT": "123456789012", "REGION": "us-east-1", "BUCKET": "sortie-state", "ROLE": "sortie-ssm",
        "KEY-ID": "1234abcd-12ab-34cd-56ef-1234567890ab"}

# (issue, action): why each accepted finding is parliament's mistake, not the policy's. A finding is accepted
# only when every action it names is listed here for its issue.
ACCEPTED = {
    # AWS-owned documents have no account in their ARN (arn:aws:ssm:REGION::document/AWS-RunShellScript, as in
    # the Systems Manager User Guide); parliament's pattern arn:*:ssm:*:*:document/* wants a non-empty account.
    ("RESOURCE_MISMATCH", "ssm:SendCommand"),
    # Likewise AWS's public parameters (arn:aws:ssm:REGION::parameter/aws/service/...).
    ("RESOURCE_MISMATCH", "ssm:GetParameter"),
    # RunInstances is authorized per resource, and the policy splits its resources over two statements
    # (CreateTagged: the instance and volume, with the tag condition; RunInstancesInputs: image, subnet,
    # interface, security group), as the EC2 User Guide's examples do. parliament judges each statement alone.
    ("RESOURCE_MISMATCH", "ec2:RunInstances"),
}


def _policies() -> list[tuple[str, dict]]:
    """Each JSON block of docs/IAM.md as a policy (a bare statement list becomes a policy)."""
    text = DOC.read_text()
    out = []
    for i, block in enumerate(re.findall(r"```json\n(.*?)```", text, re.S)):
        for k, v in FILL.items():
            block = block.replace(k, v)
        doc = json.loads(block)
        if isinstance(doc, list):
            doc = {"Version": "2012-10-17", "Statement": doc}
        elif "Statement" not in doc:
            doc = {"Version": "2012-10-17", "Statement": [doc]}
        out.append((f"block {i + 1}", doc))
    return out


def _identity_policies() -> list[tuple[str, dict]]:
    """The blocks parliament can judge: identity policies (a trust policy names a Principal instead)."""
    return [(n, d) for n, d in _policies() if not any("Principal" in st for st in d["Statement"])]


def test_int_iam_trust_policy_admits_only_the_repository_through_github_oidc():
    trusts = [d for _, d in _policies() if any("Principal" in st for st in d["Statement"])]
    assert len(trusts) == 1, trusts
    (st,) = trusts[0]["Statement"]
    assert st["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert st["Principal"]["Federated"].endswith(":oidc-provider/token.actions.githubusercontent.com")
    assert st["Condition"]["StringEquals"] == {"token.actions.githubusercontent.com:aud": "sts.amazonaws.com"}
    assert st["Condition"]["StringLike"]["token.actions.githubusercontent.com:sub"].startswith("repo:")


def _findings(policy: dict) -> list[tuple[str, str]]:
    analyzed = parliament.analyze_policy_string(json.dumps(policy))
    return [(f.issue, json.dumps(f.detail, sort_keys=True)) for f in analyzed.findings]


def _accepted(issue: str, detail: str) -> bool:
    actions = set(re.findall(r'"action": "([^"]+)"', detail)) or set(re.findall(r"for action (\S+)", detail))
    return bool(actions) and all((issue, a) in ACCEPTED for a in actions)


def test_int_iam_doc_has_the_orchestrator_and_instance_policies():
    assert len(_policies()) >= 3


@pytest.mark.parametrize("name,policy", _identity_policies(), ids=[n for n, _ in _identity_policies()])
def test_int_iam_policy_lints_clean(name: str, policy: dict):
    unexpected = [(issue, detail) for issue, detail in _findings(policy) if not _accepted(issue, detail)]
    assert unexpected == [], f"docs/IAM.md {name}: {unexpected}"


def test_int_iam_linter_catches_the_old_mistakes():
    # The linter must see what the policy once got wrong, or a clean lint proves little.
    old = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": ["ssm:SendCommand", "ssm:CancelCommand"],
        "Resource": ["arn:aws:ssm:us-east-1::document/AWS-RunShellScript",
                     "arn:aws:ec2:us-east-1:123456789012:instance/*"],
        "Condition": {"StringLike": {"ssm:resourceTag/sortie:plan": "*"}}}]}
    issues = _findings(old)
    assert any(i == "UNKNOWN_CONDITION_FOR_ACTION" and "ssm:CancelCommand" in d for i, d in issues), issues
    assert any(i == "RESOURCE_MISMATCH" and "ssm:CancelCommand" in d for i, d in issues), issues
