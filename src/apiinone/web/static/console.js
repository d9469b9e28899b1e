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

  // Credit amounts are integers of micro-credits (1 credit = 1,000,000) shown as exact decimals.
  function creditsText(ucr) {
    var whole = Math.floor(ucr / 1000000), fraction = ucr % 1000000;
    if (!fraction) return String(whole);
    return (whole + "." + String(fraction).padStart(6, "0")).replace(/0+$/, "");
  }

  function setupSpeechPlayground(form) {
    var perMchar = JSON.parse(form.getAttribute("data-pricing-ucr")).per_mchar || 0;
    var priceOut = document.getElementById("speech-price");
    var statusBox = document.getElementById("speech-status");
    var result = document.getElementById("speech-result");
    var available = document.getElementById("speech-available");
    var submit = form.querySelector("button[type=submit]");
    var msg = function (name) { return form.getAttribute("data-msg-" + name) || name; };
    var lastUrl = null;

    function characters() { return Array.from(form.elements.input.value).length; }  // code points, as billed

    function showPrice() {
      var chars = characters();
      var cost = Math.ceil(chars * perMchar / 1000000);
      priceOut.textContent = form.getAttribute("data-price-template").replace("{chars}", chars)
        .replace("{credits}", creditsText(cost)).replace("{usd}", "$" + (cost / 100000000).toFixed(2));
    }
    form.elements.input.addEventListener("input", showPrice);
    showPrice();

    function status(text, busy) {
      statusBox.textContent = text;
      statusBox.classList.toggle("busy", !!busy);
    }

    function refreshAvailable() {
      if (!available) return;
      fetch("/console/api/account", { credentials: "same-origin" })
        .then(function (r) { return r.json(); })
        .then(function (account) {
          available.textContent = form.getAttribute("data-available-template").replace("{n}", account.credits.available);
        });
    }

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var body = {
        model: form.getAttribute("data-model"),
        input: form.elements.input.value,
        voice: form.elements.voice.value,
        response_format: form.elements.response_format.value,
        speed: parseFloat(form.elements.speed.value || "1")
      };
      submit.disabled = true;
      result.textContent = "";
      status(msg("submitting"), true);
      fetch("/console/api/audio/speech", {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": form.getAttribute("data-csrf") },
        body: JSON.stringify(body)
      })
        .then(function (r) {
          if (!r.ok) {
            return r.json().then(function (data) {
              throw new Error(data.error ? data.error.message : "HTTP " + r.status);
            });
          }
          var charged = r.headers.get("X-Credits-Charged") || "0";
          return r.blob().then(function (blob) { return { blob: blob, charged: charged }; });
        })
        .then(function (answer) {
          submit.disabled = false;
          status(msg("succeeded") + " · " + form.getAttribute("data-charged-template").replace("{credits}", answer.charged), false);
          if (lastUrl) URL.revokeObjectURL(lastUrl);
          lastUrl = URL.createObjectURL(answer.blob);
          var audio = document.createElement("audio");
          audio.controls = true;
          audio.src = lastUrl;
          audio.setAttribute("data-testid", "playground-audio");
          result.appendChild(audio);
          var link = document.createElement("a");
          link.href = lastUrl;
          link.download = "speech." + body.response_format;
          link.textContent = msg("download") + " (" + answer.blob.type + ", " + answer.blob.size + " B)";
          link.setAttribute("data-testid", "playground-download");
          result.appendChild(link);
          refreshAvailable();
        })
        .catch(function (err) { status(msg("error") + " " + err.message, false); submit.disabled = false; });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("playground-form");
    if (form) setupPlayground(form);
    var speech = document.getElementById("speech-playground");
    if (speech) setupSpeechPlayground(speech);
  });
})();
