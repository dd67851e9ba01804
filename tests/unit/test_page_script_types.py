"""cc-user.d.ts, checked by ``tsc`` against the vendor's published Workflow Elements types.

tests/typescript/ is a node project of its own (``make ts-deps``: ``npm ci`` from its lock) holding
``typescript`` and ``@aurigma/workflow-elements-types``; check.ts assigns what the declarations say
``ccSidecar.workflowElements()`` resolves to an ``IWorkflowElementIntegration`` and passes it to the
vendor's ``IWorkflowElement.init``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROJECT = REPO / "tests" / "typescript"
TSC = PROJECT / "node_modules" / ".bin" / "tsc"
DECLARATIONS = REPO / "proxy" / "static" / "cc-user.d.ts"

pytestmark = [
    pytest.mark.skipif(not TSC.exists(), reason="tests/typescript/node_modules missing (make ts-deps)"),
    pytest.mark.timeout(120),
]


def _tsc(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TSC), "-p", str(project), "--pretty", "false"],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )


def test_workflow_elements_resolves_to_the_vendors_integration_type() -> None:
    """tsc finds no error: workflowElements()' result is an IWorkflowElementIntegration of
    @aurigma/workflow-elements-types, and the global, the event and onToken are typed."""
    checked = _tsc(PROJECT)
    assert (checked.returncode, checked.stdout) == (0, "")


def test_a_declaration_with_a_nullable_token_fails_the_check(tmp_path: Path) -> None:
    """The same check on declarations whose integration token may be null reports that the result
    is not assignable to IWorkflowElementIntegration: tsc really reads the vendor's types."""
    project = tmp_path / "tests" / "typescript"
    project.mkdir(parents=True)
    for name in ("check.ts", "tsconfig.json"):
        shutil.copy(PROJECT / name, project / name)
    (project / "node_modules").symlink_to(PROJECT / "node_modules")
    static = tmp_path / "proxy" / "static"
    static.mkdir(parents=True)
    shipped = DECLARATIONS.read_text()
    integration = "  user: { id: string; token: string };\n  cchubApiGatewayUrl: string;"
    assert shipped.count(integration) == 1
    (static / "cc-user.d.ts").write_text(
        shipped.replace(integration, integration.replace("token: string", "token: string | null"))
    )
    checked = _tsc(project)
    assert checked.returncode == 2
    errors = [line for line in checked.stdout.splitlines() if ": error TS" in line]
    assert errors
    assert all("error TS2322" in line and "IWorkflowElementIntegration" in line for line in errors), errors
