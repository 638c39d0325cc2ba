// ladle playground: the transcript. Message cards, and the answer one generation streams into:
// its text (or one span per token, with the tokens behind each span kept for the tooltip) and
// its live statistics; and the scrolling that keeps the newest text in view.
"use strict";

(() => {
  const { ui, element, announce } = window.ladlePage;

  // The tokens behind each token span, for its tooltip.
  const spanTokens = new WeakMap();

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

  // A chat message's card, headed by who speaks.
  function messageView(role, label) {
    const node = element("article", `message ${role}`);
    node.append(element("h3", "role", label));
    ui.transcript.append(node);
    return node;
  }

  // A completion's card: the prompt, then (once an Answer fills it) the continuation.
  function completionView(prompt) {
    const card = element("article", "message completion");
    card.append(element("h3", "role", "Completion"), element("div", "prompt", prompt));
    ui.transcript.append(card);
    return card;
  }

  // Keep the newest text in view, unless the reader scrolled up to read something else.
  function follow(force = false) {
    const t = ui.transcript;
    if (force || t.scrollHeight - t.scrollTop - t.clientHeight < 80) t.scrollTop = t.scrollHeight;
  }

  window.ladleTranscript = {
    Answer,
    messageView,
    completionView,
    follow,
    tokensOf: (span) => spanTokens.get(span),
  };
})();
