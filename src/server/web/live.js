// Live updates for the dashboard. Everything works without this file; it only listens to the
// event stream and refreshes the view when something relevant changes. It never decides
// anything and sends nothing but the stream request.
(function () {
  "use strict";
  if (!window.EventSource) return;
  var banner = document.getElementById("live");
  var detail = document.querySelector("dl.facts[data-id]");
  var onQueue = location.pathname === "/";
  var onStats = location.pathname === "/stats";

  // Reload only when the reader is not in the middle of something: typing, or rows selected.
  function busy() {
    var el = document.activeElement;
    if (el && (el.tagName === "TEXTAREA" || el.tagName === "INPUT" || el.tagName === "SELECT")) return true;
    return document.querySelector("#queue input[type=checkbox]:checked") !== null;
  }

  function changed() {
    if (!busy()) {
      location.reload();
    } else if (banner) {
      banner.hidden = false;
    }
  }

  var source = new EventSource("/api/v1/events");
  // A submitted form (Approve, Deny, a bulk decision) brings its own page back; a reload now
  // would cancel that response, and with it the message saying what was recorded.
  document.addEventListener("submit", function () {
    source.close();
  });
  var kinds = ["requested", "voted", "approved", "denied", "expiring", "expired", "executed", "failed", "resync"];
  kinds.forEach(function (kind) {
    source.addEventListener(kind, function (event) {
      if (kind === "resync" || onQueue || onStats) return changed();
      if (detail) {
        var change = JSON.parse(event.data);
        if (change.approval && change.approval.id === detail.getAttribute("data-id")) changed();
      }
    });
  });
})();
