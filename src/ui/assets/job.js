// One job: where it stands, how it got there (submission, polls, its end, its events), and
// every delivery of its events with each attempt.

import { api, path } from "./api.js";
import {
  h, replace, badge, mono, ago, exactTime, pageHeader, errorBox, button, toast, jsonBlock,
  outsideLink, confirmAction,
} from "./dom.js";
import { deliveryCard } from "./deliveries.js";
import { progressBar } from "./jobs.js";

export async function render(main, ctx) {
  const id = ctx.route.parts[1];
  const open = new Set();
  const slot = h("div", { class: "job-page" });
  const updated = h("span", { class: "updated muted" });
  replace(
    main,
    h("nav", { class: "crumbs" }, h("a", { href: "#/jobs" }, "Jobs"), " / ", h("span", { class: "mono" }, id)),
    slot,
  );

  let finished = false;
  async function refresh() {
    try {
      const [job, deliveries] = await Promise.all([
        api(path`/v1/jobs/${id}`),
        api(path`/v1/jobs/${id}/deliveries`),
      ]);
      if (!ctx.alive) return;
      finished = job.status !== "processing" && job.status !== "submitting" &&
        deliveries.data.every((d) => d.state !== "pending");
      updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
      draw(slot, job, deliveries.data, { open, refresh, updated });
    } catch (e) {
      if (ctx.alive) replace(slot, errorBox(e));
    }
  }
  await refresh();
  // Quick while something moves; slower once the job and its deliveries have settled.
  let ticks = 0;
  ctx.every(2000, () => {
    ticks += 1;
    if (!finished || ticks % 5 === 0) refresh();
  });
}

function draw(slot, job, deliveries, { open, refresh, updated }) {
  const agent = job.agent && typeof job.agent === "object" ? job.agent : {};
  const pending = job.status === "processing" || job.status === "submitting";
  const cancel = pending
    ? button(
        "Cancel job",
        async () => {
          const ok = await confirmAction(
            "Cancel this job?",
            "agenthook stops polling it and sends no event for it. The agent may still be generated upstream.",
            "Cancel job",
            "danger",
          );
          if (!ok) return;
          try {
            await api(path`/v1/jobs/${job.id}`, { method: "DELETE" });
            toast("Job cancelled");
          } catch (e) {
            toast(e.message, "error");
          }
          await refresh();
        },
        { kind: "ghost" },
      )
    : null;

  const failed = deliveries.filter((d) => d.state === "failed").length;
  replace(
    slot,
    pageHeader(
      h("span", { class: "title-with-badge" }, h("span", { class: "mono" }, job.id), badge(job.status)),
      h("span", {}, job.agent_id ? ["Agent ", mono(job.agent_id, { copy: true }), " · "] : null, "created ", ago(job.created_at)),
      updated,
      cancel,
    ),
    job.error
      ? h(
          "div",
          { class: "alert alert-error" },
          h("strong", {}, job.error.code),
          h("div", { class: "alert-details" }, job.error.message),
        )
      : null,
    h(
      "div",
      { class: "grid-2" },
      h("section", { class: "card" }, h("h2", { class: "card-title" }, "Timeline"), timeline(job, agent, deliveries)),
      h(
        "div",
        { class: "stack" },
        agentCard(job, agent),
        h(
          "section",
          { class: "card" },
          h("h2", { class: "card-title" }, "Callback and metadata"),
          h(
            "dl",
            { class: "kv" },
            kv("Callback URL", job.callback_url ? outsideLink(job.callback_url) : h("span", { class: "muted" }, "none: events go to subscriptions only")),
            kv("Metadata", Object.keys(job.metadata ?? {}).length ? jsonBlock(job.metadata) : h("span", { class: "muted" }, "none")),
          ),
        ),
      ),
    ),
    h(
      "section",
      { class: "section" },
      h(
        "div",
        { class: "section-head" },
        h("h2", {}, "Deliveries"),
        h(
          "span",
          { class: "muted" },
          deliveries.length === 0
            ? pending
              ? "Events are sent when the job ends."
              : "This job's events had no destination."
            : `${deliveries.length} deliver${deliveries.length === 1 ? "y" : "ies"}${failed ? `, ${failed} failed` : ""}`,
        ),
      ),
      deliveries.map((d) => deliveryCard(d, { open, onChange: refresh })),
    ),
  );
}

function kv(label, value) {
  return h("div", { class: "kv-item" }, h("dt", {}, label), h("dd", {}, value));
}

