// The demo shop's stand-in for a Workflow Elements editor (<au-handy-editor> and its kin): an element
// whose init() takes the `integration` of the vendor's IWorkflowElementIntegration and shows it. The
// editor page starts it with the one line a shop writes (see the page's module script):
//   editor.init({integration: await ccSidecar.workflowElements(), input: {...}})
// ccSidecar is cc-sidecar's page script (/.cc-sidecar/v1/cc-user.js, injected with `inject: [script]`):
// it reads the token element, asks /.cc-sidecar/token on a first visit, and renews at renewIn.
(function () {
  "use strict";
  var status = document.getElementById("status");
  var renewals = 0;

  function setStatus(state, text) {
    status.dataset.state = state;
    status.textContent = text;
  }

  function text(id, value) {
    document.getElementById(id).textContent = value;
  }

  function showToken(token, expiresAt) {
    text("token", token.slice(0, 24) + "\u2026");
    text("expires", new Date(expiresAt * 1000).toISOString());
  }

  function showMerges(user) {
    // Demo only: a real shop never asks; the demo shop asks its emulator what MergeAnonymous moved.
    if (user.isAnonymous) { return; }
    fetch("/account/merges", {credentials: "same-origin", cache: "no-store"})
      .then(function (response) { return response.json(); })
      .then(function (answer) {
        text("merged", answer.merged.length
          ? "guest " + answer.merged.join(", ") + " merged into this account at login (MergeAnonymous)"
          : "nothing merged (no guest storage before login)");
      });
  }

  customElements.define("au-demo-editor", class extends HTMLElement {
    init(configuration) {
      var integration = configuration.integration;
      this.integration = integration;
      text("user-id", integration.user.id);
      text("tenant-id", String(integration.tenantId));
      text("storefront-id", String(integration.storefrontId));
      text("gateway", integration.cchubApiGatewayUrl);
      ccSidecar.user().then(function (user) {
        window.ccUser = user;
        text("user-kind", user.isAnonymous ? "guest" : "logged-in customer");
        showToken(user.token, user.expiresAt);
        showMerges(user);
        setStatus("token", "editor started with the customer's token");
      });
    }

    update(configuration) {
      this.init(configuration);
    }
  });

  // A newer token, ahead of the old one's expiry. An open Workflow Elements editor keeps the token it
  // started with; the next editor the page opens (or update()) takes this one.
  ccSidecar.onToken(function (user) {
    var editor = document.getElementById("editor");
    if (!editor.integration || editor.integration.user.token === user.token) {
      return; // the token the editor started with (a first visit's came this way)
    }
    window.ccUser = user;
    renewals += 1;
    showToken(user.token, user.expiresAt);
    var item = document.createElement("li");
    item.textContent = new Date().toLocaleTimeString() + ": a newer token, " + user.expiresIn +
      " s left, next renewal in " + user.renewIn + " s";
    document.getElementById("renewals").appendChild(item);
    setStatus("renewed", "token renewed (" + renewals + ")");
  });
})();
