// The operations page refreshes its fragment every 2 s (no full reload, nothing from a CDN).
(function () {
  "use strict";
  function start() {
    var box = document.getElementById("operations");
    var status = document.getElementById("operations-status");
    if (!box) return;
    var url = box.getAttribute("data-fragment-url");
    var interval = parseInt(box.getAttribute("data-interval"), 10) || 2000;
    var busy = false;
    var pressed = 0;  // a press on a button or link in the fragment: no swap under the click
    box.addEventListener("pointerdown", function () { pressed = Date.now(); });
    function refresh() {
      if (busy || Date.now() - pressed < 1500) return;
      busy = true;
      fetch(url, {credentials: "same-origin", headers: {"X-Requested-With": "XMLHttpRequest"}, cache: "no-store"})
        .then(function (response) {
          if (response.redirected || !response.ok) throw new Error("HTTP " + response.status + (response.redirected ? " (signed out?)" : ""));
          return response.text();
        })
        .then(function (html) {
          // A <details> the user opened (a big group's members) stays open across the swap.
          var open = {};
          box.querySelectorAll("details[data-keep]").forEach(function (d) { open[d.getAttribute("data-keep")] = d.open; });
          box.innerHTML = html;
          box.querySelectorAll("details[data-keep]").forEach(function (d) {
            var key = d.getAttribute("data-keep");
            if (key in open) d.open = open[key];
          });
          box.setAttribute("data-refreshed", String(Date.now()));
          if (status) status.textContent = "Refreshes every 2 s; last at " + new Date().toISOString().slice(11, 19) + " UTC.";
        })
        .catch(function (error) {
          if (status) status.textContent = "Refresh failed: " + error.message + "; trying again.";
        })
        .then(function () { busy = false; });
    }
    window.setInterval(refresh, interval);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
