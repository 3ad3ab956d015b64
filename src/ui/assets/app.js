// The dashboard's entry point: sign-in, the hash router, and the refresh loop of the open view.

import { api, connection, session, unauthorized } from "./api.js";
import { h, replace, errorBox } from "./dom.js";
import * as jobs from "./jobs.js";
import * as job from "./job.js";
import * as deliveries from "./deliveries.js";
import * as subscriptions from "./subscriptions.js";

const $ = (id) => document.getElementById(id);

/** `#/jobs/job_123?status=ready` → {parts: ["jobs", "job_123"], params: URLSearchParams}. */
function location() {
  const raw = window.location.hash.replace(/^#\/?/, "");
  const [route, search = ""] = raw.split("?", 2);
  const parts = route.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(search) };
}

function pick({ parts }) {
  switch (parts[0]) {
    case "jobs":
      return parts[1] ? [job, "jobs"] : [jobs, "jobs"];
    case "deliveries":
      return parts[1] ? [deliveries.detail, "deliveries"] : [deliveries, "deliveries"];
    case "subscriptions":
      return [subscriptions, "subscriptions"];
    default:
      return null;
  }
}

/** What a view gets: where it is, and a way to refresh itself that stops when it is left. */
class ViewContext {
  constructor(route) {
    this.route = route;
    this.alive = true;
    this.timers = [];
  }
  /** Run `fn` every `ms` while the view is open and the tab visible. */
  every(ms, fn) {
    const id = setInterval(() => {
      if (this.alive && document.visibilityState === "visible") fn();
    }, ms);
    this.timers.push(id);
  }
  dispose() {
    this.alive = false;
    this.timers.forEach(clearInterval);
  }
}

let current = null;

async function render() {
  if (!session.key()) return showSignIn();
  const route = location();
  const chosen = pick(route);
  if (!chosen) {
    window.location.replace("#/jobs");
    return;
  }
  const [view, nav] = chosen;
  const titles = { jobs: "Jobs", deliveries: "Deliveries", subscriptions: "Subscriptions" };
  document.title = `${route.parts[1] ?? titles[nav]} · agenthook`;
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === nav);
    if (link.dataset.nav === nav) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  current?.dispose();
  const ctx = new ViewContext(route);
  current = ctx;
  const main = $("view");
  replace(main, h("div", { class: "loading" }, "Loading…"));
  try {
    await view.render(main, ctx);
  } catch (error) {
    if (ctx.alive) replace(main, errorBox(error));
  }
  refreshDeadCount();
}

/** The number of dead letters beside "Deliveries", so failures are seen from every page. */
async function refreshDeadCount() {
  const badge = $("dead-count");
  try {
    const page = await api("/v1/deliveries?state=failed&limit=100");
    const n = page.data.length;
    badge.hidden = n === 0;
    badge.textContent = n === 100 && page.next ? "100+" : String(n);
    badge.title = `${badge.textContent} dead letter${n === 1 ? "" : "s"}`;
  } catch {
    badge.hidden = true;
  }
}

function showSignIn(message) {
  current?.dispose();
  current = null;
  $("shell").hidden = true;
  $("signin").hidden = false;
  const error = $("signin-error");
  error.hidden = !message;
  error.textContent = message ?? "";
  $("signin-key").value = "";
  $("signin-key").focus();
}

function showShell() {
  $("signin").hidden = true;
  $("shell").hidden = false;
}

async function signIn(event) {
  event.preventDefault();
  const input = $("signin-key");
  const key = input.value.trim();
  const error = $("signin-error");
  const submit = $("signin-submit");
  if (!key) return;
  submit.disabled = true;
  error.hidden = true;
  try {
    // Any tenant-scoped read tells a valid key from a wrong one.
    await api("/v1/jobs?limit=1", { key });
    session.signIn(key);
    input.value = "";
    showShell();
    if (!location().parts.length) history.replaceState(null, "", "#/jobs");
    await render();
  } catch (e) {
    error.hidden = false;
    error.textContent =
      e.status === 401 ? "This key was not accepted." : `Could not sign in: ${e.message}`;
  } finally {
    submit.disabled = false;
  }
}

function start() {
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", () => {
    session.signOut();
    showSignIn();
  });
  unauthorized.addEventListener("unauthorized", () => {
    session.signOut();
    showSignIn("The key is no longer accepted. Sign in again.");
  });
  const live = $("live");
  connection.addEventListener("reachable", () => {
    live.classList.remove("offline");
    live.textContent = "live";
    live.title = "The page refreshes itself while it is open";
  });
  connection.addEventListener("unreachable", () => {
    live.classList.add("offline");
    live.textContent = "offline";
    live.title = "The server does not answer; the page keeps trying";
  });
  window.addEventListener("hashchange", () => {
    if (session.key()) render();
  });
  setInterval(() => {
    if (session.key() && document.visibilityState === "visible") refreshDeadCount();
  }, 15000);
  if (session.key()) {
    showShell();
    render();
  } else {
    showSignIn();
  }
}

start();
