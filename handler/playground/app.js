// ladle playground: chat and completion over the server's own OpenAI-compatible API.
// Plain browser JavaScript, no build step and nothing fetched from another origin.
"use strict";

const STORE_KEY = "ladle.playground.v1";
const KEY_STORE_KEY = "ladle.playground.apiKey";

const DEFAULTS = {
  mode: "chat",
  preset: "balanced",
  system: "",
  max_tokens: "256",
  temperature: "0.7",
  top_p: "0.9",
  top_k: "40",
  presence_penalty: "0",
  frequency_penalty: "0",
  seed: "",
  top_logprobs: "5",
  stop: "",
  logprobs: false,
  ignore_eos: false,
};

// Presets only touch the sampling knobs; length, seed and stop sequences stay as the user set them.
const PRESETS = {
  precise: { temperature: "0", top_p: "1", top_k: "0", presence_penalty: "0", frequency_penalty: "0" },
  balanced: { temperature: "0.7", top_p: "0.9", top_k: "40", presence_penalty: "0", frequency_penalty: "0" },
  creative: { temperature: "1", top_p: "0.95", top_k: "0", presence_penalty: "0.5", frequency_penalty: "0.3" },
};

const MODES = ["chat", "completion"];

const $ = (id) => document.getElementById(id);
const ui = {
  body: document.body,
  transcript: $("transcript"),
  composer: $("composer"),
  input: $("input"),
  inputLabel: $("input-label"),
  inputHint: $("input-hint"),
  send: $("send"),
  stop: $("stop"),
  clear: $("clear"),
  status: $("status"),
  server: $("server"),
  serverText: $("server-text"),
  params: $("params"),
  paramsForm: $("params-form"),
  toggleParams: $("toggle-params"),
  preset: $("preset"),
  apiKey: $("api_key"),
  apiKeyField: $("api-key-field"),
  reset: $("reset"),
  tip: $("tip"),
};

const state = {
  settings: { ...DEFAULTS },
  model: null,
  history: [], // chat messages sent so far: {role, content}
  drafts: { chat: "", completion: "" },
  controller: null,
  views: { chat: [], completion: [] }, // each mode's transcript while the other one shows
};

// ---------------------------------------------------------------------------------------------
// Settings: the form is the source of truth; localStorage remembers it across reloads.

function loadSettings() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORE_KEY) || "{}");
    for (const key of Object.keys(DEFAULTS)) {
      if (typeof saved[key] === typeof DEFAULTS[key]) state.settings[key] = saved[key];
    }
  } catch {
    // Storage may be disabled or hold something else; the defaults do.
  }
  if (!MODES.includes(state.settings.mode)) state.settings.mode = DEFAULTS.mode;
  try {
    ui.apiKey.value = sessionStorage.getItem(KEY_STORE_KEY) || "";
  } catch {
    ui.apiKey.value = "";
  }
  if (ui.apiKey.value) ui.apiKeyField.hidden = false;
}

function saveSettings() {
  try {
    localStorage.setItem(STORE_KEY, JSON.stringify(state.settings));
  } catch {
    // Nothing to do: the settings still apply to this page.
  }
}

function fields() {
  return ui.paramsForm.querySelectorAll("[name]");
}

function writeForm() {
  for (const field of fields()) {
    const value = state.settings[field.name];
    if (field.type === "checkbox") field.checked = Boolean(value);
    else field.value = value;
  }
  ui.preset.value = state.settings.preset;
  document.querySelector(`input[name=mode][value=${state.settings.mode}]`).checked = true;
}

function readForm() {
  for (const field of fields()) {
    state.settings[field.name] = field.type === "checkbox" ? field.checked : field.value;
  }
  state.settings.preset = matchingPreset();
  ui.preset.value = state.settings.preset;
  saveSettings();
}

function matchingPreset() {
  const found = Object.entries(PRESETS).find(([, values]) =>
    Object.entries(values).every(([key, value]) => Number(state.settings[key]) === Number(value)),
  );
  return found ? found[0] : "custom";
}

