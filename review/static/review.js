// The review page: the queue, one image at a time on a canvas with its boxes, and the verdicts.
"use strict";

const COLOURS = { blurred: "#e0483e", proposal: "#f0c674", review: "#3ec1e0", false: "#999999", drawn: "#ffffff" };
const canvas = document.getElementById("canvas");
const context = canvas.getContext("2d");
const state = { queue: [], position: 0, image: null, picture: null, scale: 1, selected: null, drawn: null, drag: null };

function $(id) { return document.getElementById(id); }
function say(text) { $("status").textContent = text; }

async function api(path, options) {
  const reply = await fetch(path, options);
  const body = reply.headers.get("content-type")?.includes("json") ? await reply.json() : null;
  if (!reply.ok) throw new Error(body?.error || reply.statusText);
  return body;
}

async function loadQueue() {
  const queue = await api("/api/queue");
  state.queue = queue.items;
  $("where").textContent = `${queue.output} (${queue.images} images, reviewer ${queue.reviewer})`;
  $("failed-count").textContent = queue.failed.length;
  $("failed").replaceChildren(...queue.failed.slice(0, 20).map((f) => item(`${f.key}: ${f.error}`)));
  const wanted = new URLSearchParams(location.search).get("key");  // a link to one image
  if (wanted && !state.queue.some((i) => i.key === wanted)) {
    state.queue.unshift({ key: wanted, reasons: [], random_slice: false, reviewed: false });
  }
  const firstOpen = wanted ? state.queue.findIndex((i) => i.key === wanted) : state.queue.findIndex((i) => !i.reviewed);
  await show(firstOpen < 0 ? 0 : firstOpen);
}

function item(text) { const li = document.createElement("li"); li.textContent = text; return li; }

async function show(position) {
  if (!state.queue.length) { say("nothing to review"); return; }
  state.position = (position + state.queue.length) % state.queue.length;
  const key = state.queue[state.position].key;
  state.image = await api(`/api/image?key=${encodeURIComponent(key)}`);
  state.selected = null; state.drawn = null;
  $("look").style.display = "none";
  await loadPicture();
}

async function loadPicture() {
  const image = state.image;
  const picture = new Image();
  picture.src = `/api/output?key=${encodeURIComponent(image.key)}&t=${Date.now()}`;
  await picture.decode();
  state.picture = picture;
  const room = Math.min(document.getElementById("stage").clientWidth, 1600);
  state.scale = Math.min(1, room / image.width, (window.innerHeight - 60) / image.height);
  canvas.width = Math.round(image.width * state.scale);
  canvas.height = Math.round(image.height * state.scale);
  const done = state.queue.filter((i) => i.reviewed).length;
  $("progress").textContent = `${state.position + 1} / ${state.queue.length} in the queue, ${done} fully reviewed`;
  $("key").textContent = image.key;
  $("reasons").replaceChildren(...image.reasons.map(item));
  $("reviewed").textContent = image.reviewed ? "fully reviewed" : "";
  draw();
}

function draw() {
  const image = state.image;
  context.drawImage(state.picture, 0, 0, canvas.width, canvas.height);
  for (const box of image.false) outline(box, COLOURS.false, [2, 4]);
  for (const box of image.proposals) outline(box, COLOURS.proposal, [6, 4]);
  for (const box of image.boxes) outline(box, box.source === "review" ? COLOURS.review : COLOURS.blurred, []);
  if (state.selected) outline(state.selected.box, COLOURS.drawn, [], 4);
  if (state.drawn) outline({ box: state.drawn }, COLOURS.drawn, [3, 3]);
  const selected = state.selected;
  $("mark-false").disabled = !(selected && selected.kind === "blurred");
  $("accept").disabled = !(selected && selected.kind === "proposal");
  $("show-original").disabled = !(selected && selected.kind !== "drawn");
  $("add-face").disabled = $("add-plate").disabled = !state.drawn;
}

function outline(box, colour, dash, width = 2) {
  const [x1, y1, x2, y2] = box.box.map((v) => v * state.scale);
  context.save();
  context.strokeStyle = colour; context.lineWidth = width; context.setLineDash(dash);
  context.strokeRect(x1, y1, x2 - x1, y2 - y1);
  context.restore();
}

