// lerpray playground: reads GET /v1/models, builds one slider per attribute, and streams completions over the
// server-sent events of /v1/completions and /v1/chat/completions (fetch + ReadableStream). No framework, no build.
"use strict";

const KEY_STORAGE = "lerpray-api-key";
const $ = (id) => document.getElementById(id);
const state = { card: null, presets: {}, tab: "attributes", running: null };

// ---- the server -----------------------------------------------------------------------------------------------

function headers() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function errorMessage(response) {
  try {
    return (await response.json()).error.message;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

async function loadModels() {
  setStatus("loading…");
  const response = await fetch("v1/models", { headers: headers() });
  if (response.status === 401) {
    setStatus("this server needs an API key: enter it above");
    $("api-key").focus();
    return;
  }
  if (!response.ok) throw new Error(await errorMessage(response));
  const cards = (await response.json()).data;
  state.card = cards.find((c) => !c.parent);
  state.presets = Object.fromEntries(cards.filter((c) => c.parent).map((c) => [c.id, c.interpolation]));
  buildControls();
  const n = Object.keys(state.card.attributes).length;
  setStatus(`${state.card.id}: ${n} attribute${n === 1 ? "" : "s"}, ${state.card.anchors.length} anchors, ` +
    `anchor set ${state.card.fingerprint}`);
}

// POST with stream: true; calls onText(text) for each piece as it arrives, and onSteer(point) for each measurement
// of a closed loop (token, alpha, score). Resolves to {finish, usage, resolved, feedback}.
async function stream(route, body, onText, signal, onSteer = () => {}) {
  const path = route === "chat" ? "v1/chat/completions" : "v1/completions";
  const response = await fetch(path, {
    method: "POST",
    headers: { ...headers(), "Content-Type": "application/json" },
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
    signal,
  });
  if (!response.ok) throw new Error(await errorMessage(response));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const resolved = response.headers.get("x-lerpray-mix"); // the mix the server resolved (targets -> alphas)
  const result = { finish: null, usage: null, resolved: resolved ? JSON.parse(resolved) : null, feedback: null };
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return result;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return result;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) result.usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          const text = route === "chat" ? choice.delta && choice.delta.content : choice.text;
          if (text) onText(text);
          if (choice.steering) onSteer(choice.steering);
          if (choice.resolved_mix && choice.resolved_mix.feedback) result.feedback = choice.resolved_mix.feedback;
          if (choice.finish_reason) result.finish = choice.finish_reason;
        }
      }
    }
  }
}

// ---- the controls ---------------------------------------------------------------------------------------------

function el(tag, props = {}, children = []) {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child);
  return node;
}

function buildControls() {
  const { attributes, anchors, extrapolation } = state.card;
  const form = $("attributes-form");
  form.replaceChildren();
  for (const [name, poles] of Object.entries(attributes)) {
    const alpha = el("input", { type: "range", min: 0, max: 1, step: 0.01, value: 0.5, className: "alpha" });
    const lambda = el("input", { type: "range", min: 0, max: 1, step: 0.01, value: 1, className: "lambda" });
    alpha.dataset.alpha = name;
    lambda.dataset.lambda = name;
    const use = el("input", { type: "checkbox", checked: true, className: "use" });
    use.dataset.use = name;
    const row = el("div", { className: "attr" }, [
      el("label", { className: "row" }, [use, el("strong", { textContent: name })]),
      el("div", { className: "slider" }, [
        el("span", { className: "pole low", textContent: poles.low, title: `alpha 0: ${poles.low}` }),
        alpha,
        el("span", { className: "pole high", textContent: poles.high, title: `alpha 1: ${poles.high}` }),
        el("output", { className: "alpha-value" }),
      ]),
      el("div", { className: "lambda-row" }, [el("span", { textContent: "weight λ" }), lambda,
        el("output", { className: "lambda-value" })]),
    ]);
    row.dataset.attribute = name;
    form.append(row);
  }
  const targetsForm = $("targets-form");
  targetsForm.querySelectorAll(".target-row").forEach((row) => row.remove());
  for (const [name, poles] of Object.entries(attributes)) {
    const input = el("input", { type: "number", step: 0.05, placeholder: "not set" });
    input.dataset.target = name;
    targetsForm.append(el("label", { className: "target-row", title: `${poles.low} … ${poles.high}` },
      [el("span", { textContent: name }), input]));
  }
  const anchorsForm = $("anchors-form");
  anchorsForm.querySelectorAll(".anchor-row").forEach((row) => row.remove());
  for (const name of anchors) {
    const input = el("input", { type: "number", step: 0.05, min: 0, max: 1, value: (1 / anchors.length).toFixed(3) });
    input.dataset.weight = name;
    anchorsForm.append(el("label", { className: "anchor-row" }, [el("span", { textContent: name }), input]));
  }
  $("extrapolate-row").hidden = !extrapolation;
  if (extrapolation) {
    $("extrapolate-bounds").textContent =
      `alpha in [${extrapolation.alpha_min}, ${extrapolation.alpha_max}], ` +
      `weights in [${extrapolation.weight_min}, ${extrapolation.weight_max}]`;
  }
  fillSelect($("preset"), ["", ...Object.keys(state.presets)], (id) => id || `${state.card.id} (centre of the hull)`);
  fillSelect($("compare-attribute"), Object.keys(attributes), (name) => name);
  fillSelect($("schedule-attribute"), Object.keys(attributes), (name) => name);
  $("max-tokens").max = state.card.max_tokens_cap;
  if (!$("max-tokens").value) $("max-tokens").value = Math.min(48, state.card.max_tokens_cap);
  setRanges();
  $("compare-box").hidden = !Object.keys(attributes).length;
  showTab(Object.keys(attributes).length ? state.tab : "anchors");
}