function applyPreset(name) {
  if (PRESETS[name]) Object.assign(state.settings, PRESETS[name]);
  state.settings.preset = name;
  writeForm();
  saveSettings();
}

// The request fields common to both endpoints; an empty field means the server's default.
function samplingFields() {
  const s = state.settings;
  const body = { stream: true, stream_options: { include_usage: true } };
  if (state.model) body.model = state.model;
  for (const key of ["max_tokens", "top_k", "seed"]) {
    if (s[key].trim() !== "") body[key] = Math.trunc(Number(s[key]));
  }
  for (const key of ["temperature", "top_p", "presence_penalty", "frequency_penalty"]) {
    if (s[key].trim() !== "") body[key] = Number(s[key]);
  }
  const stop = s.stop.split("\n").filter((line) => line !== "").map(unescapeStop);
  if (stop.length) body.stop = stop;
  if (s.ignore_eos) body.ignore_eos = true;
  return body;
}

function unescapeStop(line) {
  return line.replace(/\\([nt\\])/g, (_, c) => ({ n: "\n", t: "\t", "\\": "\\" })[c]);
}

function topLogprobs() {
  const k = Math.trunc(Number(state.settings.top_logprobs));
  return Number.isFinite(k) && k > 0 ? k : 5;
}

// ---------------------------------------------------------------------------------------------
// HTTP: the API key, readable errors, and server-sent events read from fetch.

class ApiError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.status = status;
  }
}

function headers() {
  const h = { "Content-Type": "application/json" };
  if (ui.apiKey.value.trim()) h.Authorization = `Bearer ${ui.apiKey.value.trim()}`;
  return h;
}

async function errorFrom(response) {
  let message = response.statusText || "request failed";
  try {
    const body = await response.json();
    if (body && body.error) message = describeError(body.error);
  } catch {
    // Not JSON (a proxy's page, say): the status line is all there is.
  }
  if (response.status === 401) showKeyField("The server refused the API key: enter a valid one.");
  return new ApiError(`${response.status}: ${message}`, response.status);
}

function describeError(error) {
  if (typeof error === "string") return error;
  let text = error.message || error.type || "unknown error";
  if (error.param && !text.includes(error.param)) text += ` (parameter: ${error.param})`;
  return text;
}

// Yields the data of each event; the reader is cancelled if the caller stops early.
async function* sseData(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer = (buffer + value).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = event
          .split("\n")
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(line.startsWith("data: ") ? 6 : 5));
        if (data.length) yield data.join("\n");
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

async function getJSON(path) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw await errorFrom(response);
  return response.json();
}

// ---------------------------------------------------------------------------------------------
// Server status and model name.

function setServer(kind, text) {
  ui.server.dataset.state = kind;
  ui.serverText.textContent = text;
}

async function connect() {
  let health = {};
  try {
    const response = await fetch("/health");
    health = await response.json().catch(() => ({}));
    if (health.status === "loading" || response.status === 503) {
      setServer("loading", health.status === "failed" ? "Model failed to load" : "Model loading…");
      if (health.status !== "failed") setTimeout(connect, 2000);
      return;
    }
  } catch {
    setServer("down", "Server unreachable");
    setTimeout(connect, 5000);
    return;
  }
  try {
    const models = await getJSON("/v1/models");
    state.model = models.data && models.data.length ? models.data[0].id : null;
    const backend = health.backend ? ` · ${health.backend}` : "";
    setServer("ok", `${state.model || "model"}${backend}`);
  } catch (err) {
    setServer(err.status === 401 ? "locked" : "down", err.status === 401 ? "API key needed" : err.message);
  }
}

function showKeyField(message) {
  ui.apiKeyField.hidden = false;
  openParams(true);
  announce(message);
}

// ---------------------------------------------------------------------------------------------
// Answers: one view per generation, with its text, token spans and live statistics.

// The tokens behind each token span, for its tooltip.
const spanTokens = new WeakMap();

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

