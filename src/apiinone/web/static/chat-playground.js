// apiinone console: the chat playground. It streams from the same-origin BFF route with the session
// cookie and the CSRF token (no API key in the browser) and shows each answer's tokens and credits,
// taken from the server's receipt event. All text comes from data-* attributes (message catalogs).
(function () {
  "use strict";

  var form = document.getElementById("chat-playground");
  if (!form) return;
  var log = document.getElementById("chat-log");
  var status = document.getElementById("chat-status");
  var history = [];

  function line(role, text) {
    var row = document.createElement("div");
    row.className = "chat-msg " + role;
    var who = document.createElement("strong");
    who.textContent = form.getAttribute(role === "user" ? "data-msg-you" : "data-msg-assistant") + " ";
    var body = document.createElement("span");
    body.className = "chat-text";
    body.textContent = text;
    row.appendChild(who);
    row.appendChild(body);
    log.appendChild(row);
    return body;
  }

  function receiptText(r) {
    var text = form.getAttribute("data-msg-receipt")
      .replace("{input}", r.input_tokens).replace("{output}", r.output_tokens).replace("{credits}", r.credits);
    return r.estimated ? text + " " + form.getAttribute("data-msg-estimated") : text;
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    var field = form.elements.message;
    var text = field.value.trim();
    if (!text) return;
    var button = form.querySelector("button[type=submit]");
    button.disabled = true;
    status.textContent = "";
    line("user", text);
    history.push({ role: "user", content: text });
    var messages = history.slice();
    var system = form.elements.system.value.trim();
    if (system) messages.unshift({ role: "system", content: system });
    field.value = "";
    var out = line("assistant", "");
    var answer = "";
    try {
      var response = await fetch("/console/api/chat/completions", {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": form.getAttribute("data-csrf") },
        body: JSON.stringify({ model: form.getAttribute("data-model"), messages: messages, stream: true,
                               stream_options: { include_usage: true } })
      });
      if (!response.ok) {
        var problem = await response.json().catch(function () { return {}; });
        throw new Error((problem.error && problem.error.message) || response.status);
      }
      var reader = response.body.getReader();
      var decoder = new TextDecoder();
      var buffer = "";
      for (;;) {
        var step = await reader.read();
        if (step.done) break;
        buffer += decoder.decode(step.value, { stream: true });
        var cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          var frame = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          var kind = "message", data = "";
          frame.split("\n").forEach(function (l) {
            if (l.indexOf("event: ") === 0) kind = l.slice(7);
            else if (l.indexOf("data: ") === 0) data += l.slice(6);
          });
          if (!data || data === "[DONE]") continue;
          var parsed = JSON.parse(data);
          if (kind === "receipt") { status.textContent = receiptText(parsed); continue; }
          if (parsed.error) { status.textContent = form.getAttribute("data-msg-stream-error") + " " + parsed.error.message; continue; }
          (parsed.choices || []).forEach(function (c) {
            var delta = c.delta || {};
            if (delta.content) { answer += delta.content; out.textContent = answer; }
            (delta.tool_calls || []).forEach(function (t) {
              if (t.function) { answer += (t.function.name ? t.function.name + " " : "") + (t.function.arguments || ""); out.textContent = answer; }
            });
          });
        }
      }
      history.push({ role: "assistant", content: answer });
    } catch (err) {
      status.textContent = form.getAttribute("data-msg-error") + " " + err.message;
      history.pop();
    } finally {
      button.disabled = false;
    }
  });
})();