function fillSelect(select, values, label) {
  select.replaceChildren(...values.map((value) => el("option", { value, textContent: label(value) })));
}

function setRanges() {
  const bounds = $("extrapolate").checked ? state.card.extrapolation : null;
  for (const slider of document.querySelectorAll("input.alpha")) {
    slider.min = bounds ? bounds.alpha_min : 0;
    slider.max = bounds ? bounds.alpha_max : 1;
  }
  for (const input of document.querySelectorAll("input[data-weight]")) {
    input.min = bounds ? bounds.weight_min : 0;
    input.max = bounds ? bounds.weight_max : 1;
  }
}

function activeAttributes() {
  return [...document.querySelectorAll("input.use")].filter((box) => box.checked).map((box) => box.dataset.use);
}

// The request's `interpolation` from the controls, over the whole reply (schedule or ramp when one is chosen).
function currentInterpolation() {
  const mix = currentMix();
  const mode = $("schedule-mode").value;
  if (!mode) return mix;
  const tokens = Number($("schedule-tokens").value);
  if (!(Number.isInteger(tokens) && tokens >= 1)) throw new Error("give the schedule's token count as a whole number >= 1");
  const attribute = $("schedule-attribute").value;
  const value = Number($("schedule-alpha").value);
  // The later mix: this one with the chosen attribute's alpha changed (alone when this mix has no alphas).
  const then = mix.alpha ? { ...mix, alpha: { ...mix.alpha, [attribute]: value } } : { alpha: { [attribute]: value } };
  if (then.lambda && !(attribute in then.lambda)) delete then.lambda; // an attribute outside the weights: alphas only
  if (mix.extrapolate) then.extrapolate = true;
  return mode === "switch" ? { schedule: [{ until: tokens, mix }, { mix: then }] }
    : { ramp: { from: mix, to: then, over: tokens } };
}

// The mix of the Mix box (token 0's under a schedule); throws an Error saying what to change.
function currentMix() {
  const extrapolate = $("extrapolate").checked;
  let mix;
  if (state.tab === "targets") {
    const targets = {};
    for (const input of document.querySelectorAll("input[data-target]")) {
      if (input.value.trim() !== "") targets[input.dataset.target] = Number(input.value);
    }
    if (!Object.keys(targets).length) throw new Error("give at least one attribute a target score");
    mix = { target: targets };
    if ($("feedback").checked) {
      const every = Number($("feedback-every").value);
      if (!(Number.isInteger(every) && every >= 1)) throw new Error("steer every: give a whole number of tokens >= 1");
      mix.feedback = { every };
    }
  } else if (state.tab === "anchors") {
    const weights = {};
    for (const input of document.querySelectorAll("input[data-weight]")) weights[input.dataset.weight] = Number(input.value);
    if (!extrapolate) {
      const total = Object.values(weights).reduce((a, b) => a + b, 0);
      if (Object.values(weights).some((w) => !(w >= 0)) || !(total > 0)) {
        throw new Error("anchor weights must be >= 0 with a positive sum (or tick extrapolate)");
      }
      for (const name in weights) weights[name] /= total;
    }
    mix = { anchors: weights };
  } else {
    const active = activeAttributes();
    if (!active.length) throw new Error("tick at least one attribute");
    mix = { alpha: Object.fromEntries(active.map((a) => [a, Number(slider("alpha", a).value)])) };
    if (active.length > 1) {
      const raw = active.map((a) => Number(slider("lambda", a).value));
      const total = raw.reduce((a, b) => a + b, 0);
      if (!(total > 0)) throw new Error("give at least one active attribute a weight λ above 0");
      mix.lambda = Object.fromEntries(active.map((a, i) => [a, raw[i] / total]));
    }
  }
  if (extrapolate) mix.extrapolate = true;
  return mix;
}

