// The workbench's page: plain JavaScript, no build step, nothing from the internet. Every text from the server is
// put in the page as text (h() below sets textContent and attributes, never HTML), so a class or file name cannot
// become markup. Routes live in the address's fragment: #/ (runs), #/compare/A|B, #/run/NAME, #/review/NAME.
"use strict";
const main = document.getElementById("main");
const detail = document.getElementById("detail");
const statusLine = document.getElementById("status");
const PAGE = 48;  // gallery tiles per page

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  return el;
}
const q = (params) => new URLSearchParams(params).toString();
async function api(path, options = {}) {
  const r = await fetch(path, {credentials: "same-origin", ...options});
  const body = await r.json().catch(() => ({detail: r.statusText}));
  if (!r.ok) throw new Error(body.detail || r.statusText);
  return body;
}
const post = (path, body) => api(path, {method: "POST", headers: {"Content-Type": "application/json"},
                                        body: JSON.stringify(body)});
const fmt = (v) => typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(4)) : (v ?? "");
const thumb = (run, path) => "/api/thumb?" + q({run, path});
function say(text, bad = false) { statusLine.textContent = text; statusLine.className = bad ? "error" : ""; }
function fail(e) { say(e.message, true); }

// ---- runs ------------------------------------------------------------------------------------------------------
async function showRuns() {
  const {runs, folder} = await api("/api/runs");
  const scoreNames = [...new Set(runs.flatMap((r) => Object.keys(r.scores)))];
  const columns = ["name", "task", "model", "data", "budget", ...scoreNames, "date"];
  let sortBy = "date", down = true, filter = "";
  const picked = new Set();
  const value = (r, c) => c in r.scores ? r.scores[c] : r[c];
  const body = h("tbody");
  const compare = h("button", {id: "compare-button", class: "primary", disabled: true,
                               onclick: () => { location.hash = "#/compare/" + [...picked].map(encodeURIComponent).join("|"); }},
                    "Compare selected");
  function draw() {
    const shown = runs.filter((r) => JSON.stringify(r).toLowerCase().includes(filter))
      .sort((a, b) => { const x = value(a, sortBy), y = value(b, sortBy);
                        return (x === y ? 0 : x === undefined ? 1 : y === undefined ? -1 : x < y ? -1 : 1) * (down ? -1 : 1); });
    body.replaceChildren(...shown.map((r) => h("tr", {"data-run": r.name},
      h("td", {}, h("input", {type: "checkbox", class: "pick", checked: picked.has(r.name),
                               onchange: (e) => { e.target.checked ? picked.add(r.name) : picked.delete(r.name);
                                                  compare.disabled = picked.size < 2; }})),
      ...columns.map((c) => c === "name" ? h("td", {}, h("a", {href: "#/run/" + encodeURIComponent(r.name)}, r.name))
                                         : h("td", {class: typeof value(r, c) === "number" ? "num" : null}, fmt(value(r, c)))))));
  }
  const head = h("tr", {}, h("th"), ...columns.map((c) => h("th", {class: "sortable", onclick: () => {
    down = sortBy === c ? !down : true; sortBy = c; draw(); }}, c)));
  main.replaceChildren(h("h1", {}, `Runs in ${folder}`),
    h("p", {}, h("input", {type: "search", id: "run-filter", placeholder: "filter", oninput: (e) => {
      filter = e.target.value.toLowerCase(); draw(); }}), " ", compare),
    runs.length ? h("table", {id: "runs-table"}, h("thead", {}, head), body)
                : h("p", {class: "muted"}, "No runs here yet: `imgclass train DATA --out " + folder + "/NAME` makes one."));
  draw();
}

async function showCompare(names) {
  const c = await api("/api/compare?" + names.map((n) => "run=" + encodeURIComponent(n)).join("&"));
  const per = c.per_class;
  main.replaceChildren(h("h1", {}, "Compare " + names.join(", ")),
    h("table", {id: "compare-table"}, h("thead", {}, h("tr", {}, ...c.columns.map((x) => h("th", {}, x)))),
      h("tbody", {}, ...c.cells.map((row) => h("tr", {}, ...row.map((x) => h("td", {}, x)))))),
    c.verdict ? h("p", {}, c.verdict) : null,
    h("h2", {}, "Validation curves"), h("img", {src: c.curves, alt: "validation curves", style: "max-width:820px"}),
    per.items.length ? h("div", {}, h("h2", {}, `Test ${per.score} per class`),
      h("table", {id: "per-class"}, h("thead", {}, h("tr", {}, h("th", {}, "class"), ...names.map((n) => h("th", {}, n)),
                                                   names.length === 2 ? h("th", {}, "difference") : null)),
        h("tbody", {}, ...per.items.map((item, i) => { const v = names.map((n) => per.runs[n][i]);
          return h("tr", {}, h("td", {}, item), ...v.map((x) => h("td", {class: "num"}, fmt(x))),
                   names.length === 2 && v[0] != null && v[1] != null ? h("td", {class: "num"}, fmt(v[1] - v[0])) : null); }))))
      : null);
}

