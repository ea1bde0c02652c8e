// Interactive cumulative DVH drawn as SVG from the JSON in #dvh-data; hover shows the volume (%)
// of every structure at the dose under the pointer. Without JavaScript the static PNG stays.
(function () {
  "use strict";
  var holder = document.getElementById("dvh-plot");
  var source = document.getElementById("dvh-data");
  if (!holder || !source) { return; }
  var data = JSON.parse(source.textContent);
  var curves = data.curves || [];
  if (!curves.length) { return; }
  var NS = "http://www.w3.org/2000/svg";
  var W = 720, H = 400, L = 56, R = 16, T = 14, B = 44;
  var maxDose = 0;
  curves.forEach(function (c) {
    c.dose_gy.forEach(function (d, k) { if (c.volume_percent[k] > 0.05 && d > maxDose) { maxDose = d; } });
  });
  if (data.prescription_gy && data.prescription_gy * 1.2 > maxDose) { maxDose = data.prescription_gy * 1.2; }
  maxDose = roundUp(maxDose > 0 ? maxDose : 1);
  function roundUp(v) {  // to the next half decade: 27 -> 30, 13 -> 15, 0.8 -> 0.8
    var half = Math.pow(10, Math.floor(Math.log10(v))) / 2;
    return Math.ceil(v / half) * half;
  }
  function x(d) { return L + (W - L - R) * d / maxDose; }
  function y(v) { return T + (H - T - B) * (1 - v / 100); }
  function el(name, attrs, parent) {
    var node = document.createElementNS(NS, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (parent) { parent.appendChild(node); }
    return node;
  }
  var svg = el("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "cumulative DVH" });
  for (var i = 0; i <= 10; i++) {
    var d = maxDose * i / 10, v = 10 * i;
    el("line", { x1: x(d), x2: x(d), y1: T, y2: H - B, "class": "grid" }, svg);
    el("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), "class": "grid" }, svg);
    el("text", { x: x(d), y: H - B + 16, "text-anchor": "middle", "class": "tick" }, svg).textContent = +d.toPrecision(3);
    el("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", "class": "tick" }, svg).textContent = v;
  }
  el("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle", "class": "label" }, svg).textContent = "dose (Gy)";
  el("text", { x: 14, y: (T + H - B) / 2, "text-anchor": "middle", "class": "label",
               transform: "rotate(-90 14 " + (T + H - B) / 2 + ")" }, svg).textContent = "volume (%)";
  if (data.prescription_gy) {
    el("line", { x1: x(data.prescription_gy), x2: x(data.prescription_gy), y1: T, y2: H - B, "class": "rx" }, svg);
  }
  curves.forEach(function (c) {
    var pts = c.dose_gy.map(function (d, k) { return x(Math.min(d, maxDose)).toFixed(1) + "," + y(c.volume_percent[k]).toFixed(1); });
    el("polyline", { points: pts.join(" "), fill: "none", stroke: c.colour, "stroke-width": 2 }, svg);
  });
  var cursor = el("line", { x1: L, x2: L, y1: T, y2: H - B, "class": "cursor", visibility: "hidden" }, svg);
  var readout = document.createElement("div");
  readout.className = "dvh-readout";
  readout.textContent = "Move the pointer over the plot to read the volumes.";
  function volumeAt(c, dose) {
    var ds = c.dose_gy, vs = c.volume_percent;
    if (dose <= ds[0]) { return vs[0]; }
    for (var k = 1; k < ds.length; k++) {
      if (dose <= ds[k]) {
        var f = (dose - ds[k - 1]) / ((ds[k] - ds[k - 1]) || 1);
        return vs[k - 1] + f * (vs[k] - vs[k - 1]);
      }
    }
    return vs[vs.length - 1];
  }
  svg.addEventListener("mousemove", function (event) {
    var box = svg.getBoundingClientRect();
    var px = (event.clientX - box.left) * W / box.width;
    var dose = Math.max(0, Math.min(maxDose, (px - L) / (W - L - R) * maxDose));
    cursor.setAttribute("x1", x(dose)); cursor.setAttribute("x2", x(dose));
    cursor.setAttribute("visibility", "visible");
    readout.textContent = "";
    var head = document.createElement("strong");
    head.textContent = "dose " + dose.toFixed(2) + " Gy" +
      (data.prescription_gy ? " (" + (100 * dose / data.prescription_gy).toFixed(0) + " % Rx)" : "") + ": ";
    readout.appendChild(head);
    curves.forEach(function (c) {
      var v = volumeAt(c, dose), item = document.createElement("span");
      item.style.color = c.colour;
      item.textContent = c.name + " " + v.toFixed(1) + " % (" + (v * c.total_cm3 / 100).toFixed(2) + " cm³)  ";
      readout.appendChild(item);
    });
  });
  svg.addEventListener("mouseleave", function () { cursor.setAttribute("visibility", "hidden"); });
  var legend = document.createElement("div");
  legend.className = "dvh-legend";
  curves.forEach(function (c) {
    var item = document.createElement("span");
    item.style.borderColor = c.colour;
    item.textContent = c.name + " (" + c.total_cm3.toPrecision(3) + " cm³)";
    legend.appendChild(item);
  });
  holder.appendChild(svg);
  holder.appendChild(legend);
  holder.appendChild(readout);
  document.documentElement.classList.add("dvh-interactive");
})();