function imagePoint(event) {
  const rect = canvas.getBoundingClientRect();
  const x = (event.clientX - rect.left) * (canvas.width / rect.width) / state.scale;
  const y = (event.clientY - rect.top) * (canvas.height / rect.height) / state.scale;
  return [Math.min(Math.max(x, 0), state.image.width), Math.min(Math.max(y, 0), state.image.height)];
}

canvas.addEventListener("mousedown", (event) => { state.drag = imagePoint(event); });
canvas.addEventListener("mousemove", (event) => {
  if (!state.drag) return;
  const [x, y] = imagePoint(event);
  const [x0, y0] = state.drag;
  state.drawn = [Math.min(x0, x), Math.min(y0, y), Math.max(x0, x), Math.max(y0, y)];
  draw();
});
canvas.addEventListener("mouseup", (event) => {
  const [x, y] = imagePoint(event);
  const [x0, y0] = state.drag || [x, y];
  state.drag = null;
  if (Math.abs(x - x0) * state.scale < 4 && Math.abs(y - y0) * state.scale < 4) {
    state.drawn = null;
    select(x, y);
  } else {
    state.drawn = [Math.min(x0, x), Math.min(y0, y), Math.max(x0, x), Math.max(y0, y)];
    state.selected = null;
    say("drawn box: f adds it as a face, p as a plate");
  }
  draw();
});

function select(x, y) {
  const candidates = [
    ...state.image.boxes.map((b) => ({ kind: "blurred", box: b })),
    ...state.image.proposals.map((b) => ({ kind: "proposal", box: b })),
  ].filter(({ box }) => box.box[0] <= x && x <= box.box[2] && box.box[1] <= y && y <= box.box[3]);
  const area = (b) => (b.box[2] - b.box[0]) * (b.box[3] - b.box[1]);
  candidates.sort((a, b) => area(a.box) - area(b.box));
  state.selected = candidates[0] || null;
  say(state.selected ? `selected ${state.selected.kind} ${state.selected.box.class} (${state.selected.box.score ?? "drawn"})` : "");
}

async function verdict(body) {
  say(`recording ${body.kind}...`);
  try {
    const reply = await api("/api/verdict", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ key: state.image.key, ...body }),
    });
    state.image = reply.image;
    state.selected = null; state.drawn = null;
    const reblur = reply.written.find((e) => e.kind === "reblur");
    if (body.kind === "reviewed") state.queue[state.position].reviewed = true;
    await loadPicture();
    say(reblur ? `${body.kind}: re-blurred (${reblur.new_sha256.slice(0, 12)})` : `${body.kind}: recorded`);
  } catch (error) {
    say(`${body.kind} refused: ${error.message}`);
  }
}

function addDrawn(kind) { if (state.drawn) verdict({ kind: "add", class: kind, box: state.drawn }); }
function markFalse() {
  if (state.selected?.kind === "blurred") verdict({ kind: "false", id: state.selected.box.id });
}
function accept() {
  if (state.selected?.kind === "proposal") verdict({ kind: "accept", id: state.selected.box.id });
}
async function showOriginal() {
  if (!state.selected) return;
  const look = $("look");
  const query = `key=${encodeURIComponent(state.image.key)}&box=${encodeURIComponent(state.selected.box.id)}`;
  const reply = await fetch(`/api/original?${query}`);
  if (!reply.ok) { say(`original refused: ${(await reply.json()).error}`); return; }
  look.src = URL.createObjectURL(await reply.blob());
  look.style.display = "block";
  say("original shown inside the selected box (this look is logged)");
}

const ACTIONS = {
  f: () => addDrawn("face"),
  p: () => addDrawn("plate"),
  x: markFalse,
  a: accept,
  o: showOriginal,
  r: () => verdict({ kind: "reviewed" }),
  n: () => show(state.position + 1),
  b: () => show(state.position - 1),
  Escape: () => { state.selected = null; state.drawn = null; draw(); },
};
document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey || !state.image) return;
  const action = ACTIONS[event.key];
  if (action) { event.preventDefault(); action(); }
});
$("add-face").onclick = ACTIONS.f;
$("add-plate").onclick = ACTIONS.p;
$("mark-false").onclick = ACTIONS.x;
$("accept").onclick = ACTIONS.a;
$("show-original").onclick = ACTIONS.o;
$("fully-reviewed").onclick = ACTIONS.r;
$("next").onclick = ACTIONS.n;
$("previous").onclick = ACTIONS.b;

loadQueue().catch((error) => say(`cannot load the queue: ${error.message}`));