function slider(kind, attribute) {
  return document.querySelector(`input[data-${kind}="${CSS.escape(attribute)}"]`);
}

// The inline model-id form of a mix (lerpray/serve/model_ids.py: format_inline_mix).
function inlineModelId(mix) {
  const sections = [];
  for (const kind of ["alpha", "lambda", "anchors"]) {
    if (!mix[kind]) continue;
    const pairs = Object.entries(mix[kind]).map(([name, value]) => `${name}=${+value.toFixed(6)}`).join(",");
    sections.push(kind === "alpha" ? pairs : `${kind}:${pairs}`);
  }
  if (mix.extrapolate) sections.push("extrapolate");
  return `${state.card.id}:${sections.join(";")}`;
}

function refresh() {
  const active = activeAttributes();
  for (const row of document.querySelectorAll(".attr")) {
    const on = active.includes(row.dataset.attribute);
    row.classList.toggle("inactive", !on);
    row.querySelector(".lambda-row").hidden = !on || active.length < 2;
    row.querySelector(".alpha-value").textContent = Number(row.querySelector("input.alpha").value).toFixed(2);
  }
  $("schedule-tokens").hidden = !$("schedule-mode").value;
  $("schedule-then").hidden = !$("schedule-mode").value;
  try {
    const mix = currentMix();
    if (mix.lambda) {
      for (const [name, value] of Object.entries(mix.lambda)) {
        document.querySelector(`.attr[data-attribute="${CSS.escape(name)}"] .lambda-value`).textContent =
          value.toFixed(2);
      }
    }
    const interpolation = currentInterpolation();
    $("mix-json").textContent = JSON.stringify(interpolation);
    $("mix-model-id").textContent = interpolation === mix && !mix.target ? inlineModelId(mix)
      : "(targets and schedules have no model-id form)";
  } catch (err) {
    $("mix-json").textContent = err.message;
    $("mix-model-id").textContent = "";
  }
}

function applyPreset(id) {
  const mix = state.presets[id] || { alpha: Object.fromEntries(Object.keys(state.card.attributes).map((a) => [a, 0.5])) };
  $("extrapolate").checked = Boolean(mix.extrapolate);
  setRanges();
  if (mix.anchors) {
    showTab("anchors");
    for (const input of document.querySelectorAll("input[data-weight]")) {
      input.value = mix.anchors[input.dataset.weight] || 0;
    }
  } else {
    showTab("attributes");
    for (const box of document.querySelectorAll("input.use")) {
      const name = box.dataset.use;
      box.checked = name in mix.alpha;
      if (box.checked) slider("alpha", name).value = mix.alpha[name];
      slider("lambda", name).value = mix.lambda && name in mix.lambda ? mix.lambda[name] : 1;
    }
  }
  refresh();
}

function showTab(tab) {
  state.tab = tab;
  for (const name of ["attributes", "targets", "anchors"]) {
    $(`tab-${name}`).classList.toggle("active", tab === name);
    $(`${name}-form`).hidden = tab !== name;
  }
  refresh();
}

// ---- generating -----------------------------------------------------------------------------------------------

function route() {
  return document.querySelector("input[name=route]:checked").value;
}

function requestBody(mix, seed) {
  const body = { model: state.card.id, interpolation: mix, max_tokens: Number($("max-tokens").value),
    temperature: Number($("temperature").value) };
  if (seed !== null) body.seed = seed;
  if (route() === "chat") {
    const system = $("system").value.trim();
    body.messages = [...(system ? [{ role: "system", content: system }] : []), { role: "user", content: $("prompt").value }];
  } else {
    body.prompt = $("prompt").value;
  }
  return body;
}

function seedValue() {
  const text = $("seed").value.trim();
  return text === "" ? null : Number(text);
}

// Streams one request into a column (.meta, .text); marks it data-state streaming -> done | failed.
async function run(column, body, signal) {
  const text = column.querySelector(".text");
  const meta = column.querySelector(".meta");
  const steering = column.querySelector(".steering");
  const target = body.interpolation.target || {};
  const scores = (score) => Object.entries(score || {}).map(([a, s]) => `${a} ${s === null ? "none yet" : s.toFixed(3)}` +
    (a in target ? ` (target ${target[a]})` : "")).join(", ");
  text.textContent = "";
  column.dataset.state = "streaming";
  column.dataset.finalScore = "";
  column.dataset.measurements = 0;
  if (steering) {
    steering.hidden = !body.interpolation.feedback;
    steering.textContent = "steering: waiting for the first measurement…";
  }
  const onSteer = (point) => {
    const alphas = Object.entries(point.alpha).map(([a, v]) => `${a} ${v.toFixed(2)}`).join(", ");
    steering.textContent = `score now: ${scores(point.score)} · at token ${point.token} · alpha → ${alphas}`;
    column.dataset.measurements = Number(column.dataset.measurements) + 1;
  };
  try {
    const { finish, usage, resolved, feedback } = await stream(route(), body, (piece) => text.append(piece), signal,
      steering ? onSteer : undefined);
    meta.textContent = `${finish}` + (usage ? ` · ${usage.completion_tokens} tokens` : "") +
      (resolved ? ` · resolved ${JSON.stringify(resolved)}` : "");
    column.dataset.resolved = resolved ? JSON.stringify(resolved) : "";
    if (steering && feedback) {
      steering.textContent = `final score: ${scores(feedback.final_score)} · ${feedback.trajectory.length} mixes`;
      column.dataset.finalScore = JSON.stringify(feedback.final_score);
    }
    column.dataset.state = "done";
  } catch (err) {
    meta.textContent = err.name === "AbortError" ? "stopped" : `error: ${err.message}`;
    column.dataset.state = "failed";
    if (err.name !== "AbortError") showError(err.message);
  }
}