class Answer {
  // With `tokenView` the answer shows one span per token (logprobs were asked for), else plain text.
  constructor(container, tokenView) {
    this.tokenView = tokenView;
    this.container = container;
    this.content = element("div", "content");
    this.stats = element("p", "stats");
    container.append(this.content, this.stats);
    container.setAttribute("aria-busy", "true");
    this.text = "";
    this.tokens = 0;
    this.usage = null;
    this.finish = null;
    this.started = performance.now();
    this.first = null;
    this.last = null;
    this.bytes = new TextDecoder();
    this.pending = [];
    this.renderStats();
  }

  // `pieces`: the chunk's tokens as {token, bytes?, logprob, top}, or null without logprobs.
  add(text, pieces) {
    if (!text && !(pieces && pieces.length)) return;
    const now = performance.now();
    if (this.first === null) this.first = now;
    this.last = now;
    this.text += text;
    if (this.tokenView) {
      // The text repeats what the tokens show (it may lag them, held back for stop sequences).
      this.tokens += pieces ? pieces.length : 0;
      for (const piece of pieces || []) this.addToken(piece);
    } else {
      this.tokens += 1; // one token per chunk, unless the server coalesces them
      this.content.append(text);
    }
    this.renderStats();
  }

  addToken(piece) {
    // Byte-level tokens may end mid-character: hold them until the character is whole.
    const shown = piece.bytes
      ? this.bytes.decode(new Uint8Array(piece.bytes), { stream: true })
      : piece.token;
    this.pending.push(piece);
    if (shown !== "") this.addSpan(shown);
  }

  addSpan(shown) {
    const span = element("span", "tok", shown);
    const chosen = this.pending[this.pending.length - 1];
    spanTokens.set(span, this.pending);
    span.style.setProperty("--p", Math.exp(chosen.logprob ?? 0).toFixed(3));
    span.tabIndex = this.content.querySelector(".tok") ? -1 : 0;
    this.pending = [];
    this.content.append(span);
  }

  done(finish, usage) {
    const rest = this.bytes.decode();
    if (this.pending.length) this.addSpan(rest || "\uFFFD");
    if (usage) this.usage = usage;
    if (finish) this.finish = finish;
    this.container.removeAttribute("aria-busy");
    this.renderStats();
    const s = this.summary();
    announce(`Answer complete: ${s.tokens} tokens${s.speed ? `, ${s.speed} tokens per second` : ""}, finish reason ${s.finish}.`);
  }

  fail(message) {
    this.container.removeAttribute("aria-busy");
    this.container.classList.add("failed");
    const alert = element("p", "error", message);
    alert.setAttribute("role", "alert");
    this.container.insertBefore(alert, this.stats);
    this.renderStats();
  }

  summary() {
    const tokens = this.usage ? this.usage.completion_tokens : this.tokens;
    const ttft = this.first === null ? null : Math.round(this.first - this.started);
    const seconds = this.first === null ? 0 : (this.last - this.first) / 1000;
    const speed = tokens > 1 && seconds > 0 ? ((tokens - 1) / seconds).toFixed(1) : null;
    return { tokens, ttft, speed, finish: this.finish || "…" };
  }

  renderStats() {
    const s = this.summary();
    this.stats.replaceChildren(
      stat("TTFT", s.ttft === null ? "…" : `${s.ttft} ms`, "time to first token"),
      stat("tok/s", s.speed ?? "…", "decode speed: tokens after the first per second"),
      stat("tokens", String(s.tokens), "completion tokens"),
      stat("finish", s.finish, "finish reason"),
    );
  }
}

function stat(name, value, title) {
  const node = element("span", "stat");
  node.title = title;
  node.append(element("span", "stat-name", name), " ", element("span", "stat-value", value));
  node.dataset.stat = name;
  return node;
}

// Normalizes both endpoints' chunks to {text, pieces, finish}.
function chatChoice(choice) {
  const entries = choice.logprobs && choice.logprobs.content;
  const pieces = entries
    ? entries.map((e) => ({ token: e.token, bytes: e.bytes, logprob: e.logprob, top: e.top_logprobs || [] }))
    : null;
  return { text: (choice.delta && choice.delta.content) || "", pieces, finish: choice.finish_reason };
}

