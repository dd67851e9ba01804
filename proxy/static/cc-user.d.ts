/**
 * Types of cc-sidecar's page script, `/.cc-sidecar/v1/cc-user.js` (served beside it as
 * `/.cc-sidecar/v1/cc-user.d.ts`). The script defines `window.ccSidecar`; the shapes its editor
 * helpers resolve to are the options of the Customer's Canvas editors they name, and cc-sidecar's
 * tests check `workflowElements()` against `IWorkflowElementIntegration` of the vendor's
 * `@aurigma/workflow-elements-types`.
 */

/** The object of the `#cc-storefront-user` element and of `tokenUrl`: who the customer is, their token. */
export interface CcSidecarUser {
  /** The storefront's id in Customer's Canvas. */
  storefrontId: number;
  /** The Customer's Canvas tenant; null only while the sidecar has not learnt it from the API. */
  tenantId: number | null;
  /** The StorefrontUser id (a guest's starts with `anon-`). */
  userId: string;
  /** A guest, not a logged-in customer. */
  isAnonymous: boolean;
  /** The customer token; null on a cookie-less first visit (the script then asks `tokenUrl`). */
  token: string | null;
  /** The token's own `exp`, Unix seconds. */
  expiresAt: number | null;
  /** Seconds the token had left when the answer left the sidecar. */
  expiresIn: number | null;
  /** Seconds after which `tokenUrl` answers with a newer token. */
  renewIn: number | null;
  /** The path of the token endpoint, `/.cc-sidecar/token`. */
  tokenUrl: string;
  /** The Customer's Canvas hub, e.g. `https://customerscanvashub.com`. */
  cchubUrl: string;
  /** The Customer's Canvas API gateway, e.g. `https://api.customerscanvashub.com` (no trailing `/`). */
  cchubApiGatewayUrl: string;
}

/** What `user()` resolves to and `onToken` is called with: the object once it has a token and a tenant. */
export interface CcSidecarTokenUser extends CcSidecarUser {
  tenantId: number;
  token: string;
}

/**
 * The `integration` of a Workflow Elements editor's `init` (au-handy-editor, au-simple-editor, ...).
 * A type alias, not an interface: the vendor's `IWorkflowElementIntegration` has an index signature,
 * which only an alias's object type satisfies implicitly.
 */
export type CcWorkflowElementsIntegration = {
  tenantId: number;
  storefrontId: number;
  user: { id: string; token: string };
  cchubApiGatewayUrl: string;
};

/** The options of `new Aurigma.StorefrontJS(...)`. */
export type CcStorefrontJsOptions = {
  tenantId: number;
  storefrontId: number;
  cchubUrl: string;
  user: { id: string; userToken: string };
};

/** The UI Framework driver's `user` and `backOfficeSettings`. */
export type CcUiFrameworkSettings = {
  user: { id: string; tokenId: string };
  backOfficeSettings: {
    tenantId: number;
    storefrontId: number;
    token: string;
    apiGatewayUrl: string;
  };
};

export interface CcSidecar {
  /**
   * The current customer: from the page's element, else (no element, a null token, or a token past
   * its renewal point) from `tokenUrl`, which is tried again after each 503 or 429 as its
   * `Retry-After` says, backing off to a minute; rejects only when `tokenUrl` answers another 4xx.
   */
  user(): Promise<CcSidecarTokenUser>;
  /**
   * Calls `callback` with every newer object (a different token): renewals at `renewIn`, and when
   * the page comes back from sleep or the back/forward cache past its renewal point. Returns a
   * function that stops the calls.
   */
  onToken(callback: (user: CcSidecarTokenUser) => void): () => void;
  /** `editor.init({integration: await ccSidecar.workflowElements(), input: {...}})` */
  workflowElements(): Promise<CcWorkflowElementsIntegration>;
  /** `new Aurigma.StorefrontJS(await ccSidecar.storefrontJs())` */
  storefrontJs(): Promise<CcStorefrontJsOptions>;
  /** The UI Framework driver's `user` and `backOfficeSettings`. */
  uiFramework(): Promise<CcUiFrameworkSettings>;
}

declare global {
  interface Window {
    ccSidecar: CcSidecar;
  }
  var ccSidecar: CcSidecar;
  interface DocumentEventMap {
    /** Each object the script gets (from the element or `tokenUrl`), tokenless ones included. */
    "cc-sidecar:user": CustomEvent<CcSidecarUser>;
  }
}
