/*! cc-sidecar page script v1: window.ccSidecar, the customer's Customer's Canvas token for an editor.
 *
 * Served by cc-sidecar at /.cc-sidecar/v1/cc-user.js: the same bytes for every shop and customer (no
 * customer data; it reads the page's <script id="cc-storefront-user"> element or asks tokenUrl).
 * Typed by cc-user.d.ts beside it. One line starts an editor:
 *   editor.init({integration: await ccSidecar.workflowElements(), input: {...}})
 */
(function () {
  "use strict";
  if (window.ccSidecar) {
    return; // included twice: the first copy keeps its state and timers
  }

  var ELEMENT_ID = "cc-storefront-user";
  var DEFAULT_TOKEN_URL = "/.cc-sidecar/token";
  var EVENT = "cc-sidecar:user";
  // Waits between tries of tokenUrl while it cannot give a token: doubled from the first to the cap,
  // never shorter than the server's Retry-After (itself bounded, so a bad header cannot park us for days).
  var FIRST_RETRY_S = 1;
  var MAX_BACKOFF_S = 60;
  var MAX_RETRY_AFTER_S = 600;
  // A renewal that brought the same token back tries again no sooner than this (and backs off).
  var MIN_RENEW_RETRY_S = 5;
  // setTimeout fires at once for a delay beyond a signed 32-bit count of ms (24.8 days).
  var MAX_TIMER_MS = 2147483647;

  var current = null; // {user, renewAt, expireAt}: the newest object with a token, and when (Date.now() ms)
  var refreshing = null; // the one fetch of tokenUrl in flight: {done: Promise, failed: Promise}
  var renewTimer = null;
  var renewRetryS = MIN_RENEW_RETRY_S;
  var listeners = [];

  // A background refresh that ends in a 4xx: whoever awaits user() sees the rejection.
  function ignore() {}

  function sleep(seconds) {
    return new Promise(function (resolve) { setTimeout(resolve, seconds * 1000); });
  }

  function isComplete(user) {
    // What every editor needs: a token and the tenant (null only while the sidecar has not learnt it).
    return user !== null && typeof user === "object" && typeof user.token === "string" &&
      typeof user.tenantId === "number";
  }

  function tokenUrl() {
    var url = current && current.user.tokenUrl;
    // Only a path of this origin: the request carries the shop's cookies.
    return typeof url === "string" && url.charAt(0) === "/" && url.charAt(1) !== "/" && url.charAt(1) !== "\\"
      ? url : DEFAULT_TOKEN_URL;
  }

  function readElement() {
    var element = document.getElementById(ELEMENT_ID);
    if (!element) {
      return null;
    }
    try {
      var user = JSON.parse(element.textContent);
      return user !== null && typeof user === "object" ? user : null;
    } catch (error) {
      return null;
    }
  }

  function retryAfterS(response) {
    var value = response && response.headers.get("Retry-After");
    if (!value) {
      return 0;
    }
    var seconds = /^\s*\d+\s*$/.test(value) ? Number(value) : (Date.parse(value) - Date.now()) / 1000;
    return isFinite(seconds) && seconds > 0 ? Math.min(seconds, MAX_RETRY_AFTER_S) : 0;
  }

  function announce(user) {
    document.dispatchEvent(new CustomEvent(EVENT, {detail: user}));
  }

  // Take an object as the newest: remember when it renews and expires by this browser's clock (its
  // expiresIn/renewIn are counted from when it left the sidecar), schedule the renewal, tell the page.
  function adopt(user) {
    var now = Date.now();
    var newer = current === null || current.user.token !== user.token;
    var expiresIn = typeof user.expiresIn === "number" ? user.expiresIn : null;
    var renewIn = typeof user.renewIn === "number" ? user.renewIn : expiresIn !== null ? expiresIn / 2 : null;
    current = {
      user: user,
      renewAt: renewIn === null ? Infinity : now + renewIn * 1000,
      expireAt: expiresIn === null ? Infinity : now + expiresIn * 1000,
    };
    if (newer) {
      renewRetryS = MIN_RENEW_RETRY_S;
      scheduleRenewal(renewIn);
      listeners.slice().forEach(function (callback) {
        try {
          callback(user);
        } catch (error) {
          setTimeout(function () { throw error; }); // reported, and the other callbacks still run
        }
      });
    } else {
      // The same token again (asked early, or by a clock that runs ahead): try later, backing off.
      scheduleRenewal(Math.max(renewIn === null ? 0 : renewIn, renewRetryS));
      renewRetryS = Math.min(renewRetryS * 2, MAX_BACKOFF_S);
    }
  }

  function scheduleRenewal(seconds) {
    if (renewTimer !== null) {
      clearTimeout(renewTimer);
      renewTimer = null;
    }
    if (seconds !== null && isFinite(seconds)) {
      renewTimer = setTimeout(function () {
        renewTimer = null;
        refresh().done.catch(ignore);
      }, Math.min(Math.max(0, seconds) * 1000, MAX_TIMER_MS));
    }
  }

  // Ask tokenUrl until it gives a complete object: a 503 or 429 (Customer's Canvas down, a budget
  // spent), another 5xx (a proxy in front while the sidecar restarts) or a network failure is tried
  // again after Retry-After, backing off to a cap; another 4xx ends the tries (the promise rejects).
  // One fetch at a time, shared by all callers; `failed` resolves at its first failed try, so a
  // caller holding a usable token need not wait.
  function refresh() {
    if (refreshing !== null) {
      return refreshing;
    }
    var signalFailure;
    var failed = new Promise(function (resolve) { signalFailure = resolve; });
    var done = (async function () {
      var backoffS = FIRST_RETRY_S;
      for (;;) {
        var response = null;
        var user = null;
        try {
          response = await fetch(tokenUrl(), {
            credentials: "same-origin",
            cache: "no-store",
            headers: {Accept: "application/json"},
          });
          if (response.ok) {
            user = await response.json();
          } else {
            await response.text(); // read to the end: the connection is free again
          }
        } catch (error) {
          user = null; // offline, or a body that is not JSON: tried again like a 503
        }
        if (response !== null && !response.ok && response.status !== 429 && response.status < 500) {
          throw new Error("cc-sidecar: " + tokenUrl() + " answered " + response.status);
        }
        if (isComplete(user)) {
          announce(user);
          adopt(user);
          return user;
        }
        if (user !== null && typeof user === "object") {
          announce(user); // not complete yet (no cookie kept, tenant unknown): shown, tried again
        }
        signalFailure();
        var jitterS = backoffS * 0.2 * Math.random(); // pages that saw one outage do not come back in step
        await sleep(Math.max(retryAfterS(response), backoffS + jitterS));
        backoffS = Math.min(backoffS * 2, MAX_BACKOFF_S);
      }
    })();
    refreshing = {done: done, failed: failed};
    done.then(
      function () { refreshing = null; },
      function () { refreshing = null; }
    );
    return refreshing;
  }

  function user() {
    var now = Date.now();
    if (current !== null && now < current.renewAt) {
      return Promise.resolve(current.user);
    }
    var renewal = refresh();
    if (current === null || now >= current.expireAt) {
      return renewal.done;
    }
    // Past its renewal point but not expired: the newer token when tokenUrl gives it, else this one.
    var held = current.user;
    return Promise.race([renewal.done, renewal.failed.then(function () { return held; })]);
  }

  // Back from sleep or from the back/forward cache: timers did not run meanwhile.
  function wake() {
    if (current !== null && Date.now() >= current.renewAt && document.visibilityState !== "hidden") {
      refresh().done.catch(ignore);
    }
  }

  window.ccSidecar = Object.freeze({
    user: user,
    onToken: function (callback) {
      if (typeof callback !== "function") {
        throw new TypeError("ccSidecar.onToken: callback must be a function");
      }
      listeners.push(callback);
      return function () {
        var at = listeners.indexOf(callback);
        if (at >= 0) {
          listeners.splice(at, 1);
        }
      };
    },
    workflowElements: function () {
      return user().then(function (u) {
        return {
          tenantId: u.tenantId,
          storefrontId: u.storefrontId,
          user: {id: u.userId, token: u.token},
          cchubApiGatewayUrl: u.cchubApiGatewayUrl,
        };
      });
    },
    storefrontJs: function () {
      return user().then(function (u) {
        return {
          tenantId: u.tenantId,
          storefrontId: u.storefrontId,
          cchubUrl: u.cchubUrl,
          user: {id: u.userId, userToken: u.token},
        };
      });
    },
    uiFramework: function () {
      return user().then(function (u) {
        return {
          user: {id: u.userId, tokenId: u.token},
          backOfficeSettings: {
            tenantId: u.tenantId,
            storefrontId: u.storefrontId,
            token: u.token,
            apiGatewayUrl: u.cchubApiGatewayUrl,
          },
        };
      });
    },
  });

  window.addEventListener("pageshow", function (event) {
    if (event.persisted) {
      wake();
    }
  });
  document.addEventListener("visibilitychange", wake);

  // Start at once: the element is above this script; a first visit (null token) or a page without
  // the element (Customer's Canvas was down) asks tokenUrl now, so the editor's await is short.
  var onPage = readElement();
  if (onPage !== null) {
    announce(onPage);
  }
  if (isComplete(onPage)) {
    adopt(onPage);
  } else {
    refresh().done.catch(ignore);
  }
})();
