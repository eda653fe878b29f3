// anatomix viewer: plain JavaScript against the service's own API; images are PNGs the server
// renders (/v1/preview, /v1/ct/view), so the browser needs no DICOM parser.
"use strict";

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c);
  return node;
};

// --- API access: the key typed into the page goes with every call -----------------------------
const keyInput = $("#api-key");
keyInput.value = sessionStorage.getItem("anatomix-key") || "";
keyInput.addEventListener("change", () => {
  sessionStorage.setItem("anatomix-key", keyInput.value.trim());
  loadModels();
});

function headers() {
  const key = keyInput.value.trim();
  return key ? { "X-API-Key": key } : {};
}

function showError(text) {
  const box = $("#error");
  box.textContent = text;
  box.hidden = !text;
}

async function call(path, { form, method } = {}) {
  const resp = await fetch(path, { method: method || (form ? "POST" : "GET"), body: form,
                                   headers: headers() });
  if (!resp.ok) {
    let text = `${resp.status}`;
    try { const e = await resp.json(); text = `${e.error}: ${e.detail}`; } catch (_) { /* none */ }
    throw new Error(text);
  }
  return resp;
}

async function guarded(work) {
  showError("");
  try { await work(); } catch (e) { showError(e.message); }
}

function filesForm(files, field = "files", extra = {}) {
  const form = new FormData();
  for (const f of files) form.append(field, f, f.name);
  for (const [k, v] of Object.entries(extra)) form.append(k, v);
  return form;
}

async function pngURL(resp) {
  return URL.createObjectURL(await resp.blob());
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the preview could not be shown"));
    img.src = url;
  });
}

// --- tabs ----------------------------------------------------------------------------------------
for (const button of document.querySelectorAll("#tabs button")) {
  button.addEventListener("click", () => {
    for (const b of document.querySelectorAll("#tabs button")) b.classList.remove("active");
    button.classList.add("active");
    for (const s of document.querySelectorAll(".tab")) s.hidden = s.id !== `tab-${button.dataset.tab}`;
    if (button.dataset.tab === "jobs") guarded(loadJobs);
    if (button.dataset.tab === "models") guarded(loadModels);
  });
}

// --- chest radiographs: film + probability bars per label set -----------------------------------
$("#cxr-files").addEventListener("change", (ev) => guarded(async () => {
  const files = [...ev.target.files];
  if (!files.length) return;
  const out = $("#cxr-results");
  out.replaceChildren();
  const answer = await (await call("/v1/cxr/classify", { form: filesForm(files) })).json();
  for (const [i, result] of answer.results.entries()) {
    const img = el("img", { alt: result.file });
    call("/v1/preview", { form: filesForm([files[i]]) })
      .then(pngURL).then((url) => { img.src = url; }).catch((e) => showError(e.message));
    const chart = el("div", { class: "chart" }, el("h3", {}, `${result.file} — ${answer.model}`));
    for (const [set, probs] of Object.entries(result.findings)) {
      const block = el("div", { class: "labelset", "data-label-set": set }, el("h3", {}, set));
      for (const [label, p] of Object.entries(probs)) {
        block.append(el("div", { class: "row" },
          el("span", {}, label),
          el("div", { class: "track" }, el("div", { class: "bar", style: `width:${100 * p}%`,
            "data-label-set": set, "data-label": label, "data-value": String(p) })),
          el("span", { class: "value" }, p.toFixed(3))));
        block.lastChild.querySelector(".bar").style.width = `${100 * p}%`;
      }
      chart.append(block);
    }
    for (const w of result.warnings || []) chart.append(el("p", { class: "warn" }, `⚠ ${w.detail}`));
    out.append(el("div", { class: "film" }, img, chart));
  }
}));

// --- CT: slice viewer with the mask overlaid -----------------------------------------------------
const ct = { view: null, depth: 0, slice: 0, window: "soft", token: 0 };
const ctCanvas = $("#ct-canvas");

async function drawSlice() {
  if (!ct.view) return;
  const token = ++ct.token;
  const overlay = $("#ct-overlay").checked ? 1 : 0;
  const resp = await call(`/v1/ct/view/${ct.view}/${ct.slice}.png?window=${ct.window}&overlay=${overlay}`);
  const img = await loadImage(await pngURL(resp));
  if (token !== ct.token) return; // a newer slice was asked for meanwhile
  ctCanvas.width = img.naturalWidth;
  ctCanvas.height = img.naturalHeight;
  ctCanvas.getContext("2d").drawImage(img, 0, 0);
  ctCanvas.dataset.slice = String(ct.slice);
  ctCanvas.dataset.overlay = String(overlay);
  $("#ct-slice-label").textContent = `slice ${ct.slice + 1} / ${ct.depth}`;
}