function completionChoice(choice) {
  const lp = choice.logprobs;
  const pieces = lp && lp.tokens
    ? lp.tokens.map((token, i) => ({
        token,
        logprob: lp.token_logprobs[i],
        top: Object.entries((lp.top_logprobs && lp.top_logprobs[i]) || {}).map(([t, l]) => ({ token: t, logprob: l })),
      }))
    : null;
  return { text: choice.text || "", pieces, finish: choice.finish_reason };
}

async function generate(path, body, answer, readChoice) {
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  let finish = null;
  let usage = null;
  try {
    const response = await fetch(path, {
      method: "POST",
      headers: headers(),
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) throw await errorFrom(response);
    for await (const data of sseData(response)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(describeError(chunk.error));
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        if (choice.index !== 0) continue;
        const { text, pieces, finish: reason } = readChoice(choice);
        answer.add(text, pieces);
        if (reason) finish = reason;
      }
      follow();
    }
    answer.done(finish, usage);
    return true;
  } catch (err) {
    if (err.name === "AbortError") {
      answer.done("stopped", usage);
      return true;
    }
    answer.fail(err instanceof ApiError ? err.message : `Network error: ${err.message}`);
    announce(`Error: ${err.message}`);
    return false;
  } finally {
    if (state.controller === controller) state.controller = null;
    setBusy(false);
  }
}

function stopGeneration() {
  if (state.controller) state.controller.abort();
}

function setBusy(busy) {
  // The Stop button disappears when done: keep keyboard focus from falling to the page.
  const stranded = !busy && document.activeElement === ui.stop;
  ui.send.disabled = busy;
  ui.stop.hidden = !busy;
  ui.clear.disabled = busy;
  ui.body.classList.toggle("busy", busy);
  if (stranded) ui.input.focus();
}

// ---------------------------------------------------------------------------------------------
// The two modes.

function messageView(role, label) {
  const node = element("article", `message ${role}`);
  node.append(element("h3", "role", label));
  ui.transcript.append(node);
  return node;
}

async function sendChat(text) {
  const user = messageView("user", "You");
  user.append(element("div", "content", text));
  state.history.push({ role: "user", content: text });
  const answer = new Answer(messageView("assistant", "Assistant"), state.settings.logprobs);
  follow(true);

  const messages = [...state.history];
  if (state.settings.system.trim()) messages.unshift({ role: "system", content: state.settings.system });
  const body = { ...samplingFields(), messages, ...(window.ladleResponseFormat?.() ?? {}) };
  if (state.settings.logprobs) Object.assign(body, { logprobs: true, top_logprobs: topLogprobs() });

  const ok = await generate("/v1/chat/completions", body, answer, chatChoice);
  if (ok && answer.text) {
    state.history.push({ role: "assistant", content: answer.text });
  } else {
    // Leave no unanswered turn in the history; give a failed message back, so fixing a
    // parameter and resending is one keystroke.
    state.history.pop();
    user.classList.add("unsent");
    if (!ok && !ui.input.value) setInput(text);
  }
}

async function sendCompletion(prompt) {
  const card = element("article", "message completion");
  card.append(element("h3", "role", "Completion"), element("div", "prompt", prompt));
  ui.transcript.append(card);
  const answer = new Answer(card, state.settings.logprobs);
  follow(true);

  const body = { ...samplingFields(), prompt };
  if (state.settings.logprobs) body.logprobs = Math.min(topLogprobs(), 20);
  await generate("/v1/completions", body, answer, completionChoice);

  const more = element("button", "ghost small", "Continue from here");
  more.type = "button";
  more.addEventListener("click", () => {
    setInput(prompt + answer.text);
    ui.input.focus();
  });
  card.append(more);
}

