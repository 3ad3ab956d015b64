// Deliveries: every event sent to every destination, each attempt with the receiver's answer;
// dead letters (state failed) retried one by one or recovered per subscription.

import { api, path, query } from "./api.js";
import {
  h, replace, badge, mono, ago, exactTime, tabs, pageHeader, errorBox, button, bodyText,
  toast, jsonBlock, modal, field, outsideLink,
} from "./dom.js";

const STATES = [
  ["failed", "Dead letters"],
  ["pending", "Pending"],
  ["succeeded", "Succeeded"],
  ["", "All"],
];

function href(state) {
  return `#/deliveries${query({ state: state || "all" })}`;
}

export function destinationLabel(d) {
  const dest = d.destination ?? {};
  if (dest.kind === "callback") return "Job callback";
  const format = dest.format && dest.format !== "standard" ? ` · ${dest.format}` : "";
  return `Subscription${format}`;
}

/** The last attempt's outcome in a few characters: `200`, `500`, `timeout`. */
export function lastResult(d) {
  const last = d.attempts[d.attempts.length - 1];
  if (!last) return h("span", { class: "muted" }, "not tried yet");
  return attemptResult(last);
}

function attemptResult(a) {
  if (a.status_code !== null && a.status_code !== undefined) {
    const ok = a.status_code >= 200 && a.status_code < 300;
    return badge(ok ? "http-ok" : "http-bad", `HTTP ${a.status_code}`);
  }
  return badge("http-bad", a.error ?? "no answer");
}

/** Send a delivery again now (same webhook-id); `after` runs once it is queued. */
export function retryButton(d, after, kind = "secondary") {
  return button(
    d.state === "failed" ? "Retry" : "Send again",
    async () => {
      try {
        await api(path`/v1/deliveries/${d.id}/retry`, { method: "POST" });
        toast(`Queued to be sent again: ${d.id}`);
        await after();
      } catch (e) {
        toast(e.details ? `${e.message} (${e.details})` : e.message, "error");
      }
    },
    { kind, testid: "retry", title: "Send it again now, with the same webhook-id" },
  );
}

/** Every attempt of `d`: when, outcome, time taken, and the receiver's answer as text. */
export function attemptsTable(d, open) {
  if (d.attempts.length === 0) {
    return h(
      "p",
      { class: "muted attempts-none" },
      "No attempt yet",
      d.next_attempt_at ? [" · first one due ", ago(d.next_attempt_at)] : null,
      ".",
    );
  }
  return h(
    "table",
    { class: "table table-attempts" },
    h(
      "thead",
      {},
      h("tr", {}, h("th", { class: "num" }, "#"), h("th", {}, "When"), h("th", {}, "Result"), h("th", { class: "num" }, "Took"), h("th", { class: "col-wide" }, "Response body")),
    ),
    h(
      "tbody",
      {},
      d.attempts.map((a, i) =>
        h(
          "tr",
          { "data-attempt": i + 1 },
          h("td", { class: "num muted" }, String(i + 1)),
          h("td", { class: "nowrap" }, ago(a.at)),
          h("td", {}, attemptResult(a)),
          h("td", { class: "num nowrap" }, `${a.duration_ms} ms`),
          h("td", { class: "col-wide" }, bodyText(a.response_body, `${d.id}/${i}`, open)),
        ),
      ),
    ),
  );
}