function setSlice(d) {
  ct.slice = Math.max(0, Math.min(ct.depth - 1, d));
  $("#ct-slice").value = String(ct.slice);
  guarded(drawSlice);
}

$("#ct-files").addEventListener("change", (ev) => guarded(async () => {
  const files = [...ev.target.files];
  if (!files.length) return;
  const answer = await (await call("/v1/ct/view", { form: filesForm(files) })).json();
  Object.assign(ct, { view: answer.view, depth: answer.depth });
  const rows = $("#ct-labels tbody");
  rows.replaceChildren();
  let first = null;
  for (const [k, [label, info]] of Object.entries(answer.labels).entries()) {
    const colour = `rgb(${(answer.palette[k] || [255, 255, 255]).join(",")})`;
    const box = info.bbox_dhw ? `${info.bbox_dhw.min.join(", ")} – ${info.bbox_dhw.max.join(", ")}` : "—";
    rows.append(el("tr", {}, el("td", {}, el("span", { class: "swatch", style: `background:${colour}` })),
      el("td", {}, label), el("td", { class: "num ml", "data-label": label }, info.volume_ml.toFixed(3)),
      el("td", {}, box)));
    rows.lastChild.querySelector(".swatch").style.background = colour;
    if (!first && info.bbox_dhw) first = info.bbox_dhw;
  }
  $("#ct-series").textContent = `series ${answer.series_uid}` +
    (Object.keys(answer.selection.rejected).length ?
      `; not chosen: ${Object.entries(answer.selection.rejected).map(([s, r]) => `${s} (${r})`).join("; ")}` : "");
  const slider = $("#ct-slice");
  slider.max = String(answer.depth - 1);
  $("#ct-view").hidden = false;
  const link = $("#ct-seg");
  link.hidden = !answer.seg;
  if (answer.seg) link.href = await pngURL(await call(`/v1/ct/view/${answer.view}/seg.dcm`));
  // open on the middle of the first finding, else the middle slice
  setSlice(first ? Math.round((first.min[0] + first.max[0]) / 2) : Math.floor(answer.depth / 2));
  ctCanvas.focus();
}));

$("#ct-slice").addEventListener("input", (ev) => setSlice(Number(ev.target.value)));
$("#ct-overlay").addEventListener("change", () => guarded(drawSlice));
for (const b of document.querySelectorAll("[data-window]")) {
  b.addEventListener("click", () => {
    for (const o of document.querySelectorAll("[data-window]")) o.classList.remove("active");
    b.classList.add("active");
    ct.window = b.dataset.window;
    guarded(drawSlice);
  });
}
ctCanvas.addEventListener("keydown", (ev) => {
  if (ev.key === "ArrowUp" || ev.key === "ArrowRight") { setSlice(ct.slice + 1); ev.preventDefault(); }
  if (ev.key === "ArrowDown" || ev.key === "ArrowLeft") { setSlice(ct.slice - 1); ev.preventDefault(); }
});
ctCanvas.addEventListener("wheel", (ev) => { setSlice(ct.slice + Math.sign(ev.deltaY)); ev.preventDefault(); },
                          { passive: false });

// --- correspondence: click on A, the matched point on B -----------------------------------------
const pair = { a: null, b: null, size: { a: null, b: null }, img: { a: null, b: null } };

async function showFilm(side) {
  const file = pair[side];
  const resp = await call("/v1/preview", { form: filesForm([file]) });
  pair.size[side] = resp.headers.get("X-Image-Size").split(",").map(Number); // rows, columns
  pair.img[side] = await loadImage(await pngURL(resp));
  drawFilm(side);
}

function drawFilm(side, mark) {
  const canvas = $(`#pair-canvas-${side}`);
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const img = pair.img[side];
  if (!img) return;
  const s = Math.min(canvas.width / img.naturalWidth, canvas.height / img.naturalHeight);
  const w = img.naturalWidth * s, h = img.naturalHeight * s;
  const x0 = (canvas.width - w) / 2, y0 = (canvas.height - h) / 2;
  ctx.drawImage(img, x0, y0, w, h);
  canvas.dataset.fit = JSON.stringify([x0, y0, w, h]);
  if (mark) {
    const [x, y] = toCanvas(side, mark);
    ctx.strokeStyle = side === "a" ? "#4fb3ff" : "#ffcc00";
    ctx.lineWidth = 2;
    ctx.beginPath(); ctx.arc(x, y, 7, 0, 2 * Math.PI); ctx.stroke();
    ctx.beginPath(); ctx.moveTo(x - 12, y); ctx.lineTo(x + 12, y); ctx.moveTo(x, y - 12); ctx.lineTo(x, y + 12); ctx.stroke();
    canvas.dataset.markRow = String(mark[0]);
    canvas.dataset.markCol = String(mark[1]);
  }
}

