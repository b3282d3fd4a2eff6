// The console's only script (no inline script is allowed by the CSP). Every behaviour is opt-in
// through data- attributes, and every page still reads and works without it.
(function () {
  "use strict";

  // <time data-countdown="ISO">: the time left until a deadline, or how long it is overdue.
  function describe(ms) {
    var past = ms < 0, s = Math.abs(ms) / 1000;
    var d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    var text = d > 0 ? d + " 天 " + h + " 小时" : h > 0 ? h + " 小时 " + m + " 分" : m + " 分钟";
    return past ? "已超期 " + text : "剩余 " + text;
  }
  function tick() {
    document.querySelectorAll("[data-countdown]").forEach(function (el) {
      var at = Date.parse(el.getAttribute("data-countdown"));
      if (isNaN(at)) return;
      var left = at - Date.now();
      el.textContent = describe(left);
      el.classList.toggle("overdue", left < 0);
    });
  }

  // [data-poll="url"]: fetch JSON every 2 s; fill [data-field="name"] inside with its values, set
  // <progress data-progress> from done/total, and stop once data-poll-until="field:v1,v2" holds.
  function poll(el) {
    var url = el.getAttribute("data-poll"), until = (el.getAttribute("data-poll-until") || "").split(":");
    var stopField = until[0], stopValues = (until[1] || "").split(",");
    function once() {
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
        .then(function (data) {
          el.querySelectorAll("[data-field]").forEach(function (f) {
            var v = data[f.getAttribute("data-field")];
            if (v !== undefined && v !== null) f.textContent = v;
          });
          el.querySelectorAll("progress[data-progress]").forEach(function (p) {
            var total = Number(data.total || 0), done = Number(data.sent || 0) + Number(data.failed || 0) + Number(data.skipped || 0);
            p.max = total > 0 ? total : 1;
            p.value = total > 0 ? done : (data.status === "sent" ? 1 : 0);
            p.textContent = p.max ? Math.round(100 * p.value / p.max) + "%" : "";
          });
          if (stopField && stopValues.indexOf(String(data[stopField])) >= 0) {
            el.setAttribute("data-poll-done", "true");
            var report = el.getAttribute("data-poll-then");
            if (report) window.location.assign(report);
            return;
          }
          setTimeout(once, 2000);
        })
        .catch(function () { setTimeout(once, 5000); });
    }
    once();
  }

  // <form data-confirm="message">: asks before sending.
  function confirmForms() {
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (e) {
        if (!window.confirm(form.getAttribute("data-confirm"))) e.preventDefault();
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    tick();
    setInterval(tick, 30000);
    document.querySelectorAll("[data-poll]").forEach(poll);
    confirmForms();
    var alert = document.querySelector(".problems, .error");
    if (alert) alert.focus && alert.setAttribute("tabindex", "-1");
  });
})();
