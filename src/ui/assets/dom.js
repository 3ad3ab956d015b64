// Building the page. Every string from outside (ids, names, prompts, URLs, error messages,
// response bodies) becomes a text node: nothing here ever parses a string as HTML.

/**
 * `h("a", {class: "x", href: "#/jobs", onclick: f}, "text", child)`: an element. Children are
 * nodes, or anything else shown as text; null, undefined and false are skipped.
 */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "dataset") Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace everything in `el` with `children`. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/** A class-name-safe form of an outside value (`badge-${state}`). */
function token(value) {
  const s = String(value ?? "").toLowerCase();
  return /^[a-z0-9_-]+$/.test(s) ? s : "other";
}

/** A status pill: job statuses, delivery states, HTTP results. */
export function badge(state, label) {
  return h("span", { class: `badge badge-${token(state)}` }, label ?? String(state));
}

/** A monospace id that can be copied; long ones are cut in the middle visually only. */
export function mono(value, { copy = false, cls = "" } = {}) {
  const span = h("span", { class: `mono ${cls}`.trim(), title: value }, value);
  if (!copy || !value) return span;
  return h("span", { class: "with-copy" }, span, copyButton(value));
}

export function copyButton(value, label = "Copy") {
  return h(
    "button",
    {
      type: "button",
      class: "btn-icon",
      title: label,
      "aria-label": label,
      onclick: async (e) => {
        e.stopPropagation();
        try {
          await navigator.clipboard.writeText(value);
          toast("Copied to the clipboard");
        } catch {
          toast("The browser did not allow copying; select the text instead", "error");
        }
      },
    },
    copyIcon(),
  );
}

const SVG = "http://www.w3.org/2000/svg";

/** Two overlapping rounded squares, drawn with DOM calls (no markup is parsed). */
function copyIcon() {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 16 16");
  svg.setAttribute("aria-hidden", "true");
  for (const [x, y] of [[5, 5], [2, 2]]) {
    const rect = document.createElementNS(SVG, "rect");
    for (const [name, value] of Object.entries({ x, y, width: 9, height: 9, rx: 2, fill: "none", stroke: "currentColor", "stroke-width": 1.5 })) {
      rect.setAttribute(name, String(value));
    }
    svg.append(rect);
  }
  return svg;
}

/** An http(s) URL from outside as a link that opens elsewhere; anything else as plain text. */
export function outsideLink(url) {
  if (typeof url !== "string" || url === "") return h("span", { class: "muted" }, "—");
  let ok = false;
  try {
    const parsed = new URL(url);
    ok = parsed.protocol === "https:" || parsed.protocol === "http:";
  } catch {
    ok = false;
  }
  if (!ok) return h("span", { class: "mono" }, url);
  return h(
    "a",
    { href: url, class: "mono outside", target: "_blank", rel: "noopener noreferrer nofollow" },
    url,
  );
}

const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto", style: "short" });
const absolute = new Intl.DateTimeFormat(undefined, {
  year: "numeric",
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
});

/** "12 s ago" / "in 3 min", with the exact time as a tooltip. */
export function ago(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  const at = new Date(iso);
  if (Number.isNaN(at.getTime())) return h("span", { class: "mono" }, String(iso));
  return h("time", { datetime: iso, title: absolute.format(at), class: "ago" }, since(at));
}

export function since(at) {
  const seconds = Math.round((at.getTime() - Date.now()) / 1000);
  const abs = Math.abs(seconds);
  if (abs < 5) return seconds > 0 ? "in a moment" : "just now";
  if (abs < 60) return relative.format(seconds, "second");
  if (abs < 3600) return relative.format(Math.round(seconds / 60), "minute");
  if (abs < 86400) return relative.format(Math.round(seconds / 3600), "hour");
  return relative.format(Math.round(seconds / 86400), "day");
}

export function exactTime(iso) {
  if (!iso) return "—";
  const at = new Date(iso);
  return Number.isNaN(at.getTime()) ? String(iso) : absolute.format(at);
}

/** JSON, indented, as text. */
export function jsonBlock(value) {
  return h("pre", { class: "code" }, JSON.stringify(value, null, 2));
}

/**
 * A body from outside (a receiver's answer) as text: the first lines, and the rest behind a
 * toggle that `open` (a Set of keys) remembers across refreshes.
 */
