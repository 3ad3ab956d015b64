// Jobs: filter by status, find one by job id or agent id, newest first.

import { api, path, query } from "./api.js";
import { h, replace, badge, mono, ago, tabs, pageHeader, errorBox, button } from "./dom.js";

const STATUSES = [
  ["", "All"],
  ["processing", "Processing"],
  ["submitting", "Submitting"],
  ["ready", "Ready"],
  ["failed", "Failed"],
  ["cancelled", "Cancelled"],
];
const PAGE = 50;

function href(status, q) {
  return `#/jobs${query({ status, q })}`;
}

export async function render(main, ctx) {
  const status = ctx.route.params.get("status") ?? "";
  const q = (ctx.route.params.get("q") ?? "").trim();
  let jobs = [];
  let next = null;
  let loaded = PAGE;

  const search = h("input", {
    type: "search",
    class: "search",
    placeholder: "Job id or agent id",
    "aria-label": "Find by job id or agent id",
    value: q,
    spellcheck: "false",
    "data-testid": "job-search",
  });
  const form = h(
    "form",
    {
      class: "search-form",
      role: "search",
      onsubmit: (e) => {
        e.preventDefault();
        window.location.hash = href(status, search.value.trim());
      },
    },
    search,
    h("button", { type: "submit", class: "btn btn-secondary" }, "Find"),
  );
  const updated = h("span", { class: "updated muted" });
  const body = h("div", { class: "card card-flush" });
  replace(
    main,
    pageHeader("Jobs", "Every generation job of this tenant, newest first.", updated, form),
    h(
      "div",
      { class: "toolbar" },
      tabs(STATUSES, status, (s) => href(s, q)),
      q
        ? h(
            "div",
            { class: "search-note" },
            "Results for ",
            h("span", { class: "mono" }, q),
            " · ",
            h("a", { href: href(status, "") }, "clear"),
          )
        : null,
    ),
    body,
  );

  async function load() {
    if (q) {
      next = null;
      if (/^job_/i.test(q)) {
        try {
          const one = await api(path`/v1/jobs/${q}`);
          jobs = !status || one.status === status ? [one] : [];
        } catch (e) {
          if (e.status !== 404) throw e;
          jobs = [];
        }
      } else {
        jobs = (await api(`/v1/jobs${query({ agent_id: q, status })}`)).data;
      }
    } else {
      const page = await api(`/v1/jobs${query({ status, limit: Math.min(loaded, 100) })}`);
      jobs = page.data;
      next = page.next;
    }
  }

  async function more() {
    const page = await api(`/v1/jobs${query({ status, limit: PAGE, after: next })}`);
    if (!ctx.alive) return;
    jobs = jobs.concat(page.data);
    next = page.next;
    loaded = jobs.length;
    draw();
  }

  function draw() {
    updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
    if (jobs.length === 0) {
      replace(body, empty(q, status));
      return;
    }
    replace(
      body,
      h(
        "table",
        { class: "table table-jobs" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            h("th", {}, "Job"),
            h("th", {}, "Status"),
            h("th", {}, "Agent"),
            h("th", { class: "col-wide" }, "Name and prompt"),
            h("th", {}, "Created"),
            h("th", {}, "Finished"),
            h("th", { class: "num" }, "Polls"),
          ),
        ),
        h("tbody", {}, jobs.map(row)),
      ),
      next && !q
        ? h("div", { class: "table-foot" }, button("Load more", more, { testid: "load-more" }))
        : null,
    );
  }

  async function refresh() {
    try {
      await load();
      if (ctx.alive) draw();
    } catch (e) {
      if (ctx.alive) replace(body, errorBox(e));
    }
  }

  await load();
  if (!ctx.alive) return;
  draw();
  ctx.every(3000, refresh);
}

function row(job) {
  const agent = job.agent && typeof job.agent === "object" ? job.agent : {};
  const to = `#/jobs/${encodeURIComponent(job.id)}`;
  const progress = typeof agent.progress === "number" ? agent.progress : null;
  const statusCell = h("td", {}, badge(job.status));
  if (job.status === "processing" && progress !== null) {
    statusCell.append(progressBar(progress));
  }
  const tr = h(
    "tr",
    {
      class: "clickable",
      "data-job-id": job.id,
      onclick: (e) => {
        if (e.target.closest("a, button")) return;
        window.location.hash = to;
      },
    },
    h("td", {}, h("a", { href: to, class: "mono strong" }, job.id)),
    statusCell,
    h("td", {}, job.agent_id ? mono(job.agent_id) : h("span", { class: "muted" }, "—")),
    h(
      "td",
      { class: "col-wide" },
      h("div", { class: "cell-title" }, typeof agent.name === "string" ? agent.name : ""),
      typeof agent.system_prompt === "string"
        ? h("div", { class: "cell-sub prompt-preview" }, agent.system_prompt)
        : null,
      job.error ? h("div", { class: "cell-sub text-bad" }, `${job.error.code}: ${job.error.message}`) : null,
    ),
    h("td", {}, ago(job.created_at)),
    h(
      "td",
      {},
      job.completed_at
        ? ago(job.completed_at)
        : job.next_poll_at
          ? h("span", { class: "muted" }, "next poll ", ago(job.next_poll_at))
          : h("span", { class: "muted" }, "—"),
    ),
    h("td", { class: "num" }, String(job.polls)),
  );
  return tr;
}

export function progressBar(fraction) {
  const pct = Math.max(0, Math.min(100, Math.round(fraction * 100)));
  const fill = h("span", { class: "progress-fill" });
  // CSSOM, not a style attribute: the policy forbids inline styles, not this.
  fill.style.width = `${pct}%`;
  return h(
    "span",
    { class: "progress", title: `${pct} %`, role: "progressbar", "aria-valuenow": pct, "aria-valuemin": 0, "aria-valuemax": 100 },
    fill,
  );
}

function empty(q, status) {
  if (q) {
    return h(
      "div",
      { class: "empty" },
      h("h2", {}, "No job found"),
      h("p", {}, "No job of this tenant has that job id or agent id", status ? ` with status ${status}.` : "."),
    );
  }
  return h(
    "div",
    { class: "empty" },
    h("h2", {}, status ? `No ${status} jobs` : "No jobs yet"),
    h("p", {}, "Jobs appear here as soon as they are created through the API:"),
    h(
      "pre",
      { class: "code" },
      `curl -X POST ${window.location.origin}/v1/jobs \\\n  -H 'Authorization: Bearer YOUR_KEY' -H 'content-type: application/json' \\\n  -d '{"prompt": "You are a friendly museum guide."}'`,
    ),
  );
}
