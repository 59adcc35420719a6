// Replay: move the scrubber and the DAG, the timeline and the event log show the run as it stood
// after event N. The page is drawn on the server for any N (?at=N); this only redraws it in place,
// from the data attributes the server wrote, so there is one source of truth for the pictures.
// live.js redraws the page's parts from the server as a run goes on, then calls init() again.
window.KahnScope = window.KahnScope || {};
(function (scope) {
  "use strict";

  function attemptsText(n) { return n === 0 ? "not run" : n === 1 ? "1 attempt" : n + " attempts"; }
  function setState(el, state) {
    el.setAttribute("class", el.getAttribute("class").replace(/\bs-\w+/, "s-" + state));
  }

  // One DAG node drawn in a state, with its attempts: shared by the scrubber and live updates.
  function drawNode(el, state, count) {
    setState(el, state);
    el.querySelector(".state-word").textContent = state;
    el.querySelector(".attempt-words").textContent = attemptsText(count);
    el.querySelector(".retry text").textContent = "\u00d7" + count;
    el.querySelector(".retry").classList.toggle("is-hidden", count < 2);
    el.querySelector("title").textContent = el.getAttribute("data-node") + ": " + state + ", " + attemptsText(count);
  }

  // Red edges: what a blocked node waited on, back to the failure.
  function drawBlockingEdges(states) {
    document.querySelectorAll(".dag .edge").forEach(function (edge) {
      var from = states[edge.getAttribute("data-from")], to = states[edge.getAttribute("data-to")];
      edge.classList.toggle("blocking", to === "blocked" && (from === "failed" || from === "blocked"));
    });
  }

  function init() {
    var dataNode = document.getElementById("replay-data");
    var form = document.getElementById("scrubber");
    if (!dataNode || !form) return;
    document.documentElement.classList.add("js");
    var data = JSON.parse(dataNode.textContent);
    var range = form.querySelector("input[type=range]");
    var output = form.querySelector("output");
    var lastSeq = data.lastSeq;

    var nodes = Array.prototype.map.call(document.querySelectorAll(".dag .node"), function (el) {
      return {
        el: el,
        id: el.getAttribute("data-node"),
        changes: JSON.parse(el.getAttribute("data-changes")),
        attempts: JSON.parse(el.getAttribute("data-attempts")),
      };
    });
    var bars = document.querySelectorAll(".gantt .attempt");
    var labels = document.querySelectorAll(".gantt .g-label");
    var cursor = document.getElementById("gantt-cursor");
    var marks = document.querySelectorAll(".gantt .mark");
    var logRows = document.querySelectorAll(".log tbody tr[data-seq]");

    function stateAt(node, seq) {
      var state = "pending";
      for (var i = 0; i < node.changes.length && node.changes[i][0] <= seq; i++) state = node.changes[i][1];
      return state;
    }
    function attemptsAt(node, seq) {
      var highest = 0;
      node.attempts.forEach(function (a) { if (a[0] <= seq && a[1] > highest) highest = a[1]; });
      return highest;
    }

    function show(seq) {
      var states = {};
      nodes.forEach(function (node) {
        var state = stateAt(node, seq);
        states[node.id] = state;
        drawNode(node.el, state, attemptsAt(node, seq));
      });
      drawBlockingEdges(states);
      var final = seq >= lastSeq;
      var cursorX = data.eventX[seq];
      Array.prototype.forEach.call(bars, function (bar) {
        var start = +bar.getAttribute("data-start-seq"), endAttr = bar.getAttribute("data-end-seq");
        var end = endAttr === "" ? null : +endAttr;
        var x = +bar.getAttribute("x"), fullWidth = bar.getAttribute("data-width");
        var outcome = bar.getAttribute("data-outcome"), width = fullWidth;
        if (!final && (end === null || end > seq)) {
          outcome = "open";
          width = Math.max(6, cursorX - x); // as wide as a closed bar at least: GANTT_MIN_BAR_W in runs/pictures.py
        }
        bar.classList.toggle("is-hidden", !final && start > seq);
        bar.setAttribute("class", bar.getAttribute("class").replace(/\bo-\w+/, "o-" + outcome));
        bar.setAttribute("width", width);
      });
      Array.prototype.forEach.call(marks, function (mark) {
        mark.classList.toggle("is-hidden", !final && +mark.getAttribute("data-seq") > seq);
      });
      Array.prototype.forEach.call(labels, function (label) {
        setState(label, states[label.getAttribute("data-node")] || "pending");
      });
      cursor.classList.toggle("is-hidden", final);
      cursor.setAttribute("x1", cursorX);
      cursor.setAttribute("x2", cursorX);
      Array.prototype.forEach.call(logRows, function (row) {
        var rowSeq = +row.getAttribute("data-seq");
        row.classList.toggle("future", !final && rowSeq > seq);
        row.classList.toggle("current", !final && rowSeq === seq);
      });
      var words = data.labels[seq] || "";
      output.textContent = (final ? "Final state, event " + lastSeq : "After event " + seq + " of " + lastSeq) + ": ";
      var span = document.createElement("span");
      span.className = "event-words";
      span.textContent = words;
      output.appendChild(span);
      var url = new URL(window.location.href);
      if (final) url.searchParams.delete("at"); else url.searchParams.set("at", seq);
      window.history.replaceState(null, "", url);
    }

    range.addEventListener("input", function () { show(+range.value); });
    form.querySelectorAll("button[data-step]").forEach(function (button) {
      button.addEventListener("click", function () {
        var next = Math.min(lastSeq, Math.max(0, +range.value + +button.getAttribute("data-step")));
        range.value = next;
        show(next);
      });
    });
    form.addEventListener("submit", function (event) { event.preventDefault(); show(+range.value); });
  }

  scope.attemptsText = attemptsText;
  scope.drawNode = drawNode;
  scope.drawBlockingEdges = drawBlockingEdges;
  scope.initReplay = init;
  init();
})(window.KahnScope);