export function bodyText(text, key, open) {
  if (text === null || text === undefined || text === "") {
    return h("span", { class: "muted" }, "(empty)");
  }
  const long = text.length > 280 || text.split("\n").length > 6;
  const pre = h("pre", { class: "body-text" }, text);
  if (!long) return pre;
  const expanded = open.has(key);
  pre.classList.toggle("clamped", !expanded);
  const toggle = h(
    "button",
    {
      type: "button",
      class: "btn-link",
      onclick: () => {
        if (open.has(key)) open.delete(key);
        else open.add(key);
        const now = open.has(key);
        pre.classList.toggle("clamped", !now);
        toggle.textContent = now ? "Show less" : `Show all (${text.length} characters)`;
      },
    },
    expanded ? "Show less" : `Show all (${text.length} characters)`,
  );
  return h("div", { class: "body-wrap" }, pre, toggle);
}

/** A short message at the bottom right. */
export function toast(message, kind = "ok") {
  const box = document.getElementById("toasts");
  const item = h("div", { class: `toast toast-${token(kind)}`, role: "status" }, message);
  box.append(item);
  // A burst of actions shows the latest few, not a column of old news.
  while (box.children.length > 3) box.firstElementChild.remove();
  setTimeout(() => item.classList.add("leaving"), 3600);
  setTimeout(() => item.remove(), 4000);
}

/** An API error as a readable block: message, code, details. */
export function errorBox(error) {
  return h(
    "div",
    { class: "alert alert-error", role: "alert" },
    h("strong", {}, error?.message ?? String(error)),
    error?.code ? h("span", { class: "mono muted" }, ` ${error.code}`) : null,
    error?.details ? h("div", { class: "alert-details" }, error.details) : null,
  );
}

/** A page heading with optional actions on the right. */
export function pageHeader(title, subtitle, ...actions) {
  return h(
    "div",
    { class: "page-header" },
    h("div", {}, h("h1", {}, title), subtitle ? h("p", { class: "subtitle" }, subtitle) : null),
    h("div", { class: "page-actions" }, actions),
  );
}

export function button(label, onclick, { kind = "secondary", title, testid, disabled } = {}) {
  return h(
    "button",
    {
      type: "button",
      class: `btn btn-${kind}`,
      title,
      disabled,
      "data-testid": testid,
      onclick: async (e) => {
        e.stopPropagation();
        const el = e.currentTarget;
        el.disabled = true;
        try {
          await onclick(e);
        } finally {
          el.disabled = false;
        }
      },
    },
    label,
  );
}

/** Filter tabs: `[value, label]` pairs; the current one is marked. */
export function tabs(items, current, href) {
  return h(
    "div",
    { class: "tabs", role: "tablist" },
    items.map(([value, label, count]) =>
      h(
        "a",
        {
          href: href(value),
          role: "tab",
          class: value === current ? "tab active" : "tab",
          "aria-selected": value === current ? "true" : "false",
          "data-tab": value || "all",
        },
        label,
        count ? h("span", { class: "tab-count" }, count) : null,
      ),
    ),
  );
}

const dialog = () => document.getElementById("dialog");

/**
 * A modal with `body` (a form's fields) and two buttons; resolves with what `submit` returned,
 * or null when dismissed. `submit` may throw an ApiError: it is shown in the dialog, which
 * stays open.
 */
export function modal({ title, body, confirm = "Save", kind = "primary", submit }) {
  const d = dialog();
  return new Promise((resolve) => {
    const errorSlot = h("div", { class: "dialog-error" });
    const confirmButton = h("button", { type: "submit", class: `btn btn-${kind}`, "data-testid": "dialog-confirm" }, confirm);
    const form = h(
      "form",
      { method: "dialog", class: "dialog-form" },
      h("h2", {}, title),
      body,
      errorSlot,
      h(
        "div",
        { class: "dialog-actions" },
        h("button", { type: "button", class: "btn btn-ghost", onclick: () => close(null) }, "Cancel"),
        confirmButton,
      ),
    );
    let settled = false;
    const close = (value) => {
      if (settled) return;
      settled = true;
      d.close();
      resolve(value);
    };
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      confirmButton.disabled = true;
      errorSlot.replaceChildren();
      try {
        close(await submit(form));
      } catch (error) {
        replace(errorSlot, errorBox(error));
      } finally {
        confirmButton.disabled = false;
      }
    });
    d.onclose = () => close(null);
    d.replaceChildren(form);
    d.showModal();
    const first = form.querySelector("input:not([type=hidden]), select, textarea");
    if (first) first.focus();
  });
}

/** Ask before doing something that matters. */
export function confirmAction(title, message, confirm, kind = "primary", submit = async () => true) {
  return modal({ title, body: h("p", { class: "dialog-text" }, message), confirm, kind, submit });
}

/** A labelled form field. */
export function field(label, input, hint) {
  return h("label", { class: "field" }, h("span", { class: "field-label" }, label), input, hint ? h("span", { class: "field-hint" }, hint) : null);
}
