// ladle playground: the page's elements, how the scripts build new ones, and the screen
// reader's status line. Loaded first: the other scripts take `window.ladlePage` from here.
"use strict";

(() => {
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

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function announce(message) {
    ui.status.textContent = "";
    // A fresh text node, a tick later, makes screen readers speak repeated messages too.
    setTimeout(() => (ui.status.textContent = message), 50);
  }

  window.ladlePage = { ui, element, announce };
})();
