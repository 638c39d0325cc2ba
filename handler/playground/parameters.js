// ladle playground: the parameter panel. Its form is the source of truth for the settings (the
// mode included); localStorage remembers them across reloads, sessionStorage keeps the API key
// for this tab. It turns the settings into the request fields both endpoints share.
"use strict";

(() => {
  const { ui, announce } = window.ladlePage;

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

  // One object for the page's life: the other scripts read it, and it is only ever changed in place.
  const settings = { ...DEFAULTS };

  function loadSettings() {
    try {
      const saved = JSON.parse(localStorage.getItem(STORE_KEY) || "{}");
      for (const key of Object.keys(DEFAULTS)) {
        if (typeof saved[key] === typeof DEFAULTS[key]) settings[key] = saved[key];
      }
    } catch {
      // Storage may be disabled or hold something else; the defaults do.
    }
    if (!MODES.includes(settings.mode)) settings.mode = DEFAULTS.mode;
    try {
      ui.apiKey.value = sessionStorage.getItem(KEY_STORE_KEY) || "";
    } catch {
      ui.apiKey.value = "";
    }
    if (ui.apiKey.value) ui.apiKeyField.hidden = false;
  }

  function saveSettings() {
    try {
      localStorage.setItem(STORE_KEY, JSON.stringify(settings));
    } catch {
      // Nothing to do: the settings still apply to this page.
    }
  }

  function fields() {
    return ui.paramsForm.querySelectorAll("[name]");
  }

  function writeForm() {
    for (const field of fields()) {
      const value = settings[field.name];
      if (field.type === "checkbox") field.checked = Boolean(value);
      else field.value = value;
    }
    ui.preset.value = settings.preset;
    document.querySelector(`input[name=mode][value=${settings.mode}]`).checked = true;
  }

  function readForm() {
    for (const field of fields()) {
      settings[field.name] = field.type === "checkbox" ? field.checked : field.value;
    }
    settings.preset = matchingPreset();
    ui.preset.value = settings.preset;
    saveSettings();
  }

  function matchingPreset() {
    const found = Object.entries(PRESETS).find(([, values]) =>
      Object.entries(values).every(([key, value]) => Number(settings[key]) === Number(value)),
    );
    return found ? found[0] : "custom";
  }

  function applyPreset(name) {
    if (PRESETS[name]) Object.assign(settings, PRESETS[name]);
    settings.preset = name;
    writeForm();
    saveSettings();
  }

  // Back to the defaults, except the mode and the system prompt.
  function reset() {
    Object.assign(settings, DEFAULTS, { mode: settings.mode, system: settings.system });
    writeForm();
    saveSettings();
  }

  function saveKey() {
    try {
      sessionStorage.setItem(KEY_STORE_KEY, ui.apiKey.value.trim());
    } catch {
      // The key still applies to this page.
    }
  }

  // The request fields common to both endpoints; an empty field means the server's default.
  function samplingFields(model) {
    const s = settings;
    const body = { stream: true, stream_options: { include_usage: true } };
    if (model) body.model = model;
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
    const k = Math.trunc(Number(settings.top_logprobs));
    return Number.isFinite(k) && k > 0 ? k : 5;
  }

  // On a narrow screen the panel is a drawer opened from the header.
  function openPanel(open) {
    ui.body.classList.toggle("params-open", open);
    ui.toggleParams.setAttribute("aria-expanded", String(open));
  }

  function isOpen() {
    return ui.body.classList.contains("params-open");
  }

  function showKeyField(message) {
    ui.apiKeyField.hidden = false;
    openPanel(true);
    announce(message);
  }

  // Fills the form from storage and listens to it; `onKeyChange` runs when the API key changes.
  function init(onKeyChange) {
    loadSettings();
    writeForm();
    ui.paramsForm.addEventListener("input", (event) => {
      if (event.target !== ui.apiKey && event.target !== ui.preset) readForm();
    });
    ui.paramsForm.addEventListener("submit", (event) => event.preventDefault());
    ui.preset.addEventListener("change", () => applyPreset(ui.preset.value));
    ui.reset.addEventListener("click", reset);
    ui.apiKey.addEventListener("change", () => {
      saveKey();
      onKeyChange();
    });
    ui.toggleParams.addEventListener("click", () => openPanel(!isOpen()));
  }

  window.ladleParameters = {
    settings,
    init,
    save: saveSettings,
    samplingFields,
    topLogprobs,
    apiKey: () => ui.apiKey.value,
    openPanel,
    isOpen,
    showKeyField,
  };
})();
