/* nfit report pages: the compare viewer (split slider, zoom, slices), sortable and
   filterable tables, the copy button. No library, no request: everything is in the page. */
(function () {
  "use strict";

  function setupViewer(root) {
    var data = JSON.parse(root.querySelector("script[data-slices]").textContent);
    var roles = data.roles;
    var zIndex = null;
    var zNode = root.nextElementSibling;
    if (zNode && zNode.matches && zNode.matches("script[data-zindex]")) zIndex = JSON.parse(zNode.textContent);
    var left = root.querySelector("[data-left]"), right = root.querySelector("[data-right]");
    var top = root.querySelector("img[data-side=left]"), base = root.querySelector("img[data-side=right]");
    var handle = root.querySelector("[data-handle]"), split = root.querySelector("[data-split]");
    var zInput = root.querySelector("[data-z]"), zOut = root.querySelector("[data-zout]");
    var compare = root.querySelector("[data-compare]");
    var panels = root.querySelectorAll("img[data-panel]");
    var zoom = 0;

    function z() { return zInput ? parseInt(zInput.value, 10) : 0; }
    function show() {
      var k = z();
      top.src = roles[left.value][k];
      base.src = roles[right.value][k];
      top.alt = data.labels[left.value];
      base.alt = data.labels[right.value];
      panels.forEach(function (img) { img.src = roles[img.dataset.panel][k]; });
      if (zOut) zOut.textContent = (zIndex ? zIndex[k] : k) + " / " + (zIndex ? zIndex[zIndex.length - 1] : roles[left.value].length - 1);
    }
    function setSplit(pct) {
      pct = Math.max(0, Math.min(100, pct));
      split.value = pct;
      top.style.clipPath = "inset(0 " + (100 - pct) + "% 0 0)";
      handle.style.left = pct + "%";
    }
    function setZoom(level) {
      zoom = level;
      root.dataset.zoom = String(level);
      root.querySelectorAll("[data-zoom]").forEach(function (b) { b.classList.toggle("on", parseFloat(b.dataset.zoom) === level); });
      root.classList.toggle("pixelated", level >= 2);
      var imgs = [top, base].concat(Array.prototype.slice.call(panels));
      imgs.forEach(function (img) {
        if (level === 0) { img.style.width = ""; img.style.height = ""; }
        else if (img.naturalWidth) { img.style.width = img.naturalWidth * level + "px"; img.style.height = "auto"; }
      });
      fit();
    }
    function fit() {
      // "fit": as wide as the column allows and no taller than most of the window
      var w = base.naturalWidth, h = base.naturalHeight;
      compare.style.width = zoom === 0 && w && h ? "min(100%, " + (78 * w / h).toFixed(2) + "vh)" : "";
    }
    left.addEventListener("change", show);
    right.addEventListener("change", show);
    split.addEventListener("input", function () { setSplit(parseFloat(split.value)); });
    if (zInput) zInput.addEventListener("input", show);
    root.querySelectorAll("button[data-zoom]").forEach(function (b) {
      b.addEventListener("click", function () { setZoom(parseFloat(b.dataset.zoom)); });
    });
    var dragging = false;
    function fromPointer(ev) {
      var r = compare.getBoundingClientRect();
      if (r.width > 0) setSplit((ev.clientX - r.left) / r.width * 100);
    }
    compare.addEventListener("pointerdown", function (ev) { dragging = true; compare.setPointerCapture(ev.pointerId); fromPointer(ev); });
    compare.addEventListener("pointermove", function (ev) { if (dragging) fromPointer(ev); });
    compare.addEventListener("pointerup", function () { dragging = false; });
    base.addEventListener("load", function () { setZoom(zoom); });
    show();
    setSplit(50);
    setZoom(0);
  }

  function cellValue(td) {
    var v = td.dataset.v !== undefined ? td.dataset.v : td.textContent.trim();
    var n = parseFloat(v.replace(/,/g, ""));
    return isNaN(n) || !/^[-+]?[\d.,]+(e[-+]?\d+)?/i.test(v.replace(/,/g, "")) ? v.toLowerCase() : n;
  }

  function setupSortable(tableEl) {
    var heads = tableEl.querySelectorAll("thead th");
    heads.forEach(function (th, col) {
      th.classList.add("sort");
      th.addEventListener("click", function () {
        var asc = !th.classList.contains("asc");
        heads.forEach(function (h) { h.classList.remove("asc", "desc"); });
        th.classList.add(asc ? "asc" : "desc");
        var body = tableEl.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = cellValue(a.cells[col]), y = cellValue(b.cells[col]);
          if (x === y) return 0;
          if (x === "" || x === "-") return 1;
          if (y === "" || y === "-") return -1;
          if (typeof x === typeof y) return (x < y ? -1 : 1) * (asc ? 1 : -1);
          return (typeof x === "number" ? -1 : 1);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  }

  function setupFilter(box) {
    var tableEl = document.getElementById(box.dataset.filter);
    var text = box.querySelector("input[type=search]"), status = box.querySelector("select");
    var count = box.querySelector("[data-count]");
    function apply() {
      var words = text.value.toLowerCase().split(/\s+/).filter(Boolean);
      var want = status ? status.value : "";
      var shown = 0;
      Array.prototype.forEach.call(tableEl.tBodies[0].rows, function (row) {
        var hay = row.textContent.toLowerCase();
        var ok = words.every(function (w) { return hay.indexOf(w) >= 0; }) && (!want || row.dataset.status === want);
        row.hidden = !ok;
        if (ok) shown += 1;
      });
      if (count) count.textContent = shown + " of " + tableEl.tBodies[0].rows.length + " jobs";
    }
    text.addEventListener("input", apply);
    if (status) status.addEventListener("change", apply);
    apply();
  }

  function setupCopy(button) {
    button.addEventListener("click", function () {
      var pre = button.previousElementSibling;
      var range = document.createRange();
      range.selectNodeContents(pre);
      var sel = window.getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      try { document.execCommand("copy"); button.textContent = "copied"; } catch (e) { button.textContent = "selected"; }
    });
  }

  document.querySelectorAll("[data-viewer]").forEach(setupViewer);
  document.querySelectorAll("table.sortable").forEach(setupSortable);
  document.querySelectorAll("[data-filter]").forEach(setupFilter);
  document.querySelectorAll("[data-copy-button]").forEach(setupCopy);
})();
