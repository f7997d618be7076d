// Time-series charts as plain SVG: stacked bars and lines over the API's buckets, with axes,
// units, a legend and hover values. Small on purpose (see docs/dashboard.md: why no library).
"use strict";

const Charts = (() => {
  const SVG = "http://www.w3.org/2000/svg";
  const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#edc948", "#76b7b2",
    "#ff9da7", "#9c755f", "#bab0ac", "#e15759"];
  const HEIGHT = 220;
  const M = { top: 18, right: 12, bottom: 26, left: 62 };
  const all = new Set();

  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
    for (const c of children) el.append(c);
    return el;
  }

  // integer: the axis steps by whole numbers (requests and tokens come in ones)
  const UNITS = {
    money: { title: () => GW.currency, tick: (v) => axisMoney(v), value: (v) => GW.money(v) },
    tokens: { title: () => "tokens", tick: axisNumber, value: (v) => GW.tokens(v), integer: true },
    requests: { title: () => "requests", tick: axisNumber, value: (v) => GW.count(v), integer: true },
    ms: { title: () => "ms", tick: axisNumber, value: (v) => GW.ms(v) },
  };

  function axisNumber(v) {
    if (Math.abs(v) >= 1e4 || Number.isInteger(v)) return GW.compact(v);
    return String(Number(v.toPrecision(3)));
  }

  function axisMoney(v) {
    if (v === 0) return "0";
    const sym = GW.money(0).replace(/[\d.,\s]/g, "");
    if (Math.abs(v) >= 1000) return sym + GW.compact(v);
    if (Math.abs(v) >= 1) return sym + Number(v.toFixed(2));
    return sym + Number(v.toPrecision(2));
  }

  // 0 and about five "nice" steps up to at least max
  function niceTicks(max, integer) {
    if (!(max > 0)) return [0, 1];
    const raw = max / 5;
    const mag = 10 ** Math.floor(Math.log10(raw));
    const factors = integer ? [1, 2, 5, 10] : [1, 2, 2.5, 5, 10];
    const step = Math.max(integer ? 1 : 0, factors.map((f) => f * mag).find((x) => x >= raw));
    const ticks = [];
    for (let v = 0; v < max + step * 0.999; v += step) ticks.push(Number(v.toPrecision(12)));
    return ticks;
  }

  function bucketLabel(iso, bucket, short) {
    const d = new Date(iso);
    if (bucket === "hour") {
      const hh = d.toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit" });
      return short && d.getHours() !== 0 ? hh
        : `${d.toLocaleDateString("en-GB", { day: "numeric", month: "short" })} ${hh}`;
    }
    if (bucket === "month") return d.toLocaleDateString("en-GB", { month: "short", year: "numeric" });
    const day = d.toLocaleDateString("en-GB", { weekday: short ? undefined : "short",
      day: "numeric", month: "short" });
    return bucket === "week" && !short ? `week of ${day}` : day;
  }

  function tooltipAt(event, title, rows, total) {
    const tip = document.getElementById("tooltip");
    tip.replaceChildren(GW.h("div", { class: "tt-title", text: title }),
      ...rows.map((r) => GW.h("div", { class: "tt-row" },
        GW.h("i", { style: { background: r.color } }), r.name, GW.h("span", { class: "v", text: r.value }))),
      total ? GW.h("div", { class: "tt-row tt-total" }, "Total", GW.h("span", { class: "v", text: total })) : null);
    tip.hidden = false;
    const w = tip.offsetWidth;
    const x = event.clientX + 14 + w > innerWidth ? event.clientX - w - 14 : event.clientX + 14;
    tip.style.left = `${x}px`;
    tip.style.top = `${Math.max(8, event.clientY - tip.offsetHeight - 10)}px`;
  }
  const hideTooltip = () => { document.getElementById("tooltip").hidden = true; };

  // spec: {labels: [iso], bucket, kind: "bar"|"line", unit, series: [{name, values, color}],
  //        onClick(index), empty: "message"}
  function draw(el, spec) {
    el._spec = spec;
    all.add(el);
    el.chartData = { labels: spec.labels, series: spec.series.map((x) => ({ name: x.name, values: x.values })) };
    el.replaceChildren();
    el.classList.toggle("clickable", Boolean(spec.onClick));
    const unit = UNITS[spec.unit];
    const series = spec.series.map((x, i) => ({ ...x, color: x.color || PALETTE[i % PALETTE.length] }));
    const n = spec.labels.length;
    const nothing = !series.length || series.every((x) => x.values.every((v) => !v));
    const width = Math.max(300, el.clientWidth || 600);
    const iw = width - M.left - M.right;
    const ih = HEIGHT - M.top - M.bottom;
    const band = iw / Math.max(n, 1);
    let max = 0;
    for (let i = 0; i < n; i++) {
      const vals = series.map((x) => x.values[i] || 0);
      max = Math.max(max, spec.kind === "bar" ? vals.reduce((a, b) => a + b, 0) : Math.max(...vals, 0));
    }
    const ticks = niceTicks(max, unit.integer);
    const top = ticks[ticks.length - 1];
    const y = (v) => M.top + ih - (v / top) * ih;
    const svg = s("svg", { viewBox: `0 0 ${width} ${HEIGHT}`, height: HEIGHT, role: "img",
      "aria-label": spec.title || "chart" });

    // axes and grid
    const axis = s("g", { class: "axis" });
    for (const t of ticks) {
      axis.append(s("line", { class: "grid-line", x1: M.left, x2: width - M.right, y1: y(t), y2: y(t) }));
      axis.append(s("text", { x: M.left - 6, y: y(t) + 4, "text-anchor": "end" }, unit.tick(t)));
    }
    axis.append(s("text", { class: "unit", x: 4, y: 11 }, unit.title()));
    axis.append(s("line", { class: "axis-line", x1: M.left, x2: width - M.right, y1: M.top + ih, y2: M.top + ih }));
    const every = Math.max(1, Math.ceil(n / Math.max(1, Math.floor(iw / 70))));
    for (let i = 0; i < n; i += every) {
      axis.append(s("text", { x: M.left + band * (i + 0.5), y: HEIGHT - 8, "text-anchor": "middle" },
        bucketLabel(spec.labels[i], spec.bucket, true)));
    }
    svg.append(axis);

    // data
    const plot = s("g", {});
    if (spec.kind === "bar") {
      const bw = Math.max(1, Math.min(band * 0.72, 48));
      for (let i = 0; i < n; i++) {
        let base = 0;
        for (const x of series) {
          const v = x.values[i] || 0;
          if (v > 0) {
            plot.append(s("rect", { x: M.left + band * i + (band - bw) / 2, y: y(base + v),
              width: bw, height: Math.max(0.5, y(base) - y(base + v)), fill: x.color }));
          }
          base += v;
        }
      }
    } else {
      for (const x of series) {
        let d = "";
        let pen = false;
        x.values.forEach((v, i) => {
          if (v === null || v === undefined) { pen = false; return; }
          d += `${pen ? "L" : "M"}${(M.left + band * (i + 0.5)).toFixed(1)},${y(v).toFixed(1)}`;
          pen = true;
        });
        plot.append(s("path", { d, fill: "none", stroke: x.color, "stroke-width": 2,
          "stroke-linejoin": "round" }));
        x.values.forEach((v, i) => { // dots show lone points between gaps
          if (v !== null && v !== undefined && n <= 60) {
            plot.append(s("circle", { cx: M.left + band * (i + 0.5), cy: y(v), r: 2.5, fill: x.color }));
          }
        });
      }
    }
    svg.append(plot);

    // hover and click
    const guide = s("line", { class: "guide", y1: M.top, y2: M.top + ih, visibility: "hidden" });
    const overlay = s("rect", { class: "overlay", x: M.left, y: M.top, width: iw, height: ih });
    const index = (ev) => {
      const box = svg.getBoundingClientRect();
      const px = ((ev.clientX - box.left) / box.width) * width;
      return Math.min(n - 1, Math.max(0, Math.floor((px - M.left) / band)));
    };
    overlay.addEventListener("mousemove", (ev) => {
      if (!n) return;
      const i = index(ev);
      const cx = M.left + band * (i + 0.5);
      guide.setAttribute("x1", cx);
      guide.setAttribute("x2", cx);
      guide.setAttribute("visibility", "visible");
      const rows = series.map((x) => ({ name: x.name, color: x.color, value: unit.value(x.values[i]) }));
      const total = spec.kind === "bar" && series.length > 1
        ? unit.value(series.reduce((a, x) => a + (x.values[i] || 0), 0)) : null;
      tooltipAt(ev, bucketLabel(spec.labels[i], spec.bucket, false), rows, total);
    });
    overlay.addEventListener("mouseleave", () => { guide.setAttribute("visibility", "hidden"); hideTooltip(); });
    // a click gives the bucket and, on stacked bars, the series under the pointer
    const seriesAt = (ev, i) => {
      const box = svg.getBoundingClientRect();
      const v = ((M.top + ih - ((ev.clientY - box.top) / box.height) * HEIGHT) / ih) * top;
      let sum = 0;
      return series.findIndex((x) => (sum += x.values[i] || 0) >= v && (x.values[i] || 0) > 0);
    };
    if (spec.onClick) {
      overlay.addEventListener("click", (ev) => {
        if (!n) return;
        const i = index(ev);
        const k = spec.kind === "bar" ? seriesAt(ev, i) : -1;
        spec.onClick(i, k >= 0 ? series[k].name : null);
      });
    }
    svg.append(guide, overlay);
    el.append(svg);

    const legend = GW.h("div", { class: "legend" }, series.map((x) =>
      GW.h("span", {}, GW.h("i", { class: spec.kind === "line" ? "line" : "", style: { background: x.color } }), x.name)));
    el.append(legend);
    if (nothing) el.append(GW.h("div", { class: "empty-chart", text: spec.empty || "No data in this range" }));
  }

  let pending = 0;
  const redraw = () => {
    cancelAnimationFrame(pending);
    pending = requestAnimationFrame(() => { for (const el of all) if (el.isConnected) draw(el, el._spec); });
  };
  addEventListener("resize", redraw);

  return { draw, PALETTE, bucketLabel };
})();
