// Live progress of a running job: poll the run's progress and reload when a round lands.
(function () {
  var el = document.getElementById("run-status");
  if (!el || el.dataset.status !== "running") { return; }
  var rounds = el.dataset.rounds;
  var url = "/runs/" + encodeURIComponent(el.dataset.run) + "/progress";
  function poll() {
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (p) {
        if (p && (String(p.rounds_done) !== rounds || p.status !== "running")) { window.location.reload(); return; }
        setTimeout(poll, 2000);
      })
      .catch(function () { setTimeout(poll, 5000); });
  }
  setTimeout(poll, 2000);
})();
