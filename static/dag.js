// The run page's DAG drawings: zoom, pan, fit to width, and a node search (`/` focuses it).
// Without this script the drawings are plain SVG at full size in scrolling boxes, and the search
// is a form the server answers (?find=), drawing and marking the nodes it finds.
// live.js redraws the DAG section from the server as a run goes on, then calls init() again.
window.KahnScope = window.KahnScope || {};
(function (scope) {
  "use strict";

  var MIN_SCALE = 0.05, MAX_SCALE = 3, STEP = 1.25;
  // Fitting a big graph to the width can leave its boxes too small to read: below this scale the
  // whole graph starts at full size instead (the Fit button still fits it).
  var READABLE_SCALE = 0.5;

  function View(frame) {
    this.frame = frame;
    this.box = frame.querySelector(".dag-view");
    this.svg = this.box.querySelector("svg");
    this.width = +this.svg.getAttribute("data-width");
    this.height = +this.svg.getAttribute("data-height");
    this.level = frame.querySelector(".zoom-level");
    this.scale = 1;
  }

  View.prototype.zoom = function (scale, anchorX, anchorY) {
    var box = this.box, old = this.scale;
    scale = Math.min(MAX_SCALE, Math.max(MIN_SCALE, scale));
    // Keep the point under the anchor (the pointer, or the box's centre) where it is.
    if (anchorX === undefined) { anchorX = box.clientWidth / 2; anchorY = box.clientHeight / 2; }
    var x = (box.scrollLeft + anchorX) / old, y = (box.scrollTop + anchorY) / old;
    this.scale = scale;
    this.svg.setAttribute("width", Math.round(this.width * scale));
    this.svg.setAttribute("height", Math.round(this.height * scale));
    box.scrollLeft = x * scale - anchorX;
    box.scrollTop = y * scale - anchorY;
    if (this.level) this.level.textContent = Math.round(scale * 100) + "%";
    this.remember();
  };

  // Zoom and scroll outlive a live redraw of the section (live.js), which calls init() again.
  var remembered = {};
  View.prototype.remember = function () {
    remembered[this.frame.id] = { scale: this.scale, left: this.box.scrollLeft, top: this.box.scrollTop };
  };

  // The scale at which the whole drawing is as wide as its box (and, with `height`, no taller).
  View.prototype.fitScale = function (height) {
    var scale = Math.min(1, (this.box.clientWidth - 2) / this.width);
    if (height) scale = Math.min(scale, height / this.height);
    return scale;
  };

  View.prototype.bind = function () {
    var view = this, box = this.box;
    this.frame.querySelectorAll("[data-zoom]").forEach(function (button) {
      button.addEventListener("click", function () {
        var how = button.getAttribute("data-zoom");
        if (how === "in") view.zoom(view.scale * STEP);
        else if (how === "out") view.zoom(view.scale / STEP);
        else if (how === "fit") view.zoom(view.fitScale());
        else view.zoom(1);
      });
    });
    var tools = this.frame.querySelector(".dag-tools");
    if (tools) tools.hidden = false;
    box.addEventListener("scroll", function () { view.remember(); }, { passive: true });

    // Ctrl (or ⌘) and the wheel, or a pinch, zooms about the pointer; the wheel alone scrolls.
    box.addEventListener("wheel", function (event) {
      if (!event.ctrlKey && !event.metaKey) return;
      event.preventDefault();
      var rect = box.getBoundingClientRect();
      view.zoom(view.scale * (event.deltaY < 0 ? STEP : 1 / STEP), event.clientX - rect.left, event.clientY - rect.top);
    }, { passive: false });

    // Dragging pans. A drag that starts on a node is a pan too once it moves; a click stays a click.
    var drag = null;
    box.addEventListener("pointerdown", function (event) {
      if (event.button !== 0) return;
      drag = { x: event.clientX, y: event.clientY, left: box.scrollLeft, top: box.scrollTop, moved: false };
    });
    box.addEventListener("pointermove", function (event) {
      if (!drag) return;
      var dx = event.clientX - drag.x, dy = event.clientY - drag.y;
      if (!drag.moved && Math.abs(dx) + Math.abs(dy) < 5) return;
      if (!drag.moved) { drag.moved = true; box.classList.add("panning"); box.setPointerCapture(event.pointerId); }
      box.scrollLeft = drag.left - dx;
      box.scrollTop = drag.top - dy;
    });
    function release() {
      if (drag && drag.moved) {
        box.classList.remove("panning");
        // The click that ends a pan (if any: it comes at once) must not open the node under it.
        var swallow = function (event) { event.preventDefault(); event.stopPropagation(); };
        box.addEventListener("click", swallow, true);
        window.setTimeout(function () { box.removeEventListener("click", swallow, true); }, 0);
      }
      drag = null;
    }
    box.addEventListener("dragstart", function (event) { event.preventDefault(); });
    box.addEventListener("pointerup", release);
    box.addEventListener("pointercancel", release);
  };

  // Brings a node into sight: scrolled to the middle of its box, and the box into the window.
  View.prototype.show = function (node) {
    var match = /translate\(([-\d.]+),([-\d.]+)\)/.exec(node.getAttribute("transform") || "");
    if (!match) return;
    var box = this.box, scale = this.scale;
    box.scrollLeft = (+match[1] + 86) * scale - box.clientWidth / 2;
    box.scrollTop = (+match[2] + 22) * scale - box.clientHeight / 2;
    var rect = box.getBoundingClientRect();
    if (rect.top < 0 || rect.bottom > window.innerHeight) box.scrollIntoView({ block: "nearest" });
  };

  function initSearch(full, firstDrawing) {
    var form = document.querySelector(".dag-search");
    if (!form) return;
    var input = form.querySelector("input[type=search]");
    var status = document.getElementById("dag-find-status");
    var matches = [], current = -1;

    function mark() {
      var wanted = input.value.trim().toLowerCase();
      matches = [];
      current = -1;
      document.querySelectorAll(".dag .node").forEach(function (node) {
        var hit = wanted !== "" && node.getAttribute("data-node").toLowerCase().indexOf(wanted) !== -1;
        node.classList.toggle("found", hit);
        if (hit && full && full.box.contains(node)) matches.push(node);
      });
      if (wanted === "") status.textContent = "Press / to search.";
      else if (matches.length) status.textContent = matches.length + (matches.length === 1 ? " drawn node matches" : " drawn nodes match") + ": Enter goes to the next.";
      else status.textContent = "Enter searches the whole graph.";
    }
    input.addEventListener("input", mark);
    form.addEventListener("submit", function (event) {
      mark();
      // Nodes drawn already are shown here; for others, the server draws the graph around them.
      if (!matches.length || input.value.trim() === "") return;
      event.preventDefault();
      current = (current + 1) % matches.length;
      full.show(matches[current]);
    });
    if (!scope.searchKeyBound) {
      scope.searchKeyBound = true;
      document.addEventListener("keydown", function (event) {
        if (event.key !== "/" || event.ctrlKey || event.metaKey || event.altKey) return;
        // Not while typing: `/` is then a character. The scrubber and buttons do not take text.
        var target = event.target;
        var typing = target.isContentEditable || /^(TEXTAREA|SELECT)$/.test(target.tagName) ||
          (target.tagName === "INPUT" && !/^(range|checkbox|radio|button|submit|reset)$/.test(target.type));
        if (typing) return;
        var box = document.getElementById("dag-find");
        if (!box) return;
        event.preventDefault();
        box.focus();
        box.select();
      });
    }
    // Back from a search the server answered: go to the first node it found (once: a live
    // redraw keeps the place the reader has moved to since).
    var found = firstDrawing && full && full.box.querySelector(".node.found");
    if (found) {
      full.show(found);
      matches = Array.prototype.slice.call(full.box.querySelectorAll(".node.found"));
      current = 0;
    }
  }

  var drawnBefore = false;

  function init() {
    var full = null;
    document.querySelectorAll(".dag-frame").forEach(function (frame) {
      if (!frame.querySelector(".dag-view svg")) return;
      var view = new View(frame);
      view.bind();
      var fit = view.box.getAttribute("data-fit");
      if (fit !== "both") full = view;
      var before = remembered[frame.id];
      if (before) {
        view.zoom(before.scale, 0, 0);
        view.box.scrollLeft = before.left;
        view.box.scrollTop = before.top;
      } else if (fit === "both") {
        // The focused subgraph is seen whole where it starts: its failed nodes in the first screen.
        var top = view.box.getBoundingClientRect().top + window.scrollY;
        view.zoom(view.fitScale(Math.max(240, window.innerHeight - top - 16)));
      } else {
        var scale = view.fitScale();
        view.zoom(scale >= READABLE_SCALE ? scale : 1);
      }
    });
    initSearch(full, !drawnBefore);
    drawnBefore = true;
  }

  scope.initDagViews = init;
  init();
})(window.KahnScope);
