// Live pages: the run page and the history follow /ws/live (SPEC section 7) without a reload.
//
// The run page subscribes to its run after the last event it drew (after_seq), so nothing is
// missed between the page load and the socket, nor after a dropped socket: it reconnects with the
// last seq it has. Each event redraws its DAG node at once; the drawn parts (timeline, log, facts,
// diagnostics) are fetched again from the server, which stays the one source of the pictures, at
// most once per fetch in flight and further apart when fetches are slow. The history redraws its
// table the same way when a row changes. The status pill says whether the page is live.
(function () {
  "use strict";
  var configNode = document.getElementById("live-data");
  if (!configNode || !window.WebSocket) return;
  var config = JSON.parse(configNode.textContent);
  var runPage = Boolean(config.runId);
  if (runPage && config.complete) return; // a run that ended gets no more events
  var parts = runPage
    ? ["run-head", "run-dag", "run-timeline", "run-diagnostics", "log", "replay-data", "live-data"]
    : ["history-live"];
  var words = {
    connecting: "Connecting…",
    live: "Live",
    reconnecting: "Reconnecting…",
    refused: "Not live: sign in again",
  };

  var status = "connecting";
  function showStatus(next) {
    status = next;
    var pill = document.getElementById("live-status");
    if (!pill) return;
    pill.hidden = false;
    pill.className = "live-status live-" + next;
    pill.textContent = words[next];
    pill.title = next === "live" ? "Updates arrive as the run goes on" : "";
  }

  // ---------------------------------------------------------------- the socket
  var lastSeq = runPage ? config.afterSeq : -1;
  var socket = null;
  var retries = 0;
  var stopped = false;
  var everSubscribed = false;

  function connect() {
    showStatus(retries ? "reconnecting" : "connecting");
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + window.location.host + config.socket);
    socket.onopen = function () {
      var subscription = runPage
        ? { action: "subscribe", run_id: config.runId, after_seq: lastSeq }
        : { action: "subscribe", runs: "*" };
      socket.send(JSON.stringify(subscription));
    };
    socket.onmessage = function (message) { receive(JSON.parse(message.data)); };
    socket.onclose = function (closed) {
      socket = null;
      if (stopped) return;
      if (closed.code === 4401 || closed.code === 4403) {
        showStatus("refused"); // signed out, or no longer a member: retrying would not help
        return;
      }
      retries += 1;
      showStatus("reconnecting");
      // Backing off, with jitter: a restarted server is not met by every page at once.
      var delay = Math.min(10000, 500 * Math.pow(2, retries)) * (0.75 + Math.random() * 0.5);
      window.setTimeout(connect, delay);
    };
  }

  function stop() {
    stopped = true;
    if (socket) socket.close();
  }

  function receive(message) {
    if (message.type === "subscribed") {
      retries = 0;
      showStatus("live");
      // Back after a drop: the run page got the backlog, but a redraw may have failed meanwhile,
      // and the history's rows changed without a word to this page.
      if (everSubscribed) scheduleRedraw();
      everSubscribed = true;
    } else if (message.type === "events") {
      applyEvents(message.events);
    } else if (message.type === "run") {
      scheduleRedraw();
    } else if (message.type === "error") {
      window.console.warn("live updates:", message.code, message.message);
    }
  }

  // ---------------------------------------------------------------- the run page, event by event
  var sinceDrawn = []; // events newer than the page last drawn by the server

  // A node is drawn twice when it is in the focused subgraph above the whole graph.
  function nodeElements(id) {
    return document.querySelectorAll('.dag .node[data-node="' + window.CSS.escape(id) + '"]');
  }

  function drawEvent(event) {
    if (event.event !== "transition" || typeof event.node !== "string") return;
    // A node the drawn DAG lacks is drawn by the next redraw.
    nodeElements(event.node).forEach(function (el) { drawNodeEvent(el, event); });
    var states = {};
    document.querySelectorAll(".dag .node").forEach(function (node) {
      states[node.getAttribute("data-node")] = node.querySelector(".state-word").textContent;
    });
    window.KahnScope.drawBlockingEdges(states);
  }

  function drawNodeEvent(el, event) {
    var changes = JSON.parse(el.getAttribute("data-changes"));
    var starts = JSON.parse(el.getAttribute("data-attempts"));
    changes.push([event.seq, event.to]);
    if (event.to === "running") starts.push([event.seq, event.attempt]);
    // The replay reads these too: the scrubber stays right until the redraw.
    el.setAttribute("data-changes", JSON.stringify(changes));
    el.setAttribute("data-attempts", JSON.stringify(starts));
    var attempts = starts.reduce(function (most, start) { return Math.max(most, start[1]); }, 0);
    window.KahnScope.drawNode(el, event.to, attempts);
  }

  function showingThePresent() {
    return !new URL(window.location.href).searchParams.has("at");
  }

  function applyEvents(events) {
    events.forEach(function (event) {
      if (event.seq <= lastSeq) return; // already shown (the server sends none twice; a redraw may)
      lastSeq = event.seq;
      sinceDrawn.push(event);
      if (showingThePresent()) drawEvent(event);
    });
    var count = document.getElementById("fact-events");
    if (count) count.textContent = String(lastSeq + 1);
    scheduleRedraw();
  }

  // ---------------------------------------------------------------- redrawing parts from the server
  var fetching = false;
  var wanted = false;
  var timer = null;
  var lastStart = 0;
  var lastTook = 0;
  var scrubbing = false;

  document.addEventListener("pointerdown", function (event) { scrubbing = event.target.id === "at"; });
  document.addEventListener("pointerup", function () { scrubbing = false; });
  document.addEventListener("visibilitychange", function () { if (!document.hidden && wanted) scheduleRedraw(); });

  function scheduleRedraw() {
    wanted = true;
    if (fetching || timer !== null) return;
    // At once when quiet; under a stream of events, no more often than a fetch takes, times four.
    var gap = Math.max(runPage ? 300 : 1000, 4 * lastTook);
    timer = window.setTimeout(redraw, Math.max(0, lastStart + gap - Date.now()));
  }

  function redraw() {
    timer = null;
    if (document.hidden) return; // picked up again when the page is looked at
    if (scrubbing) {
      timer = window.setTimeout(redraw, 250);
      return;
    }
    wanted = false;
    fetching = true;
    lastStart = Date.now();
    window.fetch(window.location.href, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (html) { swap(new DOMParser().parseFromString(html, "text/html")); })
      .catch(function (error) {
        // Not retried in a loop: the next event, or the socket coming back, draws it again.
        window.console.warn("live redraw failed:", error);
      })
      .finally(function () {
        lastTook = Date.now() - lastStart;
        fetching = false;
        if (wanted) scheduleRedraw();
      });
  }

  function swap(page) {
    var focused = document.activeElement && document.activeElement.id;
    parts.forEach(function (id) {
      var now = document.getElementById(id), next = page.getElementById(id);
      if (now && next) now.replaceWith(document.adoptNode(next));
    });
    if (focused && document.getElementById(focused)) document.getElementById(focused).focus();
    if (!runPage) {
      showStatus(status);
      return;
    }
    window.KahnScope.initReplay();
    window.KahnScope.initDagViews();
    var drawn = JSON.parse(document.getElementById("live-data").textContent);
    if (drawn.complete) {
      stop(); // the run ended: the page as drawn is final, and has no status pill any more
      return;
    }
    showStatus(status);
    // Events that came while the page was being drawn are not in it yet: draw them again.
    sinceDrawn = sinceDrawn.filter(function (event) { return event.seq > drawn.afterSeq; });
    if (showingThePresent()) sinceDrawn.forEach(drawEvent);
    var count = document.getElementById("fact-events");
    if (count) count.textContent = String(Math.max(lastSeq, drawn.afterSeq) + 1);
  }

  connect();
})();
