// ladle playground: the client of the server's own OpenAI-compatible API. It sends the API key,
// turns error bodies into readable messages, reads server-sent events from fetch, and brings
// both endpoints' streamed choices to one shape. It touches nothing on the page: app.js tells
// it where the key comes from and what to do when the server refuses it.
"use strict";

(() => {
  class ApiError extends Error {
    constructor(message, status = 0) {
      super(message);
      this.status = status;
    }
  }

  const hooks = { apiKey: () => "", onUnauthorized: () => {} };

  // `apiKey()`: the key to send (may be blank); `onUnauthorized()`: called on a 401.
  function configure(options) {
    Object.assign(hooks, options);
  }

  function headers() {
    const h = { "Content-Type": "application/json" };
    const key = hooks.apiKey().trim();
    if (key) h.Authorization = `Bearer ${key}`;
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
    if (response.status === 401) hooks.onUnauthorized();
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

  // POSTs a streamed request and yields each chunk, parsed, until [DONE]; an error event in the
  // stream throws an ApiError, and so does an error status.
  async function* streamChunks(path, body, signal) {
    const response = await fetch(path, {
      method: "POST",
      headers: headers(),
      body: JSON.stringify(body),
      signal,
    });
    if (!response.ok) throw await errorFrom(response);
    for await (const data of sseData(response)) {
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(describeError(chunk.error));
      yield chunk;
    }
  }

  async function getJSON(path) {
    const response = await fetch(path, { headers: headers() });
    if (!response.ok) throw await errorFrom(response);
    return response.json();
  }

  // The health check's HTTP status and body ({} when the body is not JSON); needs no key.
  async function health() {
    const response = await fetch("/health");
    const body = await response.json().catch(() => ({}));
    return { status: response.status, body };
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

  window.ladleApi = { ApiError, configure, streamChunks, getJSON, health, chatChoice, completionChoice };
})();
