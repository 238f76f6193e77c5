/* nfit mesh viewer: the reconstruction and the ground truth drawn with WebGL, two-sided
   Lambert shading, an orthographic camera; drag turns, the wheel zooms, double-click resets,
   and the views move together. About a hundred lines instead of a vendored 3D library. */
(function () {
  "use strict";
  var node = document.querySelector("script[data-mesh-data]");
  if (!node) return;
  var data = JSON.parse(node.textContent);
  var view = { yaw: 0.6, pitch: -0.35, zoom: 1.0 };
  var drawers = [];

  function bytes(b64) {
    var s = atob(b64), out = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out.buffer;
  }
  function matrix() {
    var cy = Math.cos(view.yaw), sy = Math.sin(view.yaw), cx = Math.cos(view.pitch), sx = Math.sin(view.pitch);
    var s = 0.85 * view.zoom;
    // rows of R = Rx(pitch) * Ry(yaw); column-major for GL, z halved into the clip range
    var r = [[cy, 0, sy], [sx * sy, cx, -sx * cy], [-cx * sy, sx, cx * cy]];
    var m = new Float32Array(16), n = new Float32Array(9);
    for (var c = 0; c < 3; c++) {
      m[c * 4 + 0] = s * r[0][c];
      m[c * 4 + 1] = s * r[1][c];
      m[c * 4 + 2] = -0.5 * s * r[2][c];
      for (var k = 0; k < 3; k++) n[c * 3 + k] = r[k][c];
    }
    m[15] = 1;
    return { mvp: m, nrm: n };
  }
  function shader(gl, type, src) {
    var sh = gl.createShader(type);
    gl.shaderSource(sh, src);
    gl.compileShader(sh);
    if (!gl.getShaderParameter(sh, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(sh));
    return sh;
  }
  function setup(canvas, mesh, colour) {
    var opts = { antialias: true, preserveDrawingBuffer: true };
    var gl = canvas.getContext("webgl", opts) || canvas.getContext("experimental-webgl", opts);
    if (!gl || !gl.getExtension("OES_element_index_uint")) return null;
    var prog = gl.createProgram();
    gl.attachShader(prog, shader(gl, gl.VERTEX_SHADER,
      "attribute vec3 p; attribute vec3 n; uniform mat4 mvp; uniform mat3 nm; varying vec3 vn;" +
      "void main() { gl_Position = mvp * vec4(p, 1.0); vn = nm * n; }"));
    gl.attachShader(prog, shader(gl, gl.FRAGMENT_SHADER,
      "precision mediump float; varying vec3 vn; uniform vec3 col;" +
      "void main() { vec3 l = normalize(vec3(0.35, 0.55, 1.0)); float d = abs(dot(normalize(vn), l));" +
      " gl_FragColor = vec4(col * (0.22 + 0.78 * d), 1.0); }"));
    gl.linkProgram(prog);
    gl.useProgram(prog);
    function buffer(target, array) {
      var b = gl.createBuffer();
      gl.bindBuffer(target, b);
      gl.bufferData(target, array, gl.STATIC_DRAW);
      return b;
    }
    var pos = buffer(gl.ARRAY_BUFFER, new Float32Array(bytes(mesh.pos)));
    var nrm = buffer(gl.ARRAY_BUFFER, new Float32Array(bytes(mesh.nrm)));
    var idx = new Uint32Array(bytes(mesh.idx));
    buffer(gl.ELEMENT_ARRAY_BUFFER, idx);
    var lp = gl.getAttribLocation(prog, "p"), ln = gl.getAttribLocation(prog, "n");
    var umvp = gl.getUniformLocation(prog, "mvp"), unm = gl.getUniformLocation(prog, "nm");
    gl.uniform3fv(gl.getUniformLocation(prog, "col"), colour);
    gl.enable(gl.DEPTH_TEST);
    return function draw() {
      var t = matrix();
      gl.viewport(0, 0, canvas.width, canvas.height);
      gl.clearColor(0.957, 0.961, 0.969, 1);
      gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
      gl.uniformMatrix4fv(umvp, false, t.mvp);
      gl.uniformMatrix3fv(unm, false, t.nrm);
      gl.bindBuffer(gl.ARRAY_BUFFER, pos);
      gl.enableVertexAttribArray(lp);
      gl.vertexAttribPointer(lp, 3, gl.FLOAT, false, 0, 0);
      gl.bindBuffer(gl.ARRAY_BUFFER, nrm);
      gl.enableVertexAttribArray(ln);
      gl.vertexAttribPointer(ln, 3, gl.FLOAT, false, 0, 0);
      gl.drawElements(gl.TRIANGLES, idx.length, gl.UNSIGNED_INT, 0);
    };
  }
  function redraw() { drawers.forEach(function (d) { d(); }); }

  var colours = { recon: [0.85, 0.45, 0.25], truth: [0.35, 0.55, 0.85] };
  document.querySelectorAll("canvas[data-mesh]").forEach(function (canvas) {
    var role = canvas.dataset.mesh, draw = null;
    try { draw = setup(canvas, data[role], colours[role] || [0.6, 0.6, 0.6]); } catch (e) { draw = null; }
    if (!draw) {
      var warn = document.querySelector("[data-nowebgl]");
      if (warn) warn.hidden = false;
      return;
    }
    drawers.push(draw);
    var last = null;
    canvas.addEventListener("pointerdown", function (ev) { last = [ev.clientX, ev.clientY]; canvas.setPointerCapture(ev.pointerId); });
    canvas.addEventListener("pointermove", function (ev) {
      if (!last) return;
      view.yaw += (ev.clientX - last[0]) * 0.01;
      view.pitch = Math.max(-1.55, Math.min(1.55, view.pitch + (ev.clientY - last[1]) * 0.01));
      last = [ev.clientX, ev.clientY];
      redraw();
    });
    canvas.addEventListener("pointerup", function () { last = null; });
    canvas.addEventListener("wheel", function (ev) {
      ev.preventDefault();
      view.zoom = Math.max(0.2, Math.min(20, view.zoom * Math.exp(-ev.deltaY * 0.001)));
      redraw();
    }, { passive: false });
    canvas.addEventListener("dblclick", function () { view.yaw = 0.6; view.pitch = -0.35; view.zoom = 1; redraw(); });
  });
  redraw();
})();
