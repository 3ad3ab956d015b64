// Subscriptions: create, edit, enable or disable, rotate the secret, send a test, recover
// failed deliveries, delete. And the secret that signs job callbacks.

import { api, path } from "./api.js";
import {
  h, replace, badge, mono, ago, exactTime, pageHeader, errorBox, button, toast, modal, field,
  confirmAction, copyButton,
} from "./dom.js";
import { recoverDialog } from "./deliveries.js";

const EVENT_TYPES = ["agent.ready", "agent.failed", "webhook.test"];
const FORMATS = [
  ["standard", "Standard Webhooks (signed JSON)"],
  ["slack", "Slack incoming webhook"],
  ["discord", "Discord webhook"],
];

export async function render(main, ctx) {
  const revealed = new Set();
  const list = h("div", { class: "sub-list" });
  const callback = h("div");
  let subs = [];
  replace(
    main,
    pageHeader(
      "Subscriptions",
      "Standing destinations: every event of the chosen types is sent to each enabled one.",
      button("New subscription", () => edit(null), { kind: "primary", testid: "new-subscription" }),
    ),
    list,
    callback,
  );

  async function refresh() {
    try {
      subs = (await api("/v1/subscriptions")).data;
      if (!ctx.alive) return;
      draw();
    } catch (e) {
      if (ctx.alive) replace(list, errorBox(e));
    }
  }

  async function edit(sub) {
    const saved = await subscriptionForm(sub);
    if (saved) {
      toast(sub ? "Subscription saved" : "Subscription created");
      await refresh();
    }
  }

  function draw() {
    if (subs.length === 0) {
      replace(
        list,
        h(
          "div",
          { class: "card empty" },
          h("h2", {}, "No subscriptions yet"),
          h("p", {}, "A subscription receives every agent.ready and agent.failed event of this tenant, signed with its own secret, in the standard, Slack or Discord format."),
          button("New subscription", () => edit(null), { kind: "primary" }),
        ),
      );
      return;
    }
    replace(list, subs.map((s) => card(s)));
  }

  function card(s) {
    const toggle = h("input", {
      type: "checkbox",
      role: "switch",
      class: "switch",
      checked: s.enabled ? true : null,
      "aria-label": s.enabled ? "Enabled: click to disable" : "Disabled: click to enable",
      "data-testid": "toggle-enabled",
    });
    toggle.addEventListener("change", async () => {
      toggle.disabled = true;
      try {
        await api(path`/v1/subscriptions/${s.id}`, { method: "PATCH", body: { enabled: toggle.checked } });
        toast(toggle.checked ? "Subscription enabled" : "Subscription disabled");
      } catch (e) {
        toast(e.message, "error");
      }
      await refresh();
    });
    const shown = revealed.has(s.id);
    const secret = h(
      "div",
      { class: "secret" },
      h("span", { class: "mono secret-value", "data-testid": "secret" }, shown ? s.secret : `whsec_${"•".repeat(16)}`),
      h(
        "button",
        {
          type: "button",
          class: "btn-link",
          "data-testid": "reveal-secret",
          onclick: () => {
            if (revealed.has(s.id)) revealed.delete(s.id);
            else revealed.add(s.id);
            draw();
          },
        },
        shown ? "Hide" : "Reveal",
      ),
      copyButton(s.secret, "Copy the secret"),
    );
    return h(
      "article",
      { class: `card sub${s.enabled ? "" : " sub-disabled"}`, "data-subscription-id": s.id },
      h(
        "header",
        { class: "sub-head" },
        h(
          "div",
          { class: "sub-title" },
          h("label", { class: "switch-wrap", title: s.enabled ? "Disable" : "Enable" }, toggle, h("span", { class: "switch-track", "aria-hidden": "true" })),
          h("div", {}, h("div", { class: "mono sub-url", title: s.url }, s.url), s.description ? h("div", { class: "muted" }, s.description) : null),
        ),
        h(
          "div",
          { class: "chips" },
          badge(s.enabled ? "enabled" : "disabled", s.enabled ? "enabled" : "disabled"),
          h("span", { class: "chip" }, s.format),
          typeof s.rate_limit_per_second === "number"
            ? h("span", { class: "chip chip-quiet", title: "Deliveries per second to it, at most" }, `≤ ${s.rate_limit_per_second}/s`)
            : null,
          s.event_types.map((t) => h("span", { class: "chip chip-quiet" }, t)),
        ),
      ),
      !s.enabled && s.disabled_reason
        ? h("div", { class: "alert alert-warn" }, h("strong", {}, "Disabled: "), s.disabled_reason)
        : null,
      h(
        "dl",
        { class: "meta" },
        h("div", { class: "meta-item" }, h("dt", {}, "Signing secret"), h("dd", {}, secret)),
        s.previous_secret_expires_at
          ? h("div", { class: "meta-item" }, h("dt", {}, "Previous secret"), h("dd", {}, "also signs until ", h("span", { title: exactTime(s.previous_secret_expires_at) }, ago(s.previous_secret_expires_at))))
          : null,
        h("div", { class: "meta-item" }, h("dt", {}, "Id"), h("dd", {}, mono(s.id, { copy: true }))),
        h("div", { class: "meta-item" }, h("dt", {}, "Created"), h("dd", {}, ago(s.created_at))),
      ),
      h(
        "footer",
        { class: "sub-actions" },
        button("Edit", () => edit(s), { testid: "edit" }),
        button("Rotate secret", () => rotate(s), { testid: "rotate" }),
        button("Send test", () => sendTest(s), { testid: "send-test", disabled: !s.enabled, title: s.enabled ? "Send a webhook.test event now" : "Enable it first" }),
        button("Recover…", async () => {
          if (await recoverDialog(subs, s.id)) await refresh();
        }, { testid: "recover" }),
        h("span", { class: "spacer" }),
        button("Delete", () => remove(s), { kind: "danger-ghost", testid: "delete" }),
      ),
    );
  }

  async function rotate(s) {
    const done = await confirmAction(
      "Rotate the signing secret?",
      "A new secret signs from now on. The current one keeps signing beside it for a while, so receivers can switch without missing an event.",
      "Rotate",
      "primary",
      () => api(path`/v1/subscriptions/${s.id}/rotate-secret`, { method: "POST" }),
    );
    if (done) {
      revealed.add(s.id);
      toast("Secret rotated: the new one is shown");
      await refresh();
    }
  }

  async function sendTest(s) {
    try {
      const d = await api(path`/v1/subscriptions/${s.id}/test`, { method: "POST" });
      toast(d && d.id ? `Test event queued (${d.id})` : "Test event queued");
    } catch (e) {
      toast(e.message, "error");
    }
  }

  async function remove(s) {
    const done = await confirmAction(
      "Delete this subscription?",
      `${s.url} will receive no more events. Its past deliveries stay in the log.`,
      "Delete",
      "danger",
      async () => {
        await api(path`/v1/subscriptions/${s.id}`, { method: "DELETE" });
        return true;
      },
    );
    if (done) {
      toast("Subscription deleted");
      await refresh();
    }
  }

  await refresh();
  await drawCallbackSecret(callback, revealed);
}

