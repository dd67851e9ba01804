// Type-checked by tests/unit/test_page_script_types.py with tsc (never run): cc-sidecar's hand-written
// cc-user.d.ts against the vendor's own published Workflow Elements types.
import type {
  IWorkflowElement,
  IWorkflowElementIntegration,
} from "@aurigma/workflow-elements-types/workflow-element-base";
import type { CcSidecar, CcSidecarTokenUser, CcWorkflowElementsIntegration } from "../../proxy/static/cc-user";

// What workflowElements() resolves to is an integration as the vendor types it.
type Resolved = Awaited<ReturnType<CcSidecar["workflowElements"]>>;
export const resolvedIsIntegration: (value: Resolved) => IWorkflowElementIntegration = (value) => value;
export const declaredIsIntegration: (value: CcWorkflowElementsIntegration) => IWorkflowElementIntegration = (
  value,
) => value;

// The one line of the README, against the vendor's element interface, through the global.
export async function startEditor(editor: IWorkflowElement): Promise<void> {
  editor.init({ configVersion: 2, input: {}, integration: await ccSidecar.workflowElements() });
  editor.init({ configVersion: 2, input: {}, integration: await window.ccSidecar.workflowElements() });
}

// The event's detail is typed on document.
document.addEventListener("cc-sidecar:user", (event) => {
  const userId: string = event.detail.userId;
  const token: string | null = event.detail.token;
  void userId;
  void token;
});

// onToken's callback gets a token; user() too.
export const stop: () => void = ccSidecar.onToken((user: CcSidecarTokenUser) => {
  const token: string = user.token;
  void token;
});

// The checks bite: the vendor's integration wants a token, not a null one.
export const nullToken: IWorkflowElementIntegration = {
  tenantId: 1,
  storefrontId: 1,
  // @ts-expect-error -- a null token is not an IWorkflowElementIntegration's
  user: { id: "anon-x", token: null },
};