/** One delivery with its attempts, as the job page and the delivery page show it. */
export function deliveryCard(d, { open, onChange, link = true }) {
  const dest = d.destination ?? {};
  return h(
    "article",
    { class: `card delivery delivery-${d.state}`, "data-delivery-id": d.id },
    h(
      "header",
      { class: "delivery-head" },
      h(
        "div",
        { class: "delivery-title" },
        badge(d.state),
        h("span", { class: "chip" }, d.event_type),
        h("span", { class: "delivery-dest" }, destinationLabel(d)),
        outsideLink(dest.url),
      ),
      h("div", { class: "delivery-actions" }, retryButton(d, onChange, d.state === "failed" ? "primary" : "secondary")),
    ),
    h(
      "dl",
      { class: "meta" },
      metaItem("webhook-id", mono(d.webhook_id, { copy: true })),
      metaItem("Delivery", link ? h("a", { href: `#/deliveries/${encodeURIComponent(d.id)}`, class: "mono" }, d.id) : mono(d.id, { copy: true })),
      dest.subscription_id
        ? metaItem("Subscription", h("a", { href: "#/subscriptions", class: "mono" }, dest.subscription_id))
        : null,
      metaItem("Created", ago(d.created_at)),
      d.next_attempt_at ? metaItem("Next attempt", ago(d.next_attempt_at)) : null,
    ),
    attemptsTable(d, open),
  );
}

function metaItem(label, value) {
  return h("div", { class: "meta-item" }, h("dt", {}, label), h("dd", {}, value));
}

