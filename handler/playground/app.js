// ladle playground: chat and completion over the server's own OpenAI-compatible API.
// Plain browser JavaScript, no build step and nothing fetched from another origin. This script
// is the app: the server's status, sending a turn and streaming its answer, the two modes, the
// message box and the keyboard. index.html loads the scripts it takes its parts from first.
"use strict";

(() => {
  const { ui, element, announce } = window.ladlePage;
  const api = window.ladleApi;
  const parameters = window.ladleParameters;
  const { Answer, messageView, completionView, follow } = window.ladleTranscript;
  const tokenTip = window.ladleTokenTip;
  const settings = parameters.settings;

  const state = {
    model: null,
    history: [], // chat messages sent so far: {role, content}
    drafts: { chat: "", completion: "" },
    controller: null,
    views: { chat: [], completion: [] }, // each mode's transcript while the other one shows
  };

  // -------------------------------------------------------------------------------------------
  // Server status and model name.

  function setServer(kind, text) {
    ui.server.dataset.state = kind;
    ui.serverText.textContent = text;
  }

  async function connect() {
    let health = {};
    try {
      const reply = await api.health();
      health = reply.body;
      if (health.status === "loading" || reply.status === 503) {
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
      const models = await api.getJSON("/v1/models");
      state.model = models.data && models.data.length ? models.data[0].id : null;
      const backend = health.backend ? ` · ${health.backend}` : "";
      setServer("ok", `${state.model || "model"}${backend}`);
    } catch (err) {
      setServer(err.status === 401 ? "locked" : "down", err.status === 401 ? "API key needed" : err.message);
    }
  }

  // -------------------------------------------------------------------------------------------
  // One generation: stream it into its answer view; Stop (or Escape) aborts it.

  async function generate(path, body, answer, readChoice) {
    const controller = new AbortController();
    state.controller = controller;
    setBusy(true);
    let finish = null;
    let usage = null;
    try {
      for await (const chunk of api.streamChunks(path, body, controller.signal)) {
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
      answer.fail(err instanceof api.ApiError ? err.message : `Network error: ${err.message}`);
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

  // -------------------------------------------------------------------------------------------
  // The two modes.

  async function sendChat(text) {
    const user = messageView("user", "You");
    user.append(element("div", "content", text));
    state.history.push({ role: "user", content: text });
    const answer = new Answer(messageView("assistant", "Assistant"), settings.logprobs);
    follow(true);

    const messages = [...state.history];
    if (settings.system.trim()) messages.unshift({ role: "system", content: settings.system });
    const body = { ...parameters.samplingFields(state.model), messages, ...(window.ladleResponseFormat?.() ?? {}) };
    if (settings.logprobs) Object.assign(body, { logprobs: true, top_logprobs: parameters.topLogprobs() });

    const ok = await generate("/v1/chat/completions", body, answer, api.chatChoice);
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
    const card = completionView(prompt);
    const answer = new Answer(card, settings.logprobs);
    follow(true);

    const body = { ...parameters.samplingFields(state.model), prompt };
    if (settings.logprobs) body.logprobs = Math.min(parameters.topLogprobs(), 20);
    await generate("/v1/completions", body, answer, api.completionChoice);

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
    return settings.mode;
  }

  function setMode(next) {
    if (state.controller) stopGeneration();
    tokenTip.hide();
    state.drafts[mode()] = ui.input.value;
    state.views[mode()] = [...ui.transcript.childNodes];
    settings.mode = next;
    parameters.save();
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
    tokenTip.hide();
  }

  // -------------------------------------------------------------------------------------------
  // Wiring.

  function onKey(event) {
    if (event.key === "Escape") {
      if (state.controller) {
        event.preventDefault();
        stopGeneration();
      } else if (parameters.isOpen()) {
        parameters.openPanel(false);
        ui.toggleParams.focus();
      } else {
        tokenTip.hide();
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
    api.configure({
      apiKey: parameters.apiKey,
      onUnauthorized: () => parameters.showKeyField("The server refused the API key: enter a valid one."),
    });
    parameters.init(connect);
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
    document.addEventListener("keydown", onKey);
    tokenTip.init();

    connect();
    ui.input.focus();
  }

  init();
})();
