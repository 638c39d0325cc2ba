// ladle playground: the token tooltip. Hover or focus a token of an answer to see its logprob
// and the top alternatives; the arrow keys, Home and End move between an answer's tokens.
"use strict";

(() => {
  const { ui, element } = window.ladlePage;
  const { tokensOf } = window.ladleTranscript;

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
    const pieces = tokensOf(span) || [];
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

  // Shows the tip for the token under the pointer or the focus; scrolling hides it.
  function init() {
    ui.transcript.addEventListener("mouseover", (e) => e.target.classList.contains("tok") && showTip(e.target));
    ui.transcript.addEventListener("mouseout", (e) => e.target.classList.contains("tok") && hideTip());
    ui.transcript.addEventListener("focusin", (e) => e.target.classList.contains("tok") && showTip(e.target));
    ui.transcript.addEventListener("focusout", (e) => e.target.classList.contains("tok") && hideTip());
    ui.transcript.addEventListener("keydown", onTokenKey);
    ui.transcript.addEventListener("scroll", hideTip, { passive: true });
  }

  window.ladleTokenTip = { init, hide: hideTip };
})();