/** Ask for a subscription and a time, then queue its failed deliveries since then again. */
export async function recoverDialog(subscriptions, chosen) {
  const select = h(
    "select",
    { required: true, "data-testid": "recover-subscription" },
    subscriptions.map((s) =>
      h("option", { value: s.id, selected: s.id === chosen ? true : null }, `${s.url}${s.description ? ` — ${s.description}` : ""}`),
    ),
  );
  const dayAgo = new Date(Date.now() - 24 * 3600 * 1000);
  const local = new Date(dayAgo.getTime() - dayAgo.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
  const sinceInput = h("input", { type: "datetime-local", required: true, value: local });
  const result = await modal({
    title: "Recover failed deliveries",
    confirm: "Send them again",
    body: [
      h("p", { class: "dialog-text" }, "Every dead letter of the subscription created since the time below is queued again, to where the subscription points now, with its webhook-id unchanged."),
      field("Subscription", select),
      field("Failed since", sinceInput, "In your local time."),
    ],
    submit: async () => {
      const since = new Date(sinceInput.value);
      if (Number.isNaN(since.getTime())) throw new Error("Pick a date and time.");
      return api(path`/v1/subscriptions/${select.value}/recover`, {
        method: "POST",
        body: { since: since.toISOString() },
      });
    },
  });
  if (result) {
    toast(`${result.recovered} deliver${result.recovered === 1 ? "y" : "ies"} queued again`);
  }
  return result;
}

export async function render(main, ctx) {
  const raw = ctx.route.params.get("state") ?? "failed";
  const state = raw === "all" ? "" : raw;
  const open = new Set();
  const expanded = new Set();
  let items = [];
  let next = null;

  const updated = h("span", { class: "updated muted" });
  const body = h("div", { class: "card card-flush" });
  const recover = button(
    "Recover a subscription…",
    async () => {
      const subs = (await api("/v1/subscriptions")).data;
      if (subs.length === 0) {
        toast("There are no subscriptions to recover.", "error");
        return;
      }
      if (await recoverDialog(subs)) await refresh();
    },
    { testid: "recover-open" },
  );
  replace(
    main,
    pageHeader(
      "Deliveries",
      state === "failed"
        ? "Dead letters: deliveries whose every attempt failed, or that the receiver refused for good."
        : "Every event sent to every destination, with each attempt.",
      updated,
      recover,
    ),
    h("div", { class: "toolbar" }, tabs(STATES, state, href)),
    body,
  );

  async function load() {
    const page = await api(`/v1/deliveries${query({ state, limit: 100 })}`);
    items = page.data;
    next = page.next;
  }

  async function more() {
    const page = await api(`/v1/deliveries${query({ state, limit: 100, after: next })}`);
    if (!ctx.alive) return;
    items = items.concat(page.data);
    next = page.next;
    draw();
  }

  async function refresh() {
    try {
      await load();
      if (ctx.alive) draw();
    } catch (e) {
      if (ctx.alive) replace(body, errorBox(e));
    }
  }

  function draw() {
    updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
    if (items.length === 0) {
      replace(
        body,
        h(
          "div",
          { class: "empty" },
          h("h2", {}, state === "failed" ? "No dead letters" : "No deliveries here"),
          h("p", {}, state === "failed" ? "Every delivery so far succeeded or is still being tried." : "Deliveries appear when a job ends or a test event is sent."),
        ),
      );
      return;
    }
    const rows = [];
    for (const d of items) {
      const isOpen = expanded.has(d.id);
      rows.push(
        h(
          "tr",
          {
            class: `clickable${isOpen ? " expanded" : ""}`,
            "data-delivery-id": d.id,
            "aria-expanded": isOpen ? "true" : "false",
            onclick: (e) => {
              if (e.target.closest("a, button")) return;
              if (expanded.has(d.id)) expanded.delete(d.id);
              else expanded.add(d.id);
              draw();
            },
          },
          h("td", {}, h("span", { class: "caret" }, isOpen ? "▾" : "▸"), " ", h("a", { href: `#/deliveries/${encodeURIComponent(d.id)}`, class: "mono strong" }, d.id)),
          h("td", {}, badge(d.state)),
          h(
            "td",
            {},
            h("div", { class: "cell-title" }, d.event_type),
            d.job_id ? h("a", { href: `#/jobs/${encodeURIComponent(d.job_id)}`, class: "mono cell-sub ellipsis short", title: d.job_id }, d.job_id) : null,
          ),
          h("td", { class: "col-wide" }, h("div", { class: "cell-title" }, destinationLabel(d)), h("div", { class: "cell-sub mono ellipsis", title: d.destination?.url ?? "" }, d.destination?.url ?? "")),
          h("td", {}, lastResult(d), h("div", { class: "cell-sub" }, `${d.attempts.length} attempt${d.attempts.length === 1 ? "" : "s"}`)),
          h("td", {}, ago(d.updated_at)),
          h("td", { class: "actions" }, retryButton(d, refresh, d.state === "failed" ? "primary" : "secondary")),
        ),
      );
      if (isOpen) {
        rows.push(
          h("tr", { class: "detail-row" }, h("td", { colspan: 7 }, attemptsTable(d, open))),
        );
      }
    }
    replace(
      body,
      h(
        "table",
        { class: "table table-deliveries" },
        h("thead", {}, h("tr", {}, h("th", {}, "Delivery"), h("th", {}, "State"), h("th", {}, "Event"), h("th", { class: "col-wide" }, "Destination"), h("th", {}, "Last result"), h("th", {}, "Updated"), h("th", {}, ""))),
        h("tbody", {}, rows),
      ),
      next ? h("div", { class: "table-foot" }, button("Load more", more)) : null,
    );
  }

  await load();
  if (!ctx.alive) return;
  draw();
  ctx.every(4000, refresh);
}

/** One delivery: its attempts and the event body it carries. */
export const detail = {
  async render(main, ctx) {
    const id = ctx.route.parts[1];
    const open = new Set();
    const updated = h("span", { class: "updated muted" });
    const slot = h("div");
    replace(
      main,
      h("nav", { class: "crumbs" }, h("a", { href: "#/deliveries" }, "Deliveries"), " / ", h("span", { class: "mono" }, id)),
      pageHeader("Delivery", null, updated),
      slot,
    );
    async function refresh() {
      try {
        const d = await api(path`/v1/deliveries/${id}`);
        if (!ctx.alive) return;
        updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
        replace(
          slot,
          deliveryCard(d, { open, onChange: refresh, link: false }),
          h(
            "section",
            { class: "card" },
            h("h2", { class: "card-title" }, "Event body"),
            h("p", { class: "muted" }, `${d.event_type}, in the standard shape`, d.destination?.format && d.destination.format !== "standard" ? ` (sent to this destination in the ${d.destination.format} format)` : "", ". Created ", exactTime(d.created_at), "."),
            jsonBlock(d.payload),
          ),
        );
      } catch (e) {
        if (ctx.alive) replace(slot, errorBox(e));
      }
    }
    await refresh();
    ctx.every(3000, refresh);
  },
};