function submit() {
  if (state.controller) return;
  const text = ui.input.value;
  if (!text.trim()) {
    ui.input.focus();
    return;
  }
  if (mode() === "chat") {
    setInput("");
    sendChat(text);
  } else {
    sendCompletion(text);
  }
}

function mode() {
  return state.settings.mode;
}

function setMode(next) {
  if (state.controller) stopGeneration();
  hideTip();
  state.drafts[mode()] = ui.input.value;
  state.views[mode()] = [...ui.transcript.childNodes];
  state.settings.mode = next;
  saveSettings();
  ui.transcript.replaceChildren(...state.views[next]);
  renderMode();
  setInput(state.drafts[next]);
}

// The box grows with its text, up to the limit in the style sheet.
function setInput(text) {
  if (text !== undefined) ui.input.value = text;
  ui.input.style.height = "auto";
  ui.input.style.height = `${ui.input.scrollHeight + 2}px`;
}

function renderMode() {
  const chat = mode() === "chat";
  ui.body.classList.toggle("mode-chat", chat);
  ui.body.classList.toggle("mode-completion", !chat);
  ui.inputLabel.textContent = chat ? "Message" : "Prompt";
  ui.input.rows = chat ? 2 : 6;
  ui.input.placeholder = chat ? "Send a message" : "Write a prompt for the model to continue";
  ui.inputHint.textContent = chat
    ? "Enter sends, Shift+Enter starts a new line, Escape stops."
    : "Ctrl+Enter generates, Escape stops.";
  ui.send.textContent = chat ? "Send" : "Generate";
  ui.clear.textContent = chat ? "Clear conversation" : "Clear output";
  ui.transcript.setAttribute("aria-label", chat ? "Conversation" : "Completions");
  ui.transcript.dataset.empty = chat ? ui.transcript.dataset.emptyChat : ui.transcript.dataset.emptyCompletion;
}

function clearTranscript() {
  if (mode() === "chat") state.history = [];
  ui.transcript.replaceChildren();
  hideTip();
}

// Keep the newest text in view, unless the reader scrolled up to read something else.
function follow(force = false) {
  const t = ui.transcript;
  if (force || t.scrollHeight - t.scrollTop - t.clientHeight < 80) t.scrollTop = t.scrollHeight;
}

function announce(message) {
  ui.status.textContent = "";
  // A fresh text node, a tick later, makes screen readers speak repeated messages too.
  setTimeout(() => (ui.status.textContent = message), 50);
}

// ---------------------------------------------------------------------------------------------
// Token tooltips: hover or focus a token to see its logprob and the top alternatives.

// Whitespace made visible; a token that is part of a character shows as its bytes.
function visible({ token, bytes }) {
  if (token.includes("\uFFFD") && bytes && bytes.length) {
    return bytes.map((b) => `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`).join("");
  }
  return token.replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥") || "∅";
}

function logprobText(logprob, digits) {
  if (typeof logprob !== "number" || Number.isNaN(logprob)) return "n/a";
  const p = Math.exp(logprob) * 100;
  const shown = p >= 10 ? p.toFixed(0) : p >= 0.1 ? p.toFixed(1) : p.toExponential(0);
  return `${logprob.toFixed(digits)} · ${shown}%`;
}

function showTip(span) {
  const pieces = spanTokens.get(span) || [];
  ui.tip.replaceChildren();
  for (const piece of pieces) {
    const head = element("p", "tip-head");
    head.append(element("code", null, visible(piece)), ` logprob ${logprobText(piece.logprob, 3)}`);
    const list = element("ol", "tip-alts");
    for (const alt of piece.top) {
      const chosen = alt.token === piece.token && String(alt.bytes) === String(piece.bytes);
      const row = element("li", chosen ? "chosen" : "");
      const bar = element("span", "bar");
      bar.style.setProperty("--p", Math.exp(alt.logprob).toFixed(3));
      row.append(element("code", null, visible(alt)), bar, element("span", "num", logprobText(alt.logprob, 2)));
      list.append(row);
    }
    ui.tip.append(head);
    if (piece.top.length) ui.tip.append(list);
  }
  ui.tip.hidden = false;
  span.setAttribute("aria-describedby", "tip");
  const box = span.getBoundingClientRect();
  const tip = ui.tip.getBoundingClientRect();
  const left = Math.min(Math.max(8, box.left), window.innerWidth - tip.width - 8);
  const below = box.bottom + 6 + tip.height < window.innerHeight;
  ui.tip.style.left = `${left}px`;
  ui.tip.style.top = `${below ? box.bottom + 6 : Math.max(8, box.top - tip.height - 6)}px`;
}

