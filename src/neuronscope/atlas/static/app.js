/* neuronscope atlas: a static, offline viewer for the neurons of one run.
 *
 * Security rule of this file: data never becomes markup. Every string that came from the
 * run (corpus tokens, site names, metadata) enters the DOM through textContent, text nodes
 * or setAttribute on non-URL attributes; links are built here as "#/" + encodeURIComponent,
 * and the only other URL, a thumbnail's src, must be a base64 PNG data: URI (DATA_PNG).
 * There is no innerHTML, insertAdjacentHTML, document.write or eval anywhere.
 *
 * Data files are classic scripts (file:// pages cannot fetch JSON) that assign to
 * window.NS_DATA[key]; they are loaded on demand by adding a <script src> element.
 */
(function () {
  "use strict";

  const NS = (window.NS_DATA = window.NS_DATA || {});
  const SVGNS = "http://www.w3.org/2000/svg";
  const PAGE_SIZE = 100;
  /* 24 colours, each at least ΔE76 ≈ 30 from every other (greedy max-min selection from the
     Tableau 10, Kelly's 22 and a few web colours; none lighter than L* 88 on white). */
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#0000ff",
    "#654522", "#ff00ff", "#dcd300", "#00ff00", "#ff1493", "#00ced1", "#000080", "#c2b280",
    "#e68fac", "#808000", "#a1caf1", "#7f7f7f", "#222222", "#8b008b", "#008856", "#f99379",
    "#1e90ff", "#008080"];
  const DATA_PNG = /^data:image\/png;base64,[A-Za-z0-9+\/]+={0,2}$/;
  const pending = {};
  const siteState = {};
  let renderToken = 0;

  const has = (o, k) => Object.prototype.hasOwnProperty.call(o, k);

  /* ---------- data loading ---------- */

  function load(key) {
    if (has(NS, key)) return Promise.resolve(NS[key]);
    if (pending[key]) return pending[key];
    pending[key] = new Promise((resolve, reject) => {
      const s = document.createElement("script");
      s.src = "data/" + key + ".js";
      s.charset = "utf-8";
      s.onload = () => (has(NS, key) ? resolve(NS[key])
        : reject(new Error("data/" + key + ".js did not define its data")));
      s.onerror = () => {
        delete pending[key];
        reject(new Error("could not load data/" + key + ".js"));
      };
      document.head.appendChild(s);
    });
    return pending[key];
  }

  /* ---------- DOM helpers (text only) ---------- */

  function append(parent, children) {
    if (children === null || children === undefined) return parent;
    if (!Array.isArray(children)) children = [children];
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      parent.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
    }
    return parent;
  }

  function el(tag, props, children) {
    const e = document.createElement(tag);
    if (props) {
      for (const k of Object.keys(props)) {
        const v = props[k];
        if (v === null || v === undefined) continue;
        if (k === "text") e.textContent = String(v);
        else if (k === "cls") e.className = v;
        else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
        else if (k === "href") e.setAttribute("href", internalHref(v));
        else e.setAttribute(k, String(v));
      }
    }
    return append(e, children);
  }

  function sv(tag, attrs, children) {
    const e = document.createElementNS(SVGNS, tag);
    if (attrs) for (const k of Object.keys(attrs)) e.setAttribute(k, String(attrs[k]));
    if (children !== undefined) append(e, children);
    return e;
  }

  /* Only in-page routes are ever used as link targets. */
  function internalHref(h) {
    if (typeof h !== "string" || h.charAt(0) !== "#") throw new Error("non-internal link");
    return h;
  }

  const enc = encodeURIComponent;
  const siteHref = (site) => "#/" + enc(site);
  const neuronHref = (site, unit) => "#/" + enc(site) + "/" + unit;

  /* ---------- number formatting ---------- */

  function fmt(v, digits) {
    if (v === null || v === undefined) return "–";
    if (typeof v === "boolean") return v ? "yes" : "no";
    if (typeof v !== "number") return String(v);
    if (!isFinite(v)) return String(v);
    if (Number.isInteger(v) && Math.abs(v) < 1e15) return String(v);
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential((digits || 3) - 1);
    return v.toPrecision(digits || 3).replace(/(\.\d*?)0+$/, "$1").replace(/\.$/, "");
  }
  /* What one sample of this run is called ("token", "image", "item", "stimulus"). */
  const words = (idx) => idx.words || { kind: "text", one: "token", many: "tokens" };
  const pct = (v) => (v === null || v === undefined ? "–" : fmt(100 * v, 3) + " %");
  /* site_summary reports pct_active_per_token already in percent. */
  const pctOf = (v) => (v === null || v === undefined ? "–" : fmt(v, 3) + " %");

  /* ---------- plots ---------- */

  function niceLogTicks(lo, hi) {
    const out = [];
    for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
      const v = Math.pow(10, e);
      if (v >= lo * 0.999 && v <= hi * 1.001) out.push(v);
    }
    return out;
  }

  function linTicks(lo, hi, n) {
    const span = hi - lo || 1;
    const step0 = span / n;
    const mag = Math.pow(10, Math.floor(Math.log10(step0)));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => span / s <= n) || 10 * mag;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-12 * span; v += step) out.push(+v.toPrecision(12));
    return out;
  }

  function axes(svg, box, xTicks, yTicks, xPos, yPos, xLabel, yLabel) {
    const [x0, y0, x1, y1] = box;
    svg.appendChild(sv("line", { x1: x0, y1: y1, x2: x1, y2: y1, class: "axis" }));
    svg.appendChild(sv("line", { x1: x0, y1: y0, x2: x0, y2: y1, class: "axis" }));
    for (const t of xTicks) {
      const x = xPos(t);
      svg.appendChild(sv("line", { x1: x, y1: y1, x2: x, y2: y1 + 4, class: "axis" }));
      svg.appendChild(sv("text", { x: x, y: y1 + 16, class: "tick", "text-anchor": "middle" }, fmt(t, 2)));
    }
    for (const t of yTicks) {
      const y = yPos(t);
      svg.appendChild(sv("line", { x1: x0 - 4, y1: y, x2: x0, y2: y, class: "axis" }));
      svg.appendChild(sv("text", { x: x0 - 6, y: y + 4, class: "tick", "text-anchor": "end" }, fmt(t, 2)));
    }
    svg.appendChild(sv("text", { x: (x0 + x1) / 2, y: y1 + 32, class: "label", "text-anchor": "middle" }, xLabel));
    svg.appendChild(sv("text", {
      x: 12, y: (y0 + y1) / 2, class: "label", "text-anchor": "middle",
      transform: "rotate(-90 12 " + (y0 + y1) / 2 + ")",
    }, yLabel));
  }

  /* Firing frequency against rank on log-log axes (the hot/cold power law of PowerInfer). */
  function powerLawPlot(sites) {
    const W = 560, H = 320, box = [64, 14, W - 14, H - 44];
    const svg = sv("svg", { viewBox: "0 0 " + W + " " + H, class: "plot", role: "img", id: "rank-plot" });
    svg.appendChild(sv("title", {}, "firing frequency by rank (log-log)"));
    let rMax = 1, fLo = Infinity, fHi = 0;
    for (const s of sites) {
      for (let i = 0; i < s.rank.r.length; i++) {
        rMax = Math.max(rMax, s.rank.r[i]);
        if (s.rank.f[i] > 0) { fLo = Math.min(fLo, s.rank.f[i]); fHi = Math.max(fHi, s.rank.f[i]); }
      }
    }
    if (!(fHi > 0)) {
      svg.appendChild(sv("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "label" },
        "no neuron fired"));
      return svg;
    }
    const lx0 = 0, lx1 = Math.log10(Math.max(rMax, 10));
    const ly0 = Math.floor(Math.log10(fLo) + 1e-9);
    const ly1 = Math.max(ly0 + 1, Math.ceil(Math.log10(fHi) - 1e-9));
    const xPos = (r) => box[0] + (Math.log10(r) - lx0) / (lx1 - lx0) * (box[2] - box[0]);
    const yPos = (f) => box[3] - (Math.log10(f) - ly0) / Math.max(ly1 - ly0, 1e-9) * (box[3] - box[1]);
    axes(svg, box, niceLogTicks(1, Math.pow(10, lx1)), niceLogTicks(Math.pow(10, ly0), Math.pow(10, ly1)),
      xPos, yPos, "rank of neuron (by firing frequency)", "firing frequency");
    sites.forEach((s, i) => {
      const pts = [];
      for (let j = 0; j < s.rank.r.length; j++) {
        if (s.rank.f[j] > 0) pts.push(xPos(s.rank.r[j]).toFixed(1) + "," + yPos(s.rank.f[j]).toFixed(1));
      }
      const line = sv("polyline", { points: pts.join(" "), fill: "none", stroke: siteColor(i),
        "stroke-width": 1.6, class: "rank-line" });
      line.appendChild(sv("title", {}, s.name));
      svg.appendChild(line);
    });
    return svg;
  }

  /* A site's colour: one of 24 distinct colours (a dash pattern tells repeats apart past 24). */
  const siteColor = (i) => PALETTE[i % PALETTE.length];

  /* The legend of the rank plot as HTML: full site names, wrapped, never cut. */
  function rankLegend(sites) {
    const ul = el("ul", { cls: "legend", id: "rank-legend" });
    sites.forEach((s, i) => {
      const sw = el("span", { cls: "swatch", "aria-hidden": "true" });
      sw.style.backgroundColor = siteColor(i);
      ul.appendChild(el("li", null, [sw, el("span", { cls: "legend-name", text: s.name })]));
    });
    return ul;
  }

  function shorten(s, n) {
    s = String(s);
    return s.length <= n ? s : "…" + s.slice(s.length - n + 1);
  }

  /* Activation histogram on the summary's own bins (fixed per site), its x-range the neuron's
     own [min, max]: every bin that overlaps that range is one bar (empty ones have height 0),
     the first and last clipped to the range. Without min/max: the bins around the non-empty ones. */
  function histogramPlot(edges, counts, logY, vmin, vmax) {
    const W = 560, H = 240, box = [64, 10, W - 14, H - 44];
    const svg = sv("svg", { viewBox: "0 0 " + W + " " + H, class: "plot", role: "img" });
    svg.appendChild(sv("title", {}, "activation histogram"));
    const nb = counts.length;
    let first, last, lo, hi;
    const ranged = typeof vmin === "number" && typeof vmax === "number" && isFinite(vmin) && isFinite(vmax)
      && vmax >= vmin && vmax >= edges[0] && vmin <= edges[nb];
    if (ranged) {
      first = 0; while (first < nb - 1 && edges[first + 1] <= vmin) first++;
      last = nb - 1; while (last > first && edges[last] > vmax) last--;
      lo = Math.max(vmin, edges[first]); hi = Math.min(vmax, edges[last + 1]);
      if (!(hi > lo)) { lo = edges[first]; hi = edges[last + 1]; }
    } else {
      first = counts.findIndex((c) => c > 0); last = nb - 1;
      while (last > 0 && !counts[last]) last--;
      if (first < 0) { first = 0; last = nb - 1; }
      first = Math.max(0, first - 1);
      last = Math.min(nb - 1, last + 1);
      lo = edges[first]; hi = edges[last + 1];
    }
    let cMax = 1;
    for (let i = first; i <= last; i++) cMax = Math.max(cMax, counts[i]);
    const xPos = (v) => box[0] + (Math.min(hi, Math.max(lo, v)) - lo) / (hi - lo || 1) * (box[2] - box[0]);
    const yv = (c) => (logY ? Math.log10(1 + c) / Math.log10(1 + cMax) : c / cMax);
    const yPos = (c) => box[3] - yv(c) * (box[3] - box[1]);
    const yTicks = logY ? niceLogTicks(1, cMax) : linTicks(0, cMax, 4);
    axes(svg, box, linTicks(lo, hi, 6), yTicks, xPos, yPos, "activation",
      logY ? "count (log scale)" : "count");
    const gap = (last - first) < 80 ? 0.3 : 0;
    for (let i = first; i <= last; i++) {
      const x = xPos(edges[i]), w = Math.max(0.5, xPos(edges[i + 1]) - x - gap);
      const r = sv("rect", { x: x.toFixed(2), y: yPos(counts[i]).toFixed(2), width: w.toFixed(2),
        height: (box[3] - yPos(counts[i])).toFixed(2), class: counts[i] ? "bar" : "bar empty" });
      r.appendChild(sv("title", {}, "[" + fmt(edges[i]) + ", " + fmt(edges[i + 1]) + "): " + counts[i]));
      svg.appendChild(r);
    }
    if (lo < 0 && hi > 0) {
      svg.appendChild(sv("line", { x1: xPos(0), y1: box[1], x2: xPos(0), y2: box[3], class: "zero" }));
    }
    return svg;
  }

  function viridis(t) {
    const stops = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
    t = Math.min(1, Math.max(0, isFinite(t) ? t : 0)) * (stops.length - 1);
    const i = Math.min(stops.length - 2, Math.floor(t)), f = t - i;
    const c = stops[i].map((v, k) => Math.round(v + f * (stops[i + 1][k] - v)));
    return "rgb(" + c.join(",") + ")";
  }

  function heatmapPlot(hm) {
    const rows = hm.matrix.length, cols = rows ? hm.matrix[0].length : 0;
    const cell = Math.max(3, Math.min(28, Math.floor(560 / Math.max(rows, cols, 1))));
    const longest = (ls) => (ls ? Math.min(20, Math.max(1, ...ls.map((l) => String(l).length))) : 0);
    const labelW = hm.rows ? 12 + 6.2 * longest(hm.rows) : 10;
    const top = hm.cols ? 12 + 5.4 * longest(hm.cols) : 10;
    const W = labelW + cols * cell + 90, H = top + rows * cell + 10;
    const svg = sv("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, class: "heatmap", role: "img" });
    svg.appendChild(sv("title", {}, hm.title || "heatmap"));
    let lo = Infinity, hi = -Infinity;
    for (const r of hm.matrix) for (const v of r) if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    if (hm.vmin !== null && hm.vmin !== undefined) lo = hm.vmin;
    if (hm.vmax !== null && hm.vmax !== undefined) hi = hm.vmax;
    const span = hi - lo || 1;
    const showText = cell >= 28 && rows * cols <= 400;
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < cols; j++) {
        const v = hm.matrix[i][j];
        const r = sv("rect", { x: labelW + j * cell, y: top + i * cell, width: cell, height: cell,
          fill: v === null ? "#eee" : viridis((v - lo) / span) });
        const rl = hm.rows ? hm.rows[i] : String(i), cl = hm.cols ? hm.cols[j] : String(j);
        r.appendChild(sv("title", {}, rl + " × " + cl + ": " + fmt(v, 4)));
        svg.appendChild(r);
        if (showText && v !== null) {
          svg.appendChild(sv("text", { x: labelW + j * cell + cell / 2, y: top + i * cell + cell / 2 + 4,
            "text-anchor": "middle", class: "cellval",
            fill: (v - lo) / span > 0.6 ? "#000" : "#fff" }, Math.abs(v) < 100 ? v.toFixed(2) : fmt(v, 2)));
        }
      }
    }
    const every = Math.max(1, Math.ceil(11 / cell));
    if (hm.rows) hm.rows.forEach((l, i) => {
      if (i % every) return;
      svg.appendChild(sv("text", { x: labelW - 4, y: top + i * cell + cell / 2 + 4, "text-anchor": "end",
        class: "tick" }, shorten(l, 20)));
    });
    if (hm.cols) hm.cols.forEach((l, j) => {
      if (j % every) return;
      const x = labelW + j * cell + cell / 2 + 4, y = top - 4;
      svg.appendChild(sv("text", { x: x, y: y, class: "tick", transform: "rotate(-60 " + x + " " + y + ")" },
        shorten(l, 20)));
    });
    const gx = labelW + cols * cell + 16;
    for (let k = 0; k < 50; k++) {
      svg.appendChild(sv("rect", { x: gx, y: top + (49 - k) * 3, width: 14, height: 3.2, fill: viridis(k / 49) }));
    }
    svg.appendChild(sv("text", { x: gx + 18, y: top + 8, class: "tick" }, fmt(hi, 3)));
    svg.appendChild(sv("text", { x: gx + 18, y: top + 150, class: "tick" }, fmt(lo, 3)));
    svg.setAttribute("height", Math.max(H, top + 160));
    svg.setAttribute("viewBox", "0 0 " + W + " " + Math.max(H, top + 160));
    return svg;
  }

  /* ---------- pages ---------- */

  function crumbs(parts) {
    const nav = el("nav", { cls: "crumbs" });
    parts.forEach((p, i) => {
      if (i) append(nav, " / ");
      append(nav, p.href ? el("a", { href: p.href, text: p.text }) : el("span", { text: p.text }));
    });
    return nav;
  }

  function kvTable(obj) {
    const t = el("table", { cls: "kv" });
    for (const k of Object.keys(obj)) {
      const v = obj[k];
      t.appendChild(el("tr", null, [el("th", { text: k }),
        el("td", { text: typeof v === "object" && v !== null ? JSON.stringify(v) : fmt(v, 4) })]));
    }
    return t;
  }

  function pageIndex(main, idx) {
    document.title = "neuronscope atlas";
    append(main, el("h1", { text: "neuronscope atlas" }));
    append(main, el("p", { cls: "lede", text: idx.title }));
    append(main, kvTable(idx.meta));
    append(main, el("h2", { text: "Sites" }));
    const t = el("table", { cls: "grid", id: "sites" });
    const head = ["site", "units", "samples", "mean % active / " + words(idx).one, "dead %", "dormant %",
      "power-law exponent", "top-20 % share"];
    t.appendChild(el("thead", null, el("tr", null, head.map((h) => el("th", { text: h })))));
    const tb = el("tbody");
    for (const s of idx.sites) {
      const m = s.summary;
      tb.appendChild(el("tr", null, [
        el("td", null, el("a", { href: siteHref(s.name), text: s.name, cls: "site-link" })),
        el("td", { cls: "num", text: fmt(s.units) }),
        el("td", { cls: "num", text: fmt(m.samples) }),
        el("td", { cls: "num", text: pctOf(m.pct_active_per_token) }),
        el("td", { cls: "num", text: pct(m.dead_frac) }),
        el("td", { cls: "num", text: pct(m.dormant_frac) }),
        el("td", { cls: "num", text: fmt(m.powerlaw_exponent) }),
        el("td", { cls: "num", text: pct(m.top20_share) }),
      ]));
    }
    t.appendChild(tb);
    append(main, t);
    append(main, el("h2", { text: "Firing frequency by rank" }));
    append(main, el("p", { cls: "note", text: "Each neuron's fraction of " + words(idx).many +
      " with activation > 0, sorted; a straight line on these log-log axes is a power law (hot and " +
      "cold neurons). Dead neurons (never active) cannot be drawn on a log axis." }));
    append(main, el("div", { cls: "rankbox" }, [el("div", { cls: "plotbox" }, powerLawPlot(idx.sites)),
      rankLegend(idx.sites)]));
    if (idx.label_pages && idx.label_pages.length) {
      append(main, el("h2", { text: "Labels" }));
      const ul = el("ul", { id: "labels" });
      idx.label_pages.forEach((l) => ul.appendChild(el("li", null, [
        el("a", { href: "#/labels/" + enc(l.field), text: l.field }),
        " (" + l.values + " values): neurons specific to each value, probe accuracy by k"])));
      append(main, ul);
    }
    if (idx.extras.length) {
      append(main, el("h2", { text: "Comparisons, matchings and causal results" }));
      const ul = el("ul", { id: "extras" });
      idx.extras.forEach((x) => ul.appendChild(el("li", null,
        el("a", { href: "#/compare/" + enc(x.name), text: x.title || x.name }))));
      append(main, ul);
    }
  }

  /* Columns of the site table (a subset) and of a neuron's statistics (all known ones). */
  const TABLE_COLS = ["unit", "freq", "mean", "std", "max", "dead", "dormant_score", "dormant",
    "positional_score", "token_score", "top_token", "hot_rank", "importance"];

  /* Token columns mean nothing for images, items or stimuli: shown for text runs only. */
  const TOKEN_COLS = ["token_score", "top_token"];

  function columnSpec(site, tableOnly, idx) {
    const text = !idx || words(idx).kind === "text";
    const labels = {
      unit: "unit", freq: "freq", mean: "mean", std: "std", mean_abs: "mean |a|", min: "min",
      max: "max", dead: "dead", dormant_score: "dormant score", dormant: "dormant",
      positional_score: "positional score", positional: "positional", token_score: "token score",
      top_token: "top token", hot_rank: "hot rank", module: "module", importance: "importance",
    };
    return site.columns.filter((c) => has(labels, c) && (!tableOnly || TABLE_COLS.includes(c)) &&
      (text || !TOKEN_COLS.includes(c)))
      .map((c) => ({ key: c, label: labels[c] }));
  }

  function pageSite(main, idx, s, data) {
    document.title = "neuronscope atlas · " + s.name;
    append(main, crumbs([{ text: "atlas", href: "#/" }, { text: s.name }]));
    append(main, el("h1", { text: s.name }));
    append(main, el("p", { cls: "lede", text: fmt(s.units) + " neurons · " + pctOf(s.summary.pct_active_per_token) +
      " active per " + words(idx).one + " · " + pct(s.summary.dead_frac) + " dead · " +
      pct(s.summary.dormant_frac) + " dormant" }));
    const st = siteState[s.name] || (siteState[s.name] = {
      sort: "freq", desc: true, q: "", hideDead: false, dormantOnly: false, positionalOnly: false, page: 0,
    });
    const cols = columnSpec(data, true, idx);
    /* The table state is also in the URL (shareable links): sort, desc, q, dead, dormant, positional, page. */
    const qp = query();
    if (qp.has("sort") && cols.some((c) => c.key === qp.get("sort"))) st.sort = qp.get("sort");
    if (qp.has("desc")) st.desc = qp.get("desc") !== "0";
    if (qp.has("q")) st.q = qp.get("q");
    if (qp.has("dead")) st.hideDead = qp.get("dead") === "0";
    if (qp.has("dormant")) st.dormantOnly = qp.get("dormant") === "1";
    if (qp.has("positional")) st.positionalOnly = qp.get("positional") === "1";
    if (qp.has("page")) st.page = Math.max(0, (parseInt(qp.get("page"), 10) || 1) - 1);
    const n = data.rows.unit.length;
    const controls = el("div", { cls: "controls" });
    const q = el("input", { type: "search", id: "filter",
      placeholder: words(idx).kind === "text" ? "filter: unit number or top token" : "filter: unit number" });
    q.value = st.q;
    const box = (label, key) => {
      const c = el("input", { type: "checkbox" });
      c.checked = st[key];
      c.addEventListener("change", () => { st[key] = c.checked; st.page = 0; draw(); });
      return el("label", null, [c, " " + label]);
    };
    append(controls, [q, box("hide dead", "hideDead"), box("dormant only", "dormantOnly"),
      box("positional only", "positionalOnly")]);
    const status = el("span", { cls: "status" });
    append(controls, status);
    append(main, controls);
    const table = el("table", { cls: "grid neurons", id: "neurons" });
    const thead = el("thead");
    const tbody = el("tbody");
    table.appendChild(thead);
    table.appendChild(tbody);
    append(main, table);
    const pager = el("div", { cls: "pager" });
    append(main, pager);
    q.addEventListener("input", () => { st.q = q.value; st.page = 0; draw(); });

    function order() {
      const R = data.rows, query = st.q.trim().toLowerCase();
      const idxs = [];
      for (let i = 0; i < n; i++) {
        if (st.hideDead && R.dead && R.dead[i]) continue;
        if (st.dormantOnly && R.dormant && !R.dormant[i]) continue;
        if (st.positionalOnly && R.positional && !R.positional[i]) continue;
        if (query) {
          const tok = R.top_token ? String(R.top_token[i] === null ? "" : R.top_token[i]).toLowerCase() : "";
          if (String(R.unit[i]) !== query && tok.indexOf(query) < 0) continue;
        }
        idxs.push(i);
      }
      const col = R[st.sort] || R.unit, dir = st.desc ? -1 : 1;
      idxs.sort((a, b) => {
        const va = col[a], vb = col[b];
        if (va === vb) return R.unit[a] - R.unit[b];
        if (va === null || va === undefined) return 1;
        if (vb === null || vb === undefined) return -1;
        return (va < vb ? -1 : 1) * dir;
      });
      return idxs;
    }

    function draw() {
      const t0 = performance.now();
      thead.textContent = "";
      const hr = el("tr");
      for (const c of cols) {
        const mark = st.sort === c.key ? (st.desc ? " ▼" : " ▲") : "";
        hr.appendChild(el("th", { cls: "sortable", "data-col": c.key, text: c.label + mark,
          title: "sort by " + c.label,
          onclick: () => {
            if (st.sort === c.key) st.desc = !st.desc; else { st.sort = c.key; st.desc = c.key !== "unit"; }
            st.page = 0; draw();
          } }));
      }
      thead.appendChild(hr);
      const idxs = order();
      const pages = Math.max(1, Math.ceil(idxs.length / PAGE_SIZE));
      st.page = Math.min(st.page, pages - 1);
      tbody.textContent = "";
      const frag = document.createDocumentFragment();
      for (const i of idxs.slice(st.page * PAGE_SIZE, (st.page + 1) * PAGE_SIZE)) {
        const unit = data.rows.unit[i];
        const tr = el("tr");
        for (const c of cols) {
          const v = data.rows[c.key][i];
          let td;
          if (c.key === "unit") td = el("td", { cls: "num" }, el("a", { href: neuronHref(s.name, unit), text: unit }));
          else if (c.key === "freq") td = el("td", { cls: "num", text: pct(v) });
          else if (c.key === "top_token") td = el("td", null, el("span", { cls: "tok", text: v === null ? "–" : v, title: v === null ? null : v }));
          else td = el("td", { cls: typeof v === "number" ? "num" : "", text: fmt(v) });
          tr.appendChild(td);
        }
        frag.appendChild(tr);
      }
      tbody.appendChild(frag);
      status.textContent = idxs.length + " of " + n + " neurons";
      pager.textContent = "";
      const go = (p) => () => { st.page = p; draw(); };
      append(pager, [
        el("button", { text: "« first", onclick: go(0), disabled: st.page === 0 ? "" : null }),
        el("button", { text: "‹ prev", onclick: go(Math.max(0, st.page - 1)), disabled: st.page === 0 ? "" : null }),
        el("span", { text: " page " + (st.page + 1) + " of " + pages + " " }),
        el("button", { text: "next ›", onclick: go(Math.min(pages - 1, st.page + 1)),
          disabled: st.page >= pages - 1 ? "" : null }),
        el("button", { text: "last »", onclick: go(pages - 1), disabled: st.page >= pages - 1 ? "" : null }),
      ]);
      const params = new URLSearchParams({ sort: st.sort, desc: st.desc ? "1" : "0" });
      if (st.q) params.set("q", st.q);
      if (st.hideDead) params.set("dead", "0");
      if (st.dormantOnly) params.set("dormant", "1");
      if (st.positionalOnly) params.set("positional", "1");
      if (st.page) params.set("page", String(st.page + 1));
      try { history.replaceState(null, "", siteHref(s.name) + "?" + params.toString()); } catch (e) { /* ignore */ }
      document.body.setAttribute("data-render-ms", (performance.now() - t0).toFixed(1));
    }
    draw();
  }

  function actColor(q) {
    if (q === null) return "";
    const t = Math.min(1, Math.abs(q) / 999);
    return q >= 0 ? "rgba(255, 120, 0, " + (0.85 * t).toFixed(3) + ")"
      : "rgba(40, 110, 255, " + (0.85 * t).toFixed(3) + ")";
  }

  function pageNeuron(main, idx, s, data, chunk, vocab, unit) {
    document.title = "neuronscope atlas · " + s.name + " / " + unit;
    const row = data.rows.unit.indexOf(unit);
    append(main, crumbs([{ text: "atlas", href: "#/" }, { text: s.name, href: siteHref(s.name) },
      { text: "unit " + unit }]));
    if (row < 0) {
      append(main, el("p", { cls: "error", text: "no unit " + unit + " in this site" }));
      return;
    }
    const nb = chunk.neurons[row - chunk.start];
    const nav = el("div", { cls: "prevnext" }, [
      row > 0 ? el("a", { href: neuronHref(s.name, data.rows.unit[row - 1]), cls: "prev",
        text: "‹ unit " + data.rows.unit[row - 1] }) : null,
      " ",
      row < data.rows.unit.length - 1
        ? el("a", { href: neuronHref(s.name, data.rows.unit[row + 1]), cls: "next",
          text: "unit " + data.rows.unit[row + 1] + " ›" }) : null,
      el("span", { cls: "note", text: "(← / → keys)" }),
    ]);
    append(main, [el("h1", { id: "neuron-title", text: s.name + " · unit " + unit }), nav]);
    if (nb.bd && nb.bd.length) append(main, badgeRow(nb.bd));
    const stats = {};
    for (const c of data.columns) stats[c] = data.rows[c][row];
    const grid = el("div", { cls: "two" });
    const left = el("section", null, [el("h2", { text: "Statistics" })]);
    const kv = el("table", { cls: "kv", id: "stats" });
    for (const c of columnSpec(data, false, idx)) {
      const v = stats[c.key];
      kv.appendChild(el("tr", null, [el("th", { text: c.label }),
        el("td", { text: c.key === "freq" ? pct(v) : fmt(v, 4) })]));
    }
    left.appendChild(kv);
    const right = el("section", null, [el("h2", { text: "Activation histogram" })]);
    let logY = true;
    const holder = el("div", { cls: "plotbox", id: "histogram" });
    const toggle = el("label", { cls: "toggle" });
    const cb = el("input", { type: "checkbox" });
    cb.checked = logY;
    const draw = () => histogramPlot(data.edges, nb.h, logY, stats.min, stats.max);
    cb.addEventListener("change", () => { logY = cb.checked; holder.textContent = ""; holder.appendChild(draw()); });
    append(toggle, [cb, " log count axis"]);
    holder.appendChild(draw());
    const inRange = data.edges.slice(0, -1).filter((e, i) => data.edges[i + 1] > stats.min && e <= stats.max).length;
    append(right, [holder, toggle, el("p", { cls: "note", id: "hist-note", text: (typeof stats.min === "number"
      ? inRange + " of the site's " + nb.h.length + " summary bins cover this neuron's range [" +
        fmt(stats.min, 4) + ", " + fmt(stats.max, 4) + "] · " : "") +
      "below range: " + nb.u + " · above range: " + nb.o })]);
    append(grid, [left, right]);
    append(main, grid);
    if (nb.lf && data.label_values) {
      for (const field of Object.keys(nb.lf)) {
        if (!has(data.label_values, field)) continue;
        append(main, el("h2", { text: "Firing per " + field }));
        append(main, el("p", { cls: "note", text: "Share of this neuron's samples with a > 0 for each " +
          field + " value (its activation probability per value, the input of LAPE)." }));
        append(main, el("div", { cls: "plotbox", "data-field": field, id: "label-firing-" + field },
          labelBarPlot(data.label_values[field], nb.lf[field], field)));
      }
    }
    if (nb.vp) append(main, vocabSection(nb.vp));

    const w = words(idx), text = w.kind === "text";
    append(main, el("h2", { text: "Top examples" }));
    append(main, el("p", { cls: "note", text: text ? "Each row is a context window around one of the " +
      "neuron's highest activations; tokens are coloured by this neuron's activation (orange positive, blue " +
      "negative), the peak token is outlined. Hover a token for its activation."
      : "Each row is one of the " + w.many + " on which this neuron is most active, with its activation" +
        (idx.labels && idx.labels.length ? " and labels" : "") + "." }));
    const list = el("ol", { cls: text ? "examples" : "examples media", id: "examples" });
    const img = chunk.img || {};
    for (const ex of nb.e) {
      const [activation, sample, doc, pos, toks, qs, peak, item, labels] = ex;
      const line = el("div", { cls: "ctx" });
      for (let i = 0; i < toks.length; i++) {
        const tok = vocab[toks[i]];
        const span = el("span", { cls: i === peak ? "t peak" : "t", text: tok });
        const bg = actColor(qs[i]);
        if (bg) span.style.backgroundColor = bg;
        span.setAttribute("title", qs[i] === null ? "outside the document"
          : "activation ≈ " + fmt(qs[i] / 999 * nb.s, 3));
        line.appendChild(span);
      }
      const tags = [];
      if (labels && idx.labels) {
        idx.labels.forEach((name, k) => { if (labels[k] !== "" && labels[k] !== undefined) tags.push(name + " " + labels[k]); });
      }
      const hasItem = item !== null && item !== undefined;
      const head = "activation " + fmt(activation, 4) +
        (doc !== null && doc >= 0 && (text || !hasItem) ? " · doc " + doc : "") +
        (pos !== null && pos >= 0 ? " · pos " + pos : "") +
        (hasItem && !text ? " · " + w.one + " " + item : "") + " · sample " + sample +
        (tags.length ? " · " + tags.join(" · ") : "");
      const uri = hasItem && has(img, String(item)) ? img[String(item)] : null;
      const thumb = uri !== null && DATA_PNG.test(uri)
        ? el("img", { cls: "thumb", alt: w.one + " " + item + (tags.length ? " (" + tags.join(", ") + ")" : ""),
          width: 64, height: 64 }) : null;
      if (thumb) thumb.src = uri;
      list.appendChild(el("li", null, [
        thumb,
        el("div", { cls: "exhead", text: head }),
        toks.some((t) => vocab[t] !== "") ? line : null,
      ]));
    }
    if (!nb.e.length) append(list, el("li", { text: "this neuron never had a recorded example" }));
    append(main, list);
  }

  /* A line plot of y against x (an extras curve: a steering curve, a path's influence by layer),
     with an optional ± err band and a dashed horizontal baseline; every label is a text node. */
  function linePlot(c) {
    const W = 560, H = 300, box = [64, 14, W - 16, H - 44];
    const svg = sv("svg", { viewBox: "0 0 " + W + " " + H, class: "plot line-plot", role: "img" });
    svg.appendChild(sv("title", {}, c.title));
    const pts = [];
    c.x.forEach((x, i) => { if (x !== null && c.y[i] !== null) pts.push([x, c.y[i], c.err ? c.err[i] : null]); });
    if (!pts.length) return svg;
    let ylo = Infinity, yhi = -Infinity;
    for (const [, y, e] of pts) {
      const d = e === null ? 0 : e;
      ylo = Math.min(ylo, y - d); yhi = Math.max(yhi, y + d);
    }
    if (c.baseline !== null && c.baseline !== undefined) { ylo = Math.min(ylo, c.baseline); yhi = Math.max(yhi, c.baseline); }
    if (yhi - ylo < 1e-12) { ylo -= 0.5; yhi += 0.5; }
    const pad = 0.05 * (yhi - ylo);
    ylo -= pad; yhi += pad;
    const xlo = Math.min(...pts.map((p) => p[0])), xhi = Math.max(...pts.map((p) => p[0]));
    const xPos = (v) => box[0] + (xhi > xlo ? (v - xlo) / (xhi - xlo) : 0.5) * (box[2] - box[0]);
    const yPos = (v) => box[3] - (v - ylo) / (yhi - ylo) * (box[3] - box[1]);
    const integral = pts.every((p) => Number.isInteger(p[0])) && xhi - xlo <= 24;
    const xTicks = integral ? pts.map((p) => p[0]) : (xhi > xlo ? linTicks(xlo, xhi, 6) : [xlo]);
    axes(svg, box, xTicks, linTicks(ylo, yhi, 5), xPos, yPos, c.xlabel, c.ylabel);
    if (c.err) {
      const up = pts.map((p) => xPos(p[0]).toFixed(1) + "," + yPos(p[1] + (p[2] || 0)).toFixed(1));
      const down = pts.slice().reverse().map((p) => xPos(p[0]).toFixed(1) + "," + yPos(p[1] - (p[2] || 0)).toFixed(1));
      svg.appendChild(sv("polygon", { points: up.concat(down).join(" "), fill: PALETTE[0], "fill-opacity": 0.18,
        stroke: "none", class: "band" }));
    }
    if (c.baseline !== null && c.baseline !== undefined) {
      const b = sv("line", { x1: box[0], x2: box[2], y1: yPos(c.baseline), y2: yPos(c.baseline), stroke: "#888",
        "stroke-dasharray": "4 3", class: "baseline" });
      b.appendChild(sv("title", {}, c.baseline_label + " = " + fmt(c.baseline, 4)));
      svg.appendChild(b);
    }
    svg.appendChild(sv("polyline", { points: pts.map((p) => xPos(p[0]).toFixed(1) + "," + yPos(p[1]).toFixed(1)).join(" "),
      fill: "none", stroke: PALETTE[0], "stroke-width": 2, class: "curve" }));
    for (const [x, y, e] of pts) {
      const dot = sv("circle", { cx: xPos(x).toFixed(1), cy: yPos(y).toFixed(1), r: 3, fill: PALETTE[0], class: "point",
        "data-x": x, "data-y": y });
      dot.appendChild(sv("title", {}, c.xlabel + " = " + fmt(x, 4) + ": " + c.ylabel + " = " + fmt(y, 4) +
        (e === null ? "" : " ± " + fmt(e, 3))));
      svg.appendChild(dot);
    }
    return svg;
  }

  /* A plain table of an extras result (e.g. a path's neurons per layer); cells are text nodes.
     With tbl.link = {site, unit} (column names), a unit of a site of this atlas links to its page. */
  function resultTable(tbl, idx) {
    const t = el("table", { cls: "grid result-table" });
    t.appendChild(el("thead", null, el("tr", null, tbl.columns.map((h) => el("th", { text: h })))));
    const tb = el("tbody");
    const known = new Set((idx.sites || []).map((s) => s.name));
    const sc = tbl.link ? tbl.columns.indexOf(tbl.link.site) : -1, uc = tbl.link ? tbl.columns.indexOf(tbl.link.unit) : -1;
    for (const row of tbl.rows) {
      tb.appendChild(el("tr", null, row.map((v, j) => {
        const text = typeof v === "number" ? fmt(v, 4) : (v === null ? "–" : String(v));
        const linked = j === uc && sc >= 0 && Number.isInteger(v) && known.has(String(row[sc]));
        return el("td", { cls: typeof v === "number" ? "num" : null },
          linked ? el("a", { href: neuronHref(String(row[sc]), v), cls: "unit-link", text: text }) : text);
      })));
    }
    t.appendChild(tb);
    return t;
  }

  function pageExtra(main, idx, info, x) {
    document.title = "neuronscope atlas · " + (info.title || info.name);
    append(main, crumbs([{ text: "atlas", href: "#/" }, { text: info.title || info.name }]));
    append(main, el("h1", { text: info.title || info.name }));
    if (x.notes && Object.keys(x.notes).length) append(main, kvTable(x.notes));
    for (const tbl of x.tables || []) {
      append(main, el("h2", { text: tbl.title }));
      append(main, resultTable(tbl, idx));
    }
    for (const c of x.curves || []) {
      append(main, el("h2", { text: c.title }));
      if (c.note) append(main, el("p", { cls: "note", text: c.note }));
      append(main, el("div", { cls: "plotbox" }, linePlot(c)));
    }
    for (const hm of x.heatmaps) {
      append(main, el("h2", { text: hm.title }));
      if (hm.note) append(main, el("p", { cls: "note", text: hm.note }));
      append(main, el("div", { cls: "plotbox scroll" }, heatmapPlot(hm)));
    }
  }

  /* ---------- labels (locate) ---------- */

  const METHOD_NAMES = { lape: "LAPE", stats: "statistics", probe: "sparse probe", diffmeans: "diff. in means" };

  /* "specific to: de, nl" badges, one per label field and method. */
  function badgeRow(badges) {
    const row = el("div", { cls: "badges", id: "badges" });
    for (const b of badges) {
      row.appendChild(el("span", { cls: "badge", title: b.field + " · " + (METHOD_NAMES[b.method] || b.method),
        text: "specific to: " + b.values.join(", ") + " (" + b.field + ", " + (METHOD_NAMES[b.method] || b.method) + ")" }));
    }
    return row;
  }

  /* Horizontal bars: activation probability per label value. */
  function labelBarPlot(values, probs, field) {
    const rowH = 16, W = 560, left = 110, right = 60;
    const H = 24 + rowH * values.length;
    const svg = sv("svg", { viewBox: "0 0 " + W + " " + H, class: "plot labelbars", role: "img" });
    svg.appendChild(sv("title", {}, "activation probability per " + field));
    const xPos = (p) => left + p * (W - left - right);
    for (const t of [0, 0.25, 0.5, 0.75, 1]) {
      svg.appendChild(sv("line", { x1: xPos(t), y1: 4, x2: xPos(t), y2: H - 16, class: "grid" }));
      svg.appendChild(sv("text", { x: xPos(t), y: H - 4, class: "tick", "text-anchor": "middle" }, fmt(t, 2)));
    }
    values.forEach((v, i) => {
      const p = probs[i] === null || probs[i] === undefined ? 0 : probs[i];
      const y = 6 + i * rowH;
      const label = sv("text", { x: left - 6, y: y + rowH * 0.7, class: "tick", "text-anchor": "end" }, shorten(v, 16));
      label.appendChild(sv("title", {}, v));
      svg.appendChild(label);
      const r = sv("rect", { x: left, y: y + 2, width: Math.max(0.5, xPos(p) - left).toFixed(2), height: rowH - 4,
        class: "bar" });
      r.appendChild(sv("title", {}, v + ": " + fmt(p, 3)));
      svg.appendChild(r);
      svg.appendChild(sv("text", { x: xPos(p) + 4, y: y + rowH * 0.7, class: "tick" }, fmt(p, 2)));
    });
    return svg;
  }

  function tokenList(title, toks, vals) {
    const ul = el("ol", { cls: "vocab" });
    toks.forEach((t, i) => ul.appendChild(el("li", null, [el("span", { cls: "tok", text: t }), " " + fmt(vals[i], 3)])));
    return el("div", null, [el("h3", { text: title }), ul]);
  }

  /* What the neuron writes into the vocabulary: W_U w_out, its top tokens and families. */
  function vocabSection(vp) {
    const sec = el("section", { id: "vocab" }, [el("h2", { text: "What it writes (vocabulary projection)" })]);
    append(sec, el("p", { cls: "note", text: "Logit change per unit of activation, W_U · w_out: the tokens this " +
      "neuron promotes and suppresses directly. ‖w_out‖ " + fmt(vp.norm, 3) + " · kurtosis " + fmt(vp.kurtosis, 3) +
      " · null-space share " + fmt(vp.null_fraction, 3) + " · corr. with log frequency " + fmt(vp.freq_corr, 3) }));
    if (vp.families && vp.families.length) {
      const row = el("div", { cls: "badges" });
      vp.families.forEach((f) => row.appendChild(el("span", { cls: "badge family", text: f.replace("_", "-") + " neuron" })));
      append(sec, row);
    }
    append(sec, el("div", { cls: "two" }, [tokenList("promoted", vp.top, vp.top_v),
      tokenList("suppressed", vp.bottom, vp.bottom_v)]));
    return sec;
  }

  /* Held-out accuracy against k (log2 axis), one thin line per value and their mean. */
  function curvePlot(perValue, site) {
    const W = 560, H = 260, box = [56, 12, W - 16, H - 44];
    const svg = sv("svg", { viewBox: "0 0 " + W + " " + H, class: "plot curves", role: "img" });
    svg.appendChild(sv("title", {}, "probe accuracy against k · " + site));
    const names = Object.keys(perValue);
    let kMax = 1, lo = 1;
    for (const v of names) {
      kMax = Math.max(kMax, ...perValue[v].k);
      for (const a of perValue[v].accuracy) if (a !== null) lo = Math.min(lo, a);
    }
    const y0 = Math.min(0.5, Math.floor(lo * 10) / 10), lk = Math.max(1, Math.log2(kMax));
    const xPos = (k) => box[0] + Math.log2(k) / lk * (box[2] - box[0]);
    const yPos = (a) => box[3] - (a - y0) / (1 - y0) * (box[3] - box[1]);
    const xt = [];
    for (let k = 1; k <= kMax; k *= 2) xt.push(k);
    axes(svg, box, [], linTicks(y0, 1, 5), xPos, yPos, "k (neurons in the probe)", "held-out balanced accuracy");
    for (const k of xt) {
      svg.appendChild(sv("text", { x: xPos(k), y: box[3] + 16, class: "tick", "text-anchor": "middle" }, String(k)));
    }
    const mean = [];
    names.forEach((v, i) => {
      const c = perValue[v];
      const pts = c.k.map((k, j) => xPos(k).toFixed(1) + "," + yPos(c.accuracy[j] === null ? y0 : c.accuracy[j]).toFixed(1));
      const line = sv("polyline", { points: pts.join(" "), fill: "none", stroke: PALETTE[i % PALETTE.length],
        "stroke-width": 1, "stroke-opacity": 0.55 });
      line.appendChild(sv("title", {}, v + " (k = 1: unit " + c.neuron + ")"));
      svg.appendChild(line);
      c.k.forEach((k, j) => { mean[j] = (mean[j] || 0) + (c.accuracy[j] || 0) / names.length; });
    });
    if (names.length > 1) {
      const c0 = perValue[names[0]];
      const pts = c0.k.map((k, j) => xPos(k).toFixed(1) + "," + yPos(mean[j]).toFixed(1));
      const line = sv("polyline", { points: pts.join(" "), fill: "none", stroke: "#1d2330", "stroke-width": 2.4,
        class: "mean" });
      line.appendChild(sv("title", {}, "mean over values"));
      svg.appendChild(line);
    }
    return svg;
  }

  function pageLabels(main, idx, info, page) {
    document.title = "neuronscope atlas · labels · " + page.field;
    append(main, crumbs([{ text: "atlas", href: "#/" }, { text: "labels: " + page.field }]));
    append(main, el("h1", { text: "Label: " + page.field }));
    const counts = {};
    page.values.forEach((v, i) => { counts[v] = page.label_counts[i]; });
    append(main, el("p", { cls: "lede", text: page.values.length + " values · " +
      page.label_counts.reduce((a, b) => a + b, 0) + " labelled samples" +
      (page.unlabeled ? " · " + page.unlabeled + " without a value" : "") }));
    for (const res of page.results) {
      append(main, el("h2", { text: "Neurons specific to each value · " + (METHOD_NAMES[res.method] || res.method) }));
      append(main, el("p", { cls: "note", text: res.method === "lape"
        ? "LAPE (Tang et al. 2024): entropy of each neuron's activation probabilities over the values; the " +
          "lowest-entropy neurons among those with a high probability for some value are specific to the values " +
          "where that probability is high."
        : "Stored by `neuronscope locate --by " + res.method + "`." }));
      if (Object.keys(res.info).length) append(main, kvTable(res.info));
      const t = el("table", { cls: "grid labelcounts", "data-method": res.method });
      t.appendChild(el("thead", null, el("tr", null, [el("th", { text: page.field })].concat(
        res.sites.map((x) => el("th", { cls: "num", text: x.name, title: x.name }))))));
      const tb = el("tbody");
      res.values.forEach((v, i) => tb.appendChild(el("tr", null, [el("td", { text: v })].concat(
        res.sites.map((x) => el("td", { cls: "num", text: String(x.counts[i]) }))))));
      tb.appendChild(el("tr", { cls: "total" }, [el("td", { text: "any value" })].concat(
        res.sites.map((x) => el("td", { cls: "num", text: x.neurons + " of " + x.units })))));
      t.appendChild(tb);
      append(main, el("div", { cls: "plotbox scroll" }, t));
    }
    const sites = Object.keys(page.curves || {});
    if (sites.length) {
      append(main, el("h2", { text: "k-sparse probes: accuracy against k" }));
      append(main, el("p", { cls: "note", text: "Gurnee et al. 2023: logistic probes on the k best-ranked " +
        "neurons; thin lines one value each (hover for the k = 1 neuron), thick line their mean." }));
      for (const site of sites) {
        append(main, el("h3", { text: site }));
        append(main, el("div", { cls: "plotbox" }, curvePlot(page.curves[site], site)));
      }
    }
  }

  /* ---------- router ---------- */

  /* "#/site?sort=mean&desc=0&q=the" -> route parts ["site"] and the query parameters. */
  function query() {
    const h = location.hash, i = h.indexOf("?");
    return new URLSearchParams(i < 0 ? "" : h.slice(i + 1));
  }

  function parts() {
    const h = location.hash.replace(/^#\/?/, "").split("?")[0];
    if (!h) return [];
    return h.split("/").map((p) => { try { return decodeURIComponent(p); } catch (e) { return p; } });
  }

  async function render() {
    const my = ++renderToken;
    const t0 = performance.now();
    const main = document.getElementById("app");
    document.body.removeAttribute("data-ready");
    const fresh = el("main", { id: "app" });
    try {
      const idx = await load("index");
      const p = parts();
      const site = p.length ? idx.sites.find((s) => s.name === p[0]) : null;
      if (!p.length) {
        pageIndex(fresh, idx);
      } else if (site && p.length === 1) {
        pageSite(fresh, idx, site, await load(site.key));
      } else if (site && p.length === 2 && /^\d+$/.test(p[1])) {
        const unit = parseInt(p[1], 10);
        const data = await load(site.key);
        const row = data.rows.unit.indexOf(unit);
        const c = row < 0 ? 0 : Math.floor(row / data.chunk);
        const [chunk, vocab] = await Promise.all([load(site.key + "-" + c), load("vocab")]);
        if (my !== renderToken) return;
        pageNeuron(fresh, idx, site, data, chunk, vocab, unit);
      } else if (p[0] === "labels" && p.length === 2 && (idx.label_pages || []).some((x) => x.field === p[1])) {
        const info = idx.label_pages.find((x) => x.field === p[1]);
        pageLabels(fresh, idx, info, await load(info.key));
      } else if (p[0] === "compare" && p.length === 2 && idx.extras.some((x) => x.name === p[1])) {
        const info = idx.extras.find((x) => x.name === p[1]);
        pageExtra(fresh, idx, info, await load(info.key));
      } else {
        document.title = "neuronscope atlas · not found";
        append(fresh, [crumbs([{ text: "atlas", href: "#/" }]),
          el("p", { cls: "error", text: "no page at " + location.hash })]);
      }
    } catch (err) {
      append(fresh, el("p", { cls: "error", text: "error: " + (err && err.message ? err.message : err) }));
    }
    if (my !== renderToken) return;
    main.replaceWith(fresh);
    window.scrollTo(0, 0);
    document.body.setAttribute("data-page-ms", (performance.now() - t0).toFixed(1));
    document.body.setAttribute("data-ready", "1");
  }

  /* Left / right arrow keys step through the neurons of a site on a neuron page. */
  window.addEventListener("keydown", (ev) => {
    if (ev.altKey || ev.ctrlKey || ev.metaKey || /^(INPUT|TEXTAREA|SELECT)$/.test(ev.target.tagName)) return;
    const dir = ev.key === "ArrowLeft" ? -1 : ev.key === "ArrowRight" ? 1 : 0;
    if (!dir) return;
    const link = document.querySelector(dir < 0 ? ".prevnext a.prev" : ".prevnext a.next");
    if (link) location.hash = link.getAttribute("href");
  });

  window.addEventListener("hashchange", render);
  render();
})();