// ---- one run -----------------------------------------------------------------------------------------------------
async function showRun(name, split) {
  const r = await api("/api/run?" + q({run: name}));
  const splits = r.summary.evaluated;
  split = split && splits.includes(split) ? split : splits[0];
  const view = h("div", {id: "split-view"});
  main.replaceChildren(h("h1", {}, name),
    h("p", {}, `${r.summary.task} · ${r.summary.model} at ${r.summary.input_size} px · data ${r.summary.data}`),
    h("p", {}, h("a", {href: "#/review/" + encodeURIComponent(name), id: "review-link"}, "Review suspected labels"), " · ",
      h("a", {href: "/try/" + encodeURIComponent(name) + "/", target: "_blank"}, "Try it (upload an image)")),
    h("p", {class: "tabs"}, ...splits.map((s) => h("button", {class: s === split ? "on" : null,
      onclick: () => { location.hash = `#/run/${encodeURIComponent(name)}/${s}`; }}, s))),
    view,
    h("h2", {}, "Model card"), h("p", {}, r.model_card),
    h("h2", {}, "The command that reproduces it"), h("pre", {id: "command"}, r.command),
    h("details", {}, h("summary", {}, "Plan (what was chosen from the data and the clock)"),
      h("pre", {}, JSON.stringify(r.plan, null, 1))),
    h("details", {}, h("summary", {}, "Options (config.yaml)"), h("pre", {}, JSON.stringify(r.options, null, 1))),
    h("details", {}, h("summary", {}, "Results"), h("pre", {}, JSON.stringify(r.results, null, 1))));
  if (split) await showSplit(view, name, split, r);
  else view.append(h("p", {class: "muted"}, "Not evaluated yet: `imgclass evaluate RUN --split test` adds it."));
}

async function showSplit(view, run, split, r) {
  const {view: picture, lists} = await api("/api/cells?" + q({run, split}));
  const gallery = h("div", {id: "gallery-box"});
  const open = (key) => showGallery(gallery, run, split, key, 0);
  const metrics = r.metrics[split] || {};
  const headline = Object.entries(metrics).filter(([, v]) => typeof v === "number").slice(0, 8)
    .map(([k, v]) => `${k} ${fmt(v)}`).join(" · ");
  view.replaceChildren(h("p", {class: "muted"}, headline), drawPicture(picture, open),
    h("div", {class: "lists"}, ...Object.entries(lists).map(([k, t]) => h("button", {"data-key": k, onclick: () => open(k)}, t))),
    gallery,
    h("h2", {}, "Figures"), h("div", {class: "figs"}, ...(r.figures[split] || []).map((f) =>
      h("img", {src: "/api/figure?" + q({run, split, name: f}), alt: f, title: f, loading: "lazy"}))));
}

