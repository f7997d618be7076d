// One request: what was asked and answered (OpenAI chat, Responses, Anthropic messages,
// embeddings; streamed answers are stored reassembled), tool calls, attempts, attribution, raw.
"use strict";

(() => {
  const { h } = GW;

  function pretty(text) { // tool arguments arrive as JSON text: indent them when they parse
    if (typeof text !== "string") return JSON.stringify(text, null, 2);
    try { return JSON.stringify(JSON.parse(text), null, 2); } catch { return text; }
  }

  function toolCall(name, args, id) {
    return h("div", { class: "tool-call" },
      h("div", {}, h("span", { class: "tool-name", text: `→ ${name || "tool"}` }),
        id ? h("span", { class: "muted small", text: `  ${id}` }) : null),
      h("pre", { text: pretty(args ?? "") }));
  }

  function toolResult(id, content) {
    return h("div", { class: "tool-call" },
      h("div", { class: "muted small", text: `tool result${id ? ` for ${id}` : ""}` }),
      h("pre", { text: typeof content === "string" ? pretty(content) : blocksText(content) }));
  }

  function blocksText(content) {
    if (content === null || content === undefined) return "";
    if (typeof content === "string") return content;
    if (Array.isArray(content)) return content.map(blocksText).filter(Boolean).join("\n");
    return content.text ?? content.thinking ?? (content.type ? `[${content.type}]` : JSON.stringify(content));
  }

  // the parts of one message's content, as DOM nodes
  function parts(content) {
    if (content === null || content === undefined) return [];
    if (typeof content === "string") return [h("div", { text: content })];
    if (!Array.isArray(content)) content = [content];
    return content.map((b) => {
      if (typeof b === "string") return h("div", { text: b });
      switch (b.type) {
        case "text": case "input_text": case "output_text":
          return h("div", { text: b.text ?? "" });
        case "thinking": case "reasoning":
          return h("div", { class: "muted", text: `(thinking) ${b.thinking ?? blocksText(b.summary) ?? ""}` });
        case "tool_use": return toolCall(b.name, b.input, b.id);
        case "tool_result": return toolResult(b.tool_use_id, b.content);
        case "function_call": return toolCall(b.name, b.arguments, b.call_id);
        case "function_call_output": return toolResult(b.call_id, b.output);
        case "image": case "image_url": case "input_image":
          return h("div", { class: "muted", text: "[image]" });
        default: return h("div", { class: "muted", text: `[${b.type || "part"}] ${blocksText(b)}` });
      }
    });
  }

  function message(role, nodes, extra) {
    return h("div", { class: `msg ${role}${extra ? ` ${extra}` : ""}` },
      h("div", { class: "msg-role", text: role }), h("div", { class: "msg-body" }, nodes));
  }

  function chatMessage(m) {
    const nodes = parts(m.content);
    for (const tc of m.tool_calls || []) nodes.push(toolCall(tc.function?.name, tc.function?.arguments, tc.id));
    if (m.role === "tool") return message("tool", [toolResult(m.tool_call_id, m.content)]);
    return message(m.role || "message", nodes);
  }

  function requestView(rec) {
    const body = rec.request_body;
    if (body === null || body === undefined) {
      return rec.last_user_prompt
        ? [message("user", parts(rec.last_user_prompt)), h("p", { class: "muted small", text: "Only the last user prompt is stored." })]
        : [h("p", { class: "muted", text: "The request body is not stored (content: metadata_only, or past retention.content_days)." })];
    }
    if (typeof body !== "object") return [message("body", [h("div", { text: String(body) })])];
    const out = [];
    if (body.system) out.push(message("system", parts(body.system)));
    if (body.instructions) out.push(message("system", parts(body.instructions)));
    if (Array.isArray(body.messages)) out.push(...body.messages.map(chatMessage));
    if (body.input !== undefined && rec.endpoint?.includes("embeddings")) {
      const inputs = Array.isArray(body.input) ? body.input : [body.input];
      out.push(message("input", inputs.map((t) => h("div", { text: typeof t === "string" ? t : JSON.stringify(t) }))));
    } else if (typeof body.input === "string") {
      out.push(message("user", parts(body.input)));
    } else if (Array.isArray(body.input)) {
      for (const item of body.input) {
        out.push(item.role ? chatMessage(item) : message(item.type || "item", parts([item])));
      }
    }
    if (body.tools?.length) {
      const names = body.tools.map((t) => t.function?.name || t.name || t.type).join(", ");
      out.push(h("p", { class: "muted small", text: `Tools offered: ${names}` }));
    }
    return out.length ? out : [h("pre", { class: "raw", text: JSON.stringify(body, null, 2) })];
  }

  function responseView(rec) {
    const body = rec.response_body;
    const out = [];
    if (rec.status !== "ok") {
      out.push(message("error", [h("div", { text: `${rec.status_code} ${rec.error_type || rec.status}: ${rec.error_message || ""}` })], "error"));
    }
    if (body === null || body === undefined) {
      if (rec.status === "ok") out.push(h("p", { class: "muted", text: "The response body is not stored." }));
      return out;
    }
    if (typeof body !== "object") return [...out, message("assistant", [h("div", { text: String(body) })])];
    if (body.error && rec.status === "ok") out.push(message("error", [h("div", { text: body.error.message || JSON.stringify(body.error) })], "error"));
    if (Array.isArray(body.choices)) {
      for (const c of body.choices) {
        const m = c.message || c.delta || {};
        out.push(chatMessage({ role: "assistant", ...m }));
        if (c.finish_reason) out.push(h("p", { class: "muted small", text: `finish reason: ${c.finish_reason}${rec.stream ? " · streamed, shown reassembled" : ""}` }));
      }
    } else if (Array.isArray(body.content)) {
      out.push(message("assistant", parts(body.content)));
      if (body.stop_reason) out.push(h("p", { class: "muted small", text: `stop reason: ${body.stop_reason}${rec.stream ? " · streamed, shown reassembled" : ""}` }));
    } else if (Array.isArray(body.output)) {
      const nodes = body.output.flatMap((item) => (item.type === "message" ? parts(item.content) : parts([item])));
      if (!nodes.length && body.output_text) nodes.push(h("div", { text: body.output_text }));
      out.push(message("assistant", nodes));
    } else if (Array.isArray(body.data) && body.data[0]?.embedding) {
      out.push(message("embeddings", [h("div", { text: `${body.data.length} vector(s) of ${body.data[0].embedding.length} dimensions` })]));
    } else if (!body.error) {
      out.push(h("pre", { class: "raw", text: JSON.stringify(body, null, 2) }));
    }
    return out;
  }

  function attempts(rec) {
    const list = rec.attempts || [];
    if (!list.length) return h("p", { class: "muted", text: "No upstream attempt (refused by the gateway)." });
    const longest = Math.max(...list.map((a) => a.duration_ms || 0), 1);
    return h("div", { class: "timeline" }, list.map((a, i) => h("div", { class: `attempt${a.reason === "ok" ? "" : " failed"}` },
      h("span", { class: "dot" }),
      h("div", {},
        h("div", {}, h("strong", { text: `${i + 1}. ${a.provider}/${a.model}` }),
          h("span", { class: "muted", text: ` · ${a.status_code ?? "no status"} · ${a.reason} · ${GW.ms(a.duration_ms)}` })),
        h("div", { class: "bar" }, h("i", { style: { width: `${(100 * (a.duration_ms || 0)) / longest}%` } }))))));
  }

  function kv(pairs) {
    return h("dl", { class: "kv" }, pairs.filter(([, v]) => v !== null && v !== undefined && v !== "")
      .flatMap(([k, v]) => [h("dt", { text: k }), h("dd", { text: String(v) })]));
  }

  function render(rec) {
    const el = document.getElementById("detail");
    const tokens = [["input", rec.input_tokens], ["output", rec.output_tokens], ["cache read", rec.cache_read_tokens],
      ["cache write", rec.cache_write_tokens], ["reasoning", rec.reasoning_tokens]].filter(([, v]) => v);
    const facts = [
      ["Started", GW.when(rec.started_at)], ["Latency", GW.ms(rec.duration_ms)], ["TTFT", GW.ms(rec.ttft_ms)],
      ["Tokens", tokens.length ? tokens.map(([k, v]) => `${GW.count(v)} ${k}`).join(", ") : "–"],
      ["Cost", rec.cost_usd === null ? "unknown price" : GW.money(rec.cost_usd, { usd: true })],
      ["Provider", rec.provider ?? "–"], ["Endpoint", rec.endpoint], ["Stream", rec.stream ? "yes" : "no"],
    ];
    const toolRows = (rec.tool_calls || []).map((t) => h("tr", {},
      h("td", { text: t.name }), h("td", { class: "mono muted", text: t.call_id ?? "" }),
      h("td", {}, h("pre", { class: "mono", style: { margin: 0, whiteSpace: "pre-wrap" }, text: pretty(t.arguments) }))));
    el.replaceChildren(
      h("div", { class: "detail-head" },
        h("h1", { text: rec.model || rec.model_requested || "request" }),
        h("span", { class: `badge ${rec.status}`, id: "detail-status", text: `${rec.status_code} ${rec.status.replace("_", " ")}` }),
        h("span", { class: "muted mono", text: rec.id })),
      h("section", { class: "card" }, h("dl", { class: "facts" }, facts.map(([k, v]) => h("div", {}, h("dt", { text: k }), h("dd", { text: v }))))),
      h("div", { class: "detail-grid" },
        h("div", {},
          h("section", { class: "card", id: "prompt" }, h("div", { class: "card-head" }, h("h2", { text: "Request" })), requestView(rec)),
          h("section", { class: "card", id: "response" }, h("div", { class: "card-head" }, h("h2", { text: "Response" })), responseView(rec)),
          toolRows.length ? h("section", { class: "card", id: "tool-calls" }, h("div", { class: "card-head" }, h("h2", { text: "Tool calls" })),
            h("table", { class: "data" }, h("thead", {}, h("tr", {}, h("th", { text: "Tool" }), h("th", { text: "Call id" }), h("th", { text: "Arguments" }))), h("tbody", {}, toolRows))) : null),
        h("div", {},
          h("section", { class: "card", id: "attempts" }, h("div", { class: "card-head" }, h("h2", { text: "Attempts" })), attempts(rec)),
          h("section", { class: "card", id: "attribution" }, h("div", { class: "card-head" }, h("h2", { text: "Attribution" })), kv([
            ["Organization", rec.org], ["User", rec.user], ["Key", rec.api_key_name ? `${rec.api_key_name} (${rec.api_key_id})` : rec.api_key_id],
            ["End user", rec.end_user], ["Session", rec.session], ["Workflow", rec.workflow], ["Client", rec.client],
            ["User agent", rec.user_agent], ["Source IP", rec.source_ip], ["Correlation id", rec.correlation_id],
            ["Model asked for", rec.model_requested], ["Tags", (rec.tags || []).join(", ")],
            ...Object.entries(rec.meta || {}).map(([k, v]) => [`meta.${k}`, v]),
          ])))),
      h("section", { class: "card" }, h("details", {}, h("summary", { text: "Raw JSON" }),
        h("pre", { class: "raw", id: "raw-json", text: JSON.stringify(rec, null, 2) }))),
    );
    document.title = `${rec.model || "Request"} · ${rec.status} · gatewatch`;
    GW.loaded(1);
  }

  document.addEventListener("DOMContentLoaded", async () => {
    const el = document.getElementById("detail");
    const back = document.getElementById("back-link");
    if (document.referrer.includes("/ui/requests?")) back.href = new URL(document.referrer).pathname + new URL(document.referrer).search;
    try {
      render(await GW.api(`/api/v1/requests/${encodeURIComponent(el.dataset.requestId)}`));
    } catch (err) {
      el.replaceChildren(h("div", { class: "empty big" }, h("h1", { text: "Request not found" }), h("p", { text: err.message })));
      GW.loaded(1);
    }
  });
})();
