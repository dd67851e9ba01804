// The demo editor page's own script: what a shop's page does with what cc-sidecar injected.
(function () {
  "use strict";
  var status = document.getElementById("status");
  var renewals = 0;

  function showMerges(user) {
    // Demo only: a real shop never asks; the demo shop asks its emulator what MergeAnonymous moved.
    if (user.isAnonymous) { return; }
    fetch("/account/merges", {credentials: "same-origin", cache: "no-store"})
      .then(function (response) { return response.json(); })
      .then(function (answer) {
        document.getElementById("merged").textContent = answer.merged.length
          ? "guest " + answer.merged.join(", ") + " merged into this account at login (MergeAnonymous)"
          : "nothing merged (no guest storage before login)";
      });
  }

  function show(user) {
    document.getElementById("user-id").textContent = user.userId;
    document.getElementById("user-kind").textContent = user.isAnonymous ? "guest" : "logged-in customer";
    document.getElementById("storefront-id").textContent = String(user.storefrontId);
    document.getElementById("expires").textContent = new Date(user.expiresAt * 1000).toISOString();
    document.getElementById("token").textContent = user.token.slice(0, 24) + "\u2026";
    // A real page would now start the editor, e.g. Workflow Elements:
    // init({integration: {tenantId, storefrontId: user.storefrontId, user: {id: user.userId, token: user.token}}})
  }

  // The token endpoint answers the same object as the element; it is how a page renews a token,
  // and how a first visit gets one at all.
  function fetchUser() {
    return fetch(window.ccUser.tokenUrl, {credentials: "same-origin", cache: "no-store"})
      .then(function (response) {
        if (!response.ok) { throw new Error("token endpoint answered " + response.status); }
        return response.json();
      })
      .then(function (user) {
        if (user.token === null) { throw new Error("no token: this browser keeps no cookies"); }
        window.ccUser = user;
        show(user);
        return user;
      });
  }

  function renew() {
    return fetchUser()
      .then(function () {
        renewals += 1;
        status.textContent = "token renewed (" + renewals + ")";
        status.dataset.state = "renewed";
      })
      .catch(function (error) {
        status.textContent = "renewal failed: " + error.message;
        status.dataset.state = "renew-failed";
      });
  }

  function start() {
    status.textContent = "token received";
    status.dataset.state = "token";
    document.getElementById("renew").addEventListener("click", renew);
    // Renew a little before expiry, as the editor would on a page left open.
    var lead = Math.max(5, window.ccUser.expiresAt - Date.now() / 1000 - 60);
    window.setTimeout(renew, lead * 1000);
    if (location.hash === "#renew-now") { renew(); }
  }

  var element = document.getElementById("cc-storefront-user");
  if (!element) {
    status.textContent = "no token on this page (Customer's Canvas unavailable?)";
    status.dataset.state = "no-token";
    return;
  }
  window.ccUser = JSON.parse(element.textContent);
  if (window.ccUser.token !== null) {
    show(window.ccUser);
    showMerges(window.ccUser);
    start();
    return;
  }
  // A first visit (the request carried no cookie): the sidecar named the guest but made no
  // Customer's Canvas user for a client that may keep no cookies (a crawler). This call brings
  // the guest cookie back, and the sidecar makes the user and its token now.
  status.textContent = "fetching the token\u2026";
  status.dataset.state = "fetching";
  fetchUser().then(start, function (error) {
    status.textContent = "no token: " + error.message;
    status.dataset.state = "no-token";
  });
})();