function agentCard(job, agent) {
  const text = (v) => (typeof v === "string" && v !== "" ? v : null);
  const progress = typeof agent.progress === "number" ? agent.progress : null;
  return h(
    "section",
    { class: "card" },
    h("h2", { class: "card-title" }, "Agent"),
    Object.keys(agent).length === 0
      ? h("p", { class: "muted" }, job.agent_id ? "Not polled yet." : "Not accepted upstream yet.")
      : h(
          "dl",
          { class: "kv" },
          kv("Name", text(agent.name) ?? h("span", { class: "muted" }, "—")),
          kv(
            "Upstream status",
            h(
              "span",
              {},
              h("span", { class: "mono" }, String(agent.status ?? "—")),
              progress !== null ? [" ", progressBar(progress), ` ${Math.round(progress * 100)} %`] : null,
              text(agent.progress_msg) ? h("span", { class: "muted" }, ` · ${agent.progress_msg}`) : null,
            ),
          ),
          text(agent.system_prompt)
            ? kv("Prompt", h("div", { class: "prompt", "data-testid": "agent-prompt" }, agent.system_prompt))
            : null,
          text(agent.error_message) ? kv("Upstream error", h("span", { class: "text-bad" }, agent.error_message)) : null,
          kv("Model", outsideLink(agent.model_url)),
          text(agent.image_url) ? kv("Image", outsideLink(agent.image_url)) : null,
          text(agent.video_url) ? kv("Video", outsideLink(agent.video_url)) : null,
        ),
    Object.keys(agent).length
      ? h("details", { class: "raw" }, h("summary", {}, "Latest upstream answer (JSON)"), jsonBlock(agent))
      : null,
  );
}

/** Submission, acceptance, polls, the end, and each event: what happened, in order. */
function timeline(job, agent, deliveries) {
  const items = [];
  items.push({ at: job.created_at, kind: "start", title: "Submitted", text: "Stored by agenthook and sent upstream." });
  if (job.agent_id) {
    items.push({
      at: typeof agent.created_at === "string" ? agent.created_at : null,
      kind: "start",
      title: "Accepted upstream",
      text: ["Agent ", h("span", { class: "mono" }, job.agent_id), "."],
    });
  } else if (job.status === "submitting") {
    items.push({ at: null, kind: "wait", title: "Waiting for upstream", text: "Upstream has not accepted the job yet; it is tried again in the background." });
  }
  if (job.polls > 0) {
    const progress = typeof agent.progress === "number" ? ` at ${Math.round(agent.progress * 100)} %` : "";
    items.push({
      at: job.completed_at ?? job.updated_at,
      kind: "poll",
      title: `Polled ${job.polls} time${job.polls === 1 ? "" : "s"}`,
      text: agent.status ? ["Latest answer: ", h("span", { class: "mono" }, String(agent.status)), progress, "."] : null,
    });
  }
  if (job.completed_at) {
    const titles = { ready: "Ready", failed: "Failed", cancelled: "Cancelled" };
    items.push({
      at: job.completed_at,
      kind: job.status,
      title: titles[job.status] ?? job.status,
      text: job.error ? `${job.error.code}: ${job.error.message}` : job.status === "ready" ? "The agent is generated." : null,
    });
  }
  const events = new Map();
  for (const d of deliveries) {
    const e = events.get(d.event_id) ?? { type: d.event_type, at: d.created_at, list: [] };
    e.list.push(d);
    if (d.created_at < e.at) e.at = d.created_at;
    events.set(d.event_id, e);
  }
  for (const [eventId, e] of events) {
    const count = (state) => e.list.filter((d) => d.state === state).length;
    const parts = [
      [count("succeeded"), "delivered"],
      [count("pending"), "pending"],
      [count("failed"), "failed"],
    ].filter(([n]) => n > 0).map(([n, what]) => `${n} ${what}`);
    items.push({
      at: e.at,
      kind: count("failed") ? "failed" : count("pending") ? "wait" : "ready",
      title: `Event ${e.type}`,
      text: [
        `To ${e.list.length} destination${e.list.length === 1 ? "" : "s"}: ${parts.join(", ")}. `,
        h("span", { class: "mono muted" }, eventId),
      ],
    });
  }
  if (!job.completed_at && job.next_poll_at) {
    items.push({ at: job.next_poll_at, kind: "wait", title: "Next poll", text: null, future: true });
  }
  return h(
    "ol",
    { class: "timeline" },
    items.map((item) =>
      h(
        "li",
        { class: `tl tl-${item.kind}${item.future ? " tl-future" : ""}` },
        h("span", { class: "tl-dot", "aria-hidden": "true" }),
        h(
          "div",
          { class: "tl-body" },
          h("div", { class: "tl-head" }, h("strong", {}, item.title), item.at ? h("span", { class: "tl-time", title: exactTime(item.at) }, ago(item.at)) : null),
          item.text ? h("div", { class: "tl-text" }, item.text) : null,
        ),
      ),
    ),
  );
}