function toCanvas(side, [row, col]) { // original pixel → canvas pixel (pixel centres)
  const [x0, y0, w, h] = JSON.parse($(`#pair-canvas-${side}`).dataset.fit);
  const [rows, cols] = pair.size[side];
  return [x0 + (col + 0.5) * w / cols, y0 + (row + 0.5) * h / rows];
}

function toImage(side, x, y) { // canvas pixel → original pixel
  const [x0, y0, w, h] = JSON.parse($(`#pair-canvas-${side}`).dataset.fit);
  const [rows, cols] = pair.size[side];
  return [(y - y0) * rows / h - 0.5, (x - x0) * cols / w - 0.5];
}

function pairForm(points) {
  const form = new FormData();
  form.append("image_a", pair.a, pair.a.name);
  form.append("image_b", pair.b, pair.b.name);
  if (points) form.append("points", points);
  return form;
}

for (const side of ["a", "b"]) {
  $(`#pair-${side}`).addEventListener("change", (ev) => guarded(async () => {
    pair[side] = ev.target.files[0] || null;
    if (pair[side]) await showFilm(side);
    await drawLines();
  }));
}

$("#pair-canvas-a").addEventListener("click", (ev) => guarded(async () => {
  if (!pair.a || !pair.b) throw new Error("choose both films first");
  const rect = ev.target.getBoundingClientRect();
  const scale = ev.target.width / rect.width;
  const [row, col] = toImage("a", (ev.clientX - rect.left) * scale, (ev.clientY - rect.top) * scale);
  const answer = await (await call("/v1/cxr/correspond", { form: pairForm(`${row},${col}`) })).json();
  const match = answer.matches[0];
  drawFilm("a", match.a);
  if (match.b) {
    drawFilm("b", match.b);
    $("#pair-similarity").textContent = `A (${match.a.map(Math.round)}) → B (${match.b.map(Math.round)}), similarity ${match.similarity.toFixed(3)}`;
  } else {
    drawFilm("b");
    $("#pair-similarity").textContent = "that point is outside the part of A the model sees";
  }
}));

$("#pair-lines").addEventListener("change", () => guarded(drawLines));

async function drawLines() {
  const svg = $("#pair-svg");
  svg.replaceChildren();
  if (!$("#pair-lines").checked || !pair.img.a || !pair.img.b) return;
  const answer = await (await call("/v1/cxr/correspond", { form: pairForm() })).json();
  const offset = $("#pair-canvas-b").offsetLeft;
  const ns = "http://www.w3.org/2000/svg";
  for (const m of answer.matches) {
    if (!m.b) continue;
    const [xa, ya] = toCanvas("a", m.a);
    const [xb, yb] = toCanvas("b", m.b);
    const line = document.createElementNS(ns, "line");
    Object.entries({ x1: xa, y1: ya, x2: xb + offset, y2: yb, stroke: "#4fb3ff", "stroke-width": 1,
                     "stroke-opacity": 0.3 + 0.7 * Math.max(0, m.similarity) }).forEach(([k, v]) => line.setAttribute(k, v));
    svg.append(line);
  }
}

// --- jobs and models -----------------------------------------------------------------------------
async function loadJobs() {
  const answer = await (await call("/v1/jobs?limit=50")).json();
  const rows = $("#jobs tbody");
  rows.replaceChildren();
  for (const j of answer.jobs) {
    const timings = Object.entries(j.timings_ms).map(([k, v]) => `${k} ${Math.round(v)}`).join(", ");
    rows.append(el("tr", { "data-state": j.state },
      el("td", {}, new Date(j.created * 1000).toLocaleString()), el("td", {}, j.study_uid),
      el("td", {}, j.state + (j.reason ? ` — ${j.reason}` : "")), el("td", {}, j.models.join(", ")),
      el("td", { class: "num" }, String(j.instances)), el("td", {}, timings)));
  }
}
$("#jobs-refresh").addEventListener("click", () => guarded(loadJobs));
setInterval(() => { if (!$("#tab-jobs").hidden) guarded(loadJobs); }, 5000);

async function loadModels() {
  const answer = await (await call("/v1/models")).json();
  const out = $("#models");
  out.replaceChildren();
  for (const m of answer.models) {
    const labels = m.outputs.flatMap((o) => o.labels || []).join(", ") || "—";
    const input = (m.inputs[0] && m.inputs[0].shape.slice(1).join(" × ")) || "—";
    const dl = el("dl", {});
    for (const [k, v] of [["family", m.family], ["task", m.task], ["input", input], ["labels", labels], ["backend", m.backend]]) {
      dl.append(el("dt", {}, k), el("dd", {}, String(v)));
    }
    out.append(el("div", { class: "card", "data-model": m.id }, el("h3", {}, m.id), dl));
  }
}
guarded(loadModels);