async function runAll(jobs) {
  showError(null);
  const controller = new AbortController();
  state.running = controller;
  for (const id of ["generate", "compare"]) $(id).disabled = true;
  $("stop").disabled = false;
  try {
    await Promise.all(jobs.map(([column, body]) => run(column, body, controller.signal)));
  } finally {
    state.running = null;
    for (const id of ["generate", "compare"]) $(id).disabled = false;
    $("stop").disabled = true;
  }
}

function generate() {
  const mix = guarded(currentInterpolation);
  if (!mix) return;
  $("compare-columns").replaceChildren();
  const single = $("single");
  single.hidden = false;
  single.querySelector(".meta").textContent = `mix ${JSON.stringify(mix)}`;
  runAll([[single, requestBody(mix, seedValue())]]);
}

function compare() {
  const attribute = $("compare-attribute").value;
  const use = document.querySelector(`input[data-use="${CSS.escape(attribute)}"]`);
  if (use) use.checked = true; // the swept attribute joins the mix
  showTab("attributes");
  const mix = guarded(currentMix);
  const positions = guarded(comparePositions);
  if (!mix || !positions) return;
  if (seedValue() === null) $("seed").value = 1; // the same seed in every column: only the mix differs
  $("single").hidden = true;
  const columns = $("compare-columns");
  columns.replaceChildren();
  const jobs = positions.map((position) => {
    const column = el("div", { className: "column" }, [
      el("h3", { textContent: `α = ${position}`, title: `${attribute} alpha ${position}` }),
      el("div", { className: "meta" }),
      el("pre", { className: "text" })]);
    column.dataset.position = position;
    columns.append(column);
    return [column, requestBody({ ...mix, alpha: { ...mix.alpha, [attribute]: position } }, seedValue())];
  });
  runAll(jobs);
}

function comparePositions() {
  const bounds = $("extrapolate").checked ? state.card.extrapolation : { alpha_min: 0, alpha_max: 1 };
  const positions = $("compare-positions").value.split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  if (!positions.length || positions.some((p) => !(p >= bounds.alpha_min && p <= bounds.alpha_max))) {
    throw new Error(`give comma-separated alphas in [${bounds.alpha_min}, ${bounds.alpha_max}]` +
      ($("extrapolate").checked ? "" : " (tick extrapolate for more)"));
  }
  return positions;
}

function guarded(fn) {
  try {
    return fn();
  } catch (err) {
    showError(err.message);
    return null;
  }
}

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
}

function setStatus(text) {
  $("status").textContent = text;
}

// ---- wiring ---------------------------------------------------------------------------------------------------

function start() {
  $("api-key").value = sessionStorage.getItem(KEY_STORAGE) || "";
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    loadModels().catch((err) => setStatus(`error: ${err.message}`));
  });
  for (const id of ["attributes-form", "targets-form", "anchors-form", "schedule-box"]) {
    $(id).addEventListener("input", refresh);
    $(id).addEventListener("change", refresh); // selects: some browsers send only change
  }
  $("extrapolate").addEventListener("change", () => { setRanges(); refresh(); });
  $("preset").addEventListener("change", (event) => applyPreset(event.target.value));
  $("tab-attributes").addEventListener("click", () => showTab("attributes"));
  $("tab-targets").addEventListener("click", () => showTab("targets"));
  $("tab-anchors").addEventListener("click", () => showTab("anchors"));
  for (const radio of document.querySelectorAll("input[name=route]")) {
    radio.addEventListener("change", () => { $("system").hidden = route() !== "chat"; });
  }
  $("generate").addEventListener("click", generate);
  $("compare").addEventListener("click", compare);
  $("stop").addEventListener("click", () => state.running && state.running.abort());
  loadModels().catch((err) => setStatus(`error: ${err.message}`));
}

start();
