// The operations page refreshes its fragment (no full reload, nothing from a CDN): when its live
// stream (Server-Sent Events, data-stream-url) says something changed, and every 30 s besides; every
// 2 s in a browser without EventSource. Never two swaps within 2 s (data-interval): a reader (or a
// test) has the fragment it just saw for at least that long.
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
    var live = false;
    var swapped = Date.now();  // when the fragment was last swapped (the page's own render first)
    var scheduled = false;
    function later(ms) {  // one refresh pending at most
      if (scheduled) return;
      scheduled = true;
      window.setTimeout(function () { scheduled = false; refresh(); }, Math.max(0, ms));
    }
    function refresh() {
      if (busy || Date.now() - pressed < 1500) { later(1600); return; }  // a change is not dropped
      if (Date.now() - swapped < interval) { later(swapped + interval - Date.now()); return; }
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
          swapped = Date.now();
          box.setAttribute("data-refreshed", String(swapped));
          if (status) status.textContent = (live ? "Live: refreshes as jobs change" : "Refreshes every 2 s") + "; last at " + new Date().toISOString().slice(11, 19) + " UTC.";
        })
        .catch(function (error) {
          if (status) status.textContent = "Refresh failed: " + error.message + "; trying again.";
        })
        .then(function () { busy = false; });
    }
    var streamUrl = box.getAttribute("data-stream-url");
    if (window.EventSource && streamUrl) {
      var source = new EventSource(streamUrl);
      source.addEventListener("open", function () { live = true; });
      source.addEventListener("state", refresh);
      source.addEventListener("error", function () { live = false; });  // it reconnects by itself
      window.setInterval(refresh, 30000);  // what the stream's signal does not cover (a waiting job cancelled)
    }
    window.setInterval(function () { if (!live) refresh(); }, interval);  // no stream (yet): every 2 s
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