function hideTip() {
  ui.tip.hidden = true;
  for (const span of document.querySelectorAll(".tok[aria-describedby]")) span.removeAttribute("aria-describedby");
}

function onTokenKey(event) {
  const span = event.target.closest(".tok");
  if (!span) return;
  const tokens = [...span.parentElement.querySelectorAll(".tok")];
  const i = tokens.indexOf(span);
  const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tokens.length - 1 }[event.key];
  if (next === undefined || !tokens[next]) return;
  event.preventDefault();
  span.tabIndex = -1;
  tokens[next].tabIndex = 0;
  tokens[next].focus();
}

// ---------------------------------------------------------------------------------------------
// Wiring.

function openParams(open) {
  ui.body.classList.toggle("params-open", open);
  ui.toggleParams.setAttribute("aria-expanded", String(open));
}

function onKey(event) {
  if (event.key === "Escape") {
    if (state.controller) {
      event.preventDefault();
      stopGeneration();
    } else if (ui.body.classList.contains("params-open")) {
      openParams(false);
      ui.toggleParams.focus();
    } else {
      hideTip();
    }
  }
}

function onInputKey(event) {
  if (event.key !== "Enter" || event.isComposing) return;
  const modified = event.ctrlKey || event.metaKey;
  if (modified || (mode() === "chat" && !event.shiftKey)) {
    event.preventDefault();
    submit();
  }
}

function init() {
  loadSettings();
  writeForm();
  renderMode();
  setInput();

  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  ui.input.addEventListener("keydown", onInputKey);
  ui.input.addEventListener("input", () => setInput());
  ui.stop.addEventListener("click", stopGeneration);
  ui.clear.addEventListener("click", () => {
    clearTranscript();
    ui.input.focus();
  });
  for (const radio of document.querySelectorAll("input[name=mode]")) {
    radio.addEventListener("change", () => setMode(radio.value));
  }
  ui.paramsForm.addEventListener("input", (event) => {
    if (event.target !== ui.apiKey && event.target !== ui.preset) readForm();
  });
  ui.paramsForm.addEventListener("submit", (event) => event.preventDefault());
  ui.preset.addEventListener("change", () => applyPreset(ui.preset.value));
  ui.reset.addEventListener("click", () => {
    Object.assign(state.settings, DEFAULTS, { mode: mode(), system: state.settings.system });
    writeForm();
    saveSettings();
  });
  ui.apiKey.addEventListener("change", () => {
    try {
      sessionStorage.setItem(KEY_STORE_KEY, ui.apiKey.value.trim());
    } catch {
      // The key still applies to this page.
    }
    connect();
  });
  ui.toggleParams.addEventListener("click", () => openParams(!ui.body.classList.contains("params-open")));
  document.addEventListener("keydown", onKey);

  ui.transcript.addEventListener("mouseover", (e) => e.target.classList.contains("tok") && showTip(e.target));
  ui.transcript.addEventListener("mouseout", (e) => e.target.classList.contains("tok") && hideTip());
  ui.transcript.addEventListener("focusin", (e) => e.target.classList.contains("tok") && showTip(e.target));
  ui.transcript.addEventListener("focusout", (e) => e.target.classList.contains("tok") && hideTip());
  ui.transcript.addEventListener("keydown", onTokenKey);
  ui.transcript.addEventListener("scroll", hideTip, { passive: true });

  connect();
  ui.input.focus();
}

init();