/** Create (`sub` null) or edit a subscription in a dialog; the saved one, or null. */
function subscriptionForm(sub) {
  const url = h("input", { type: "url", required: true, value: sub?.url ?? "", placeholder: "https://example.com/hooks/agenthook", spellcheck: "false", "data-testid": "sub-url" });
  const description = h("input", { type: "text", maxlength: 1024, value: sub?.description ?? "", placeholder: "What receives these events", "data-testid": "sub-description" });
  const format = h(
    "select",
    { "data-testid": "sub-format" },
    FORMATS.map(([value, label]) => h("option", { value, selected: (sub?.format ?? "standard") === value ? true : null }, label)),
  );
  const chosen = new Set(sub?.event_types ?? ["agent.ready", "agent.failed"]);
  const boxes = EVENT_TYPES.map((t) => h("input", { type: "checkbox", value: t, checked: chosen.has(t) ? true : null }));
  const secret = sub
    ? null
    : h("input", { type: "text", spellcheck: "false", placeholder: "whsec_… (generated when left empty)", "data-testid": "sub-secret" });
  return modal({
    title: sub ? "Edit subscription" : "New subscription",
    confirm: sub ? "Save" : "Create",
    body: [
      field("URL", url, "An http or https URL that accepts POST."),
      field("Description", description),
      field("Format", format),
      h(
        "fieldset",
        { class: "field" },
        h("legend", { class: "field-label" }, "Events"),
        h("div", { class: "checks" }, boxes.map((box) => h("label", { class: "check" }, box, h("span", { class: "mono" }, box.value)))),
      ),
      secret ? field("Signing secret", secret, "Leave empty and a strong one is generated.") : null,
    ],
    submit: async () => {
      const body = {
        url: url.value.trim(),
        description: description.value.trim() || null,
        format: format.value,
        event_types: boxes.filter((b) => b.checked).map((b) => b.value),
      };
      if (body.event_types.length === 0) throw new Error("Choose at least one event type.");
      if (sub) return api(path`/v1/subscriptions/${sub.id}`, { method: "PATCH", body });
      if (secret.value.trim()) body.secret = secret.value.trim();
      if (body.description === null) delete body.description;
      return api("/v1/subscriptions", { method: "POST", body });
    },
  });
}

async function drawCallbackSecret(slot, revealed) {
  let current;
  try {
    current = await api("/v1/callback-secret");
  } catch (e) {
    replace(slot, errorBox(e));
    return;
  }
  const draw = () => {
    const shown = revealed.has("callback");
    replace(
      slot,
      h(
        "section",
        { class: "card callback-secret" },
        h("h2", { class: "card-title" }, "Job callback secret"),
        h("p", { class: "muted" }, "Signs the events sent to each job's callback_url (subscriptions have their own)."),
        h(
          "div",
          { class: "secret" },
          h("span", { class: "mono secret-value" }, shown ? current.secret : `whsec_${"•".repeat(16)}`),
          h("button", { type: "button", class: "btn-link", onclick: () => { if (shown) revealed.delete("callback"); else revealed.add("callback"); draw(); } }, shown ? "Hide" : "Reveal"),
          copyButton(current.secret, "Copy the secret"),
          h("span", { class: "spacer" }),
          button("Rotate", async () => {
            const rotated = await confirmAction(
              "Rotate the callback secret?",
              "A new secret signs job callbacks from now on; the current one keeps signing beside it for a while.",
              "Rotate",
              "primary",
              () => api("/v1/callback-secret/rotate", { method: "POST" }),
            );
            if (rotated) {
              current = rotated;
              revealed.add("callback");
              toast("Callback secret rotated");
              draw();
            }
          }),
        ),
        current.previous_secret_expires_at
          ? h("p", { class: "muted" }, "The previous secret also signs until ", exactTime(current.previous_secret_expires_at), ".")
          : null,
      ),
    );
  };
  draw();
}
