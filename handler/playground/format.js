// ladle playground: the chat's response format (text, any JSON object, or JSON that follows a
// schema). The server constrains decoding to it, so the streamed answer is valid as it arrives.
// app.js asks `window.ladleResponseFormat()` for the request fields when it sends a chat turn.
"use strict";

(() => {
  const STORE_KEY = "ladle.playground.format.v1";
  const EXAMPLE = {
    type: "object",
    properties: {
      name: { type: "string", maxLength: 40 },
      age: { type: "integer", minimum: 0, maximum: 150 },
      hobbies: { type: "array", items: { type: "string", maxLength: 30 }, maxItems: 3 },
    },
    required: ["name", "age", "hobbies"],
    additionalProperties: false,
  };

  const kind = document.getElementById("response_format");
  const box = document.getElementById("json_schema");
  const field = document.getElementById("json-schema-field");
  const hint = document.getElementById("json-schema-hint");
  if (!kind || !box || !field || !hint) return;
  const HINT = hint.textContent;

  function load() {
    try {
      const saved = JSON.parse(localStorage.getItem(STORE_KEY) || "{}");
      if (["text", "json_object", "json_schema"].includes(saved.kind)) kind.value = saved.kind;
      box.value = typeof saved.schema === "string" ? saved.schema : JSON.stringify(EXAMPLE, null, 2);
    } catch {
      box.value = JSON.stringify(EXAMPLE, null, 2);
    }
  }

  function save() {
    try {
      localStorage.setItem(STORE_KEY, JSON.stringify({ kind: kind.value, schema: box.value }));
    } catch {
      // Storage may be disabled; the choice still applies to this page.
    }
  }

  // The schema as parsed JSON, or null (with the box marked) when it does not parse.
  function parsedSchema() {
    try {
      const schema = JSON.parse(box.value);
      box.removeAttribute("aria-invalid");
      hint.textContent = HINT;
      return schema;
    } catch (err) {
      box.setAttribute("aria-invalid", "true");
      hint.textContent = `Not valid JSON: ${err.message}`;
      return null;
    }
  }

  function update() {
    field.hidden = kind.value !== "json_schema";
    if (!field.hidden) parsedSchema();
    save();
  }

  // The fields to add to a chat request: nothing for text.
  window.ladleResponseFormat = () => {
    if (kind.value === "json_object") return { response_format: { type: "json_object" } };
    if (kind.value !== "json_schema") return {};
    const schema = parsedSchema();
    // A schema that does not parse is still sent: the server's 400 says what is wrong with it.
    return {
      response_format: {
        type: "json_schema",
        json_schema: { name: "playground", schema: schema === null ? box.value : schema, strict: true },
      },
    };
  };

  load();
  update();
  kind.addEventListener("change", update);
  box.addEventListener("input", update);
})();
