// apiinone console: copy buttons, confirm-before-submit, and the model playground.
// All user-facing text comes from data-* attributes rendered from the message catalogs.
(function () {
  "use strict";

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) return;
    var source = document.querySelector(button.getAttribute("data-copy"));
    if (!source) return;
    var text = "value" in source && source.tagName === "TEXTAREA" ? source.value : source.textContent;
    var done = function () {
      var label = button.textContent;
      button.textContent = button.getAttribute("data-copied") || label;
      setTimeout(function () { button.textContent = label; }, 1500);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { selectText(source); });
    } else {
      selectText(source);
      try { document.execCommand("copy"); done(); } catch (e) { /* text stays selected for manual copy */ }
    }
  });

  function selectText(node) {
    if (node.select) { node.select(); return; }
    var range = document.createRange();
    range.selectNodeContents(node);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    var message = form.getAttribute("data-confirm");
    if (message && !window.confirm(message)) event.preventDefault();
  });

  function setupPlayground(form) {
    var pricing = JSON.parse(form.getAttribute("data-pricing"));
    var priceOut = document.getElementById("playground-price");
    var statusBox = document.getElementById("playground-status");
    var result = document.getElementById("playground-result");
    var submit = form.querySelector("button[type=submit]");
    var msg = function (name) { return form.getAttribute("data-msg-" + name) || name; };

    function showPrice() {
      var credits = pricing[form.elements.quality.value] || 0;
      var template = String(credits) === "1" ? "data-price-template-one" : "data-price-template";
      priceOut.textContent = form.getAttribute(template)
        .replace("{credits}", credits).replace("{usd}", "$" + (credits / 100).toFixed(2));
    }
    form.elements.quality.addEventListener("change", showPrice);
    showPrice();

    function status(text, busy) {
      statusBox.textContent = text;
      statusBox.classList.toggle("busy", !!busy);
    }

    function poll(taskId) {
      fetch("/console/api/tasks/" + encodeURIComponent(taskId), { credentials: "same-origin" })
        .then(function (r) { return r.json(); })
        .then(function (task) {
          if (task.error && !task.status) throw new Error(task.error.message);
          if (task.status === "queued" || task.status === "running") {
            status(msg(task.status), true);
            setTimeout(function () { poll(taskId); }, 1000);
            return;
          }
          finish(task);
        })
        .catch(function (err) { status(msg("error") + " " + err.message, false); submit.disabled = false; });
    }

    function finish(task) {
      submit.disabled = false;
      status(msg(task.status), false);
      result.textContent = "";
      var images = (task.output && task.output.images) || [];
      images.forEach(function (image) {
        var link = document.createElement("a");
        link.href = image.url; link.target = "_blank"; link.rel = "noopener";
        var img = document.createElement("img");
        img.src = image.url; img.alt = msg("image-alt"); img.width = image.width; img.height = image.height;
        img.setAttribute("data-testid", "playground-image");
        link.appendChild(img);
        result.appendChild(link);
      });
      if (task.error) {
        var p = document.createElement("p");
        p.className = "flash err";
        p.textContent = task.error.code + ": " + task.error.message;
        result.appendChild(p);
      }
      var open = document.createElement("a");
      open.href = "/console/tasks/" + encodeURIComponent(task.task_id);
      open.textContent = msg("open");
      result.appendChild(open);
    }

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var body = {
        model: form.getAttribute("data-model"),
        prompt: form.elements.prompt.value,
        aspect_ratio: form.elements.aspect_ratio.value,
        quality: form.elements.quality.value
      };
      var urls = form.elements.input_urls.value.split(/\s+/).filter(Boolean);
      if (urls.length) body.input_urls = urls;
      submit.disabled = true;
      result.textContent = "";
      status(msg("submitting"), true);
      fetch("/console/api/tasks", {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": form.getAttribute("data-csrf") },
        body: JSON.stringify(body)
      })
        .then(function (r) { return r.json().then(function (data) { return { ok: r.ok, data: data }; }); })
        .then(function (answer) {
          if (!answer.ok) throw new Error(answer.data.error ? answer.data.error.message : "HTTP error");
          status(msg(answer.data.status), true);
          poll(answer.data.task_id);
        })
        .catch(function (err) { status(msg("error") + " " + err.message, false); submit.disabled = false; });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("playground-form");
    if (form) setupPlayground(form);
  });
})();
