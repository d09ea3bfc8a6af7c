// The KubeHub console's one script: live updates of the page's data section by server-sent
// events (GET /console/events?page=<page>), ages of the <time data-ts> elements, the row
// filter (rows of the live section whose text does not contain it are hidden, also after an
// update), the question asked before an action that is hard to undo (forms with
// data-confirm), and the ban form's fields for the chosen kind. Nothing else; the pages work without it but for the
// live updates.
(function () {
  "use strict";

  function age(seconds) {
    var s = Math.abs(seconds);
    var text;
    if (s < 120) text = Math.round(s) + " s";
    else if (s < 7200) text = Math.round(s / 60) + " min";
    else if (s < 172800) text = Math.round(s / 3600) + " h";
    else text = Math.round(s / 86400) + " d";
    return seconds >= 0 ? text + " ago" : "in " + text;
  }

  function ages(root) {
    var now = Date.now() / 1000;
    var times = (root || document).querySelectorAll("time[data-ts]");
    for (var i = 0; i < times.length; i++) {
      var t = times[i];
      t.textContent = age(now - Number(t.getAttribute("data-ts")));
      t.title = t.getAttribute("datetime");
    }
  }

  function filterRows() {
    var box = document.getElementById("filter");
    var section = document.getElementById("live");
    if (!box || !section) return;
    var q = box.value.trim().toLowerCase();
    // Whole tenants where the page groups by tenant, else table rows.
    var rows = section.querySelectorAll("article");
    if (rows.length === 0) rows = section.querySelectorAll("tbody tr");
    for (var i = 0; i < rows.length; i++) {
      rows[i].hidden = q !== "" && rows[i].textContent.toLowerCase().indexOf(q) < 0;
    }
  }

  function banForm() {
    var kind = document.getElementById("ban-kind");
    if (!kind) return;
    var form = kind.form;
    function show() {
      var client = kind.value === "client";
      var named = form.querySelectorAll(".for-named");
      var forClient = form.querySelectorAll(".for-client");
      for (var i = 0; i < named.length; i++) named[i].hidden = client;
      for (var j = 0; j < forClient.length; j++) forClient[j].hidden = !client;
    }
    kind.addEventListener("change", show);
    show();
  }

  function live() {
    var section = document.getElementById("live");
    var status = document.getElementById("live-status");
    if (!section || !window.EventSource) return;
    var page = section.getAttribute("data-page");
    var source = new EventSource("/console/events?page=" + encodeURIComponent(page));
    source.addEventListener("update", function (e) {
      section.innerHTML = e.data;
      section.setAttribute("data-updates", String(Number(section.getAttribute("data-updates")) + 1));
      ages(section);
      filterRows();
    });
    source.onopen = function () {
      status.textContent = "live";
      status.className = "live on";
    };
    source.onerror = function () {
      status.textContent = "reconnecting…";
      status.className = "live off";
    };
  }

  // Forms of the live section are replaced by updates: one listener for all of them.
  document.addEventListener("submit", function (e) {
    var question = e.target.getAttribute && e.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) e.preventDefault();
  });

  ages();
  setInterval(ages, 1000);
  var filter = document.getElementById("filter");
  if (filter) filter.addEventListener("input", filterRows);
  banForm();
  live();
})();