function drawPicture(p, open) {
  if (p.kind === "matrix") {
    const n = p.classes.length;
    return h("table", {class: "matrix", id: "matrix"},
      h("thead", {}, h("tr", {}, h("th", {}, "true \\ predicted"), ...p.classes.map((c) => h("th", {}, c)))),
      h("tbody", {}, ...p.classes.map((c, i) => h("tr", {}, h("th", {}, c), ...p.counts[i].map((v, j) =>
        h("td", {class: `cell ${v === 0 ? "zero" : i === j ? "diag" : "off"}`, "data-key": `cell:${i}:${j}`,
                 title: `true ${c}, predicted ${p.classes[j]}: ${v}`, onclick: () => v && open(`cell:${i}:${j}`)}, v))))));
  }
  if (p.kind === "tags") {
    const link = (what, t, v) => h("td", {class: "num cell", "data-key": `${what}:${t}`},
                                   v ? h("a", {href: "javascript:void 0", onclick: () => open(`${what}:${t}`)}, v) : "0");
    return h("table", {id: "tags"}, h("thead", {}, h("tr", {}, ...["tag", "images", "given rightly", "given wrongly", "missed"]
      .map((x) => h("th", {}, x)))), h("tbody", {}, ...p.tags.map((t, i) => h("tr", {}, h("td", {}, t.tag),
        h("td", {class: "num"}, t.images), link("tp", i, t.tp), link("fp", i, t.fp), link("fn", i, t.fn)))));
  }
  const W = 520, M = 36, xs = p.points.map((x) => x[0]), ys = p.points.map((x) => x[1]);
  const lo = Math.min(...xs, ...ys), hi = Math.max(...xs, ...ys), s = (v) => M + (v - lo) / ((hi - lo) || 1) * (W - 2 * M);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "scatter"); svg.setAttribute("width", W); svg.setAttribute("height", W); svg.id = "scatter";
  const line = document.createElementNS(svg.namespaceURI, "line");
  Object.entries({x1: s(lo), y1: W - s(lo), x2: s(hi), y2: W - s(hi), stroke: "#999"}).forEach(([k, v]) => line.setAttribute(k, v));
  svg.append(line);
  for (const [t, y, k] of p.points) {
    const c = document.createElementNS(svg.namespaceURI, "circle");
    c.setAttribute("cx", s(t)); c.setAttribute("cy", W - s(y)); c.setAttribute("r", 3.5); c.dataset.key = `point:${k}`;
    c.addEventListener("click", () => open(`point:${k}`));
    svg.append(c);
  }
  return h("div", {}, h("p", {class: "muted"}, `predicted (up) against true (across); ${p.shown} of ${p.rows} images`), svg);
}

async function showGallery(box, run, split, key, offset) {
  const g = await api("/api/gallery?" + q({run, split, key, offset, limit: PAGE}));
  const pager = h("p", {}, `${g.title}: ${g.total} image(s)`, g.total > PAGE ? ` (${offset + 1}-${Math.min(offset + PAGE, g.total)})` : "",
    offset > 0 ? h("button", {onclick: () => showGallery(box, run, split, key, offset - PAGE)}, "previous") : null,
    offset + PAGE < g.total ? h("button", {onclick: () => showGallery(box, run, split, key, offset + PAGE)}, "next") : null);
  box.replaceChildren(pager, h("div", {class: "gallery", id: "gallery", "data-key": key}, ...g.items.map((it) =>
    h("div", {class: "tile", "data-path": it.path, onclick: () => showImage(run, it)},
      h("img", {src: thumb(run, it.path), alt: it.path, loading: "lazy"}),
      h("div", {class: "cap"}, it.path), h("div", {class: "cap"},
        Object.entries(it.fields).filter(([k]) => k !== "path").map(([k, v]) => `${k}: ${v}`).join(" · "))))));
}

async function showImage(run, it) {
  detail.hidden = false;
  const heat = h("div"), near = h("div", {class: "gallery", id: "similar"});
  detail.replaceChildren(h("p", {}, h("button", {onclick: () => { detail.hidden = true; }}, "close")),
    h("img", {class: "big", src: thumb(run, it.path), alt: it.path}), h("p", {}, it.path),
    h("table", {}, h("tbody", {}, ...Object.entries(it.fields).map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v))),
      ...it.top.map((t) => h("tr", {}, h("th", {}, "p(" + t.label + ")"), h("td", {class: "num"}, fmt(t.probability)))))),
    h("p", {}, h("button", {id: "heatmap-button", onclick: () => heat.replaceChildren(
      h("img", {class: "big", src: "/api/heatmap?" + q({run, path: it.path}), alt: "heatmap"}))}, "heatmap"), " ",
      h("button", {id: "similar-button", onclick: () => similar(run, it.path, near)}, "nearest training images")),
    heat, near);
}

async function similar(run, path, box) {
  box.replaceChildren(h("p", {class: "muted"}, "embedding the training images (the first time only)…"));
  try {
    const {items} = await api("/api/similar?" + q({run, path}));
    box.replaceChildren(...items.map((it) => h("div", {class: "tile", "data-path": it.path},
      h("img", {src: thumb(run, it.path), alt: it.path, loading: "lazy"}),
      h("div", {class: "cap"}, `${it.label} · ${fmt(it.similarity)}`), h("div", {class: "cap muted"}, it.path))));
  } catch (e) { box.replaceChildren(h("p", {class: "error"}, e.message)); }
}

