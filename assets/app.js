// restic-manager's own few lines of script (htmx does the rest).
// Live job logs: keep following new lines unless the reader scrolled up.
(function () {
  "use strict";
  var pinned = new WeakMap();
  function atBottom(el) {
    return el.scrollHeight - el.scrollTop - el.clientHeight < 24;
  }
  document.addEventListener("htmx:sseBeforeMessage", function (e) {
    var el = e.target;
    if (el && el.dataset && el.dataset.autoscroll === "true") pinned.set(el, atBottom(el));
  });
  document.addEventListener("htmx:sseMessage", function (e) {
    var el = e.target;
    if (el && el.dataset && el.dataset.autoscroll === "true" && pinned.get(el) !== false) {
      el.scrollTop = el.scrollHeight;
    }
  });
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-autoscroll=true]").forEach(function (el) {
      el.scrollTop = el.scrollHeight;
    });
  });
})();