// ---- label review ------------------------------------------------------------------------------------------------
let reviewKeys = null;
async function showReview(run) {
  let state = await api("/api/review?" + q({run}));
  if (state.suspects === null) {
    main.replaceChildren(h("h1", {}, "Label review: " + run),
      h("p", {}, "No suspects yet. Finding them embeds every image of the run once (as `imgclass check --label-issues` does)."),
      h("button", {class: "primary", id: "find-suspects", onclick: async (e) => {
        e.target.disabled = true; say("finding suspects…");
        try { await post("/api/review/find?" + q({run}), {}); say(""); showReview(run); } catch (err) { fail(err); e.target.disabled = false; }
      }}, "Find suspects"));
    return;
  }
  let at = Math.max(0, state.suspects.findIndex((s) => !s.decision));
  const card = h("div", {id: "review-card"}), side = h("div", {class: "gallery", id: "neighbours"});
  const command = h("pre", {id: "next-command"});
  main.replaceChildren(h("h1", {}, "Label review: " + run),
    h("p", {class: "keys"}, h("kbd", {}, "k"), " keep · ", h("kbd", {}, "r"), " relabel to the suggestion · ",
      h("kbd", {}, "x"), " exclude · ", h("kbd", {}, "u"), " undo · ", h("kbd", {}, "→"), "/", h("kbd", {}, "←"),
      " next / previous · or pick any label below"),
    h("div", {class: "review"}, card, side), h("h2", {}, "The next run, with these decisions"), command);
  function draw() {
    const s = state.suspects[at];
    command.textContent = state.command;
    if (!s) { card.replaceChildren(h("p", {}, "No suspects were found.")); return; }
    const d = s.decision;
    card.replaceChildren(h("img", {class: "big", src: thumb(run, s.path), alt: s.path}),
      h("p", {id: "suspect", "data-path": s.path}, `${at + 1} of ${state.suspects.length} · ${s.path} (${s.split})`),
      s.other ? h("div", {}, h("p", {}, `${s.reason === "leakage" ? "the same image in another split (leakage)" : "a near-duplicate"}`
                                         + ` of ${s.other} (${s.other_split}), similarity ${s.quality}: x drops this copy`),
                  h("img", {class: "tile", src: thumb(run, s.other), alt: s.other}), h("p", {}, "label ", h("b", {}, s.given_label)))
              : h("p", {}, "given ", h("b", {}, s.given_label), " · suggested ", h("b", {}, s.suggested_label),
                  ` · quality ${s.quality}`),
      h("p", {id: "decision", class: d ? "decision-" + d.action : "muted"},
        d ? `decided: ${d.action}${d.label ? " to " + d.label : ""}` : "not decided"),
      h("p", {}, h("select", {id: "any-label"}, h("option", {value: ""}, "relabel to…"),
        ...state.classes.map((c) => h("option", {value: c}, c))), " ",
        h("button", {onclick: () => { const v = document.getElementById("any-label").value; if (v) decide("relabel", v); }}, "relabel")),
      h("p", {class: "muted"}, `${state.decided} decided · saved to ${state.files.relabel} and ${state.files.exclude}`));
    similar(run, s.path, side);
  }
  async function decide(action, label) {
    const s = state.suspects[at];
    try {
      state = await post("/api/review/decide", {run, path: s.path, action, label: label ?? null});
      at = Math.min(at + 1, state.suspects.length - 1); draw(); say(`${action}: ${s.path}`);
    } catch (e) { fail(e); }
  }
  async function undo() {
    const s = state.suspects[at];
    try { state = await post("/api/review/undo", {run, path: s.path}); draw(); say("undone: " + s.path); } catch (e) { fail(e); }
  }
  reviewKeys = (e) => {
    if (e.target.tagName === "SELECT" || e.target.tagName === "INPUT") return;
    const s = state.suspects[at];
    if (!s) return;
    if (e.key === "k") decide("keep");
    else if (e.key === "r" && s.suggested_label) decide("relabel", s.suggested_label);
    else if (e.key === "x") decide("exclude");
    else if (e.key === "u") undo();
    else if (e.key === "ArrowRight" || e.key === "j") { at = Math.min(at + 1, state.suspects.length - 1); draw(); }
    else if (e.key === "ArrowLeft" || e.key === "p") { at = Math.max(at - 1, 0); draw(); }
  };
  draw();
}
document.addEventListener("keydown", (e) => reviewKeys && reviewKeys(e));

// ---- routing -----------------------------------------------------------------------------------------------------
async function route() {
  reviewKeys = null; detail.hidden = true; say("");
  const [, kind, a, b] = location.hash.split("/");
  try {
    if (kind === "compare") await showCompare(decodeURIComponent(a).split("|"));
    else if (kind === "run") await showRun(decodeURIComponent(a), b);
    else if (kind === "review") await showReview(decodeURIComponent(a));
    else await showRuns();
  } catch (e) { main.replaceChildren(h("p", {class: "error"}, e.message)); }
}
window.addEventListener("hashchange", route);
route();
