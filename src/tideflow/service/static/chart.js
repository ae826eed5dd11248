// Line charts for the tideflow web UI, drawn as SVG: a y axis with round ticks and its unit,
// an x axis of clock times (or record numbers) and a title for each. Text goes in with
// textContent, like everywhere else in the UI.
"use strict";

const TideflowChart = (() => {
  const SVG = "http://www.w3.org/2000/svg";
  const MARGIN = { left: 58, right: 14, top: 12, bottom: 40 };
  // Steps between time ticks, in seconds: the first that gives at most `ticks` labels wins.
  const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
    21600, 43200, 86400, 172800, 604800];

  function node(tag, attrs = {}, text = null) {
    const n = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== null) n.textContent = text;
    return n;
  }

  // Round tick values covering [lo, hi]: steps of 1, 2 or 5 times a power of ten.
  function niceTicks(lo, hi, count) {
    if (!(hi > lo)) hi = lo + 1;
    const raw = (hi - lo) / Math.max(1, count);
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) || 10 * power;
    const first = Math.floor(lo / step) * step;
    const ticks = [];
    for (let v = first; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
    if (ticks[ticks.length - 1] < hi) ticks.push(Number((ticks[ticks.length - 1] + step).toPrecision(12)));
    return { ticks, step };
  }

  // 1234567 -> "1.23M", 0.000123 -> "0.000123": short labels that stay exact enough.
  function number(v) {
    const a = Math.abs(v);
    if (a >= 1e9) return `${Number((v / 1e9).toPrecision(3))}G`;
    if (a >= 1e6) return `${Number((v / 1e6).toPrecision(3))}M`;
    if (a >= 1e4) return `${Number((v / 1e3).toPrecision(3))}k`;
    return Number(v.toPrecision(4)).toLocaleString("en-US", { maximumFractionDigits: 12 });
  }

  const pad = (n) => String(n).padStart(2, "0");
  function clock(ms, step) {
    const d = new Date(ms);
    const time = step < 60 ? `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`
      : `${pad(d.getHours())}:${pad(d.getMinutes())}`;
    return step >= 86400 ? `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`
      : step >= 3600 * 6 ? `${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}` : time;
  }

  // This browser's offset from UTC, as the time axis' title shows it: "UTC+02:00".
  function zone(ms) {
    const minutes = -new Date(ms).getTimezoneOffset();
    const sign = minutes < 0 ? "-" : "+";
    return `UTC${sign}${pad(Math.floor(Math.abs(minutes) / 60))}:${pad(Math.abs(minutes) % 60)}`;
  }

  function timeTicks(lo, hi, count) {
    const span = Math.max(1, (hi - lo) / 1000);
    const step = TIME_STEPS.find((s) => span / s <= count) || TIME_STEPS[TIME_STEPS.length - 1];
    // Align to whole steps of local time (minutes and hours as a clock shows them).
    const offset = new Date(lo).getTimezoneOffset() * 60_000;
    const ms = step * 1000;
    const ticks = [];
    for (let t = Math.ceil((lo - offset) / ms) * ms + offset; t <= hi; t += ms) ticks.push(t);
    return { ticks, step };
  }

  /**
   * Draw `points` ([x, y] pairs, x ascending; y null for a gap) into `container`.
   * options: `id` of the svg, `yTitle` (what and unit: "records/s"), `xTitle`, `xType`
   * ("time": x in milliseconds since the epoch, labelled as clock times; "number"),
   * `height` in pixels, `empty`: the text shown without points, `zero`: the y axis starts
   * at zero (default; off: it fits the values), `dots`: mark every point, `line`: join the
   * points (default; off: points only, for values of several series at one x).
   */
  function draw(container, points, options) {
    const width = Math.max(240, container.clientWidth || 600);
    const height = options.height || 170;
    const svg = node("svg", {
      id: options.id, class: "chart", width, height, viewBox: `0 0 ${width} ${height}`,
      role: "img", "aria-label": `${options.yTitle} by ${options.xTitle}`,
    });
    const plotW = width - MARGIN.left - MARGIN.right;
    const plotH = height - MARGIN.top - MARGIN.bottom;
    const shown = points.filter((p) => p[1] !== null && Number.isFinite(p[1]));
    const xs = points.map((p) => p[0]);
    const ys = shown.map((p) => p[1]);
    const zero = options.zero !== false || !ys.length;
    const yMin = zero ? Math.min(0, ...ys) : Math.min(...ys);
    const yMax = zero ? Math.max(0, ...ys) || 1 : Math.max(...ys);
    const yScale = niceTicks(yMin, yMax > yMin ? yMax : yMin + (Math.abs(yMin) || 1), 4);
    const yLo = yScale.ticks[0], yHi = yScale.ticks[yScale.ticks.length - 1];
    let xLo = xs.length ? xs[0] : 0, xHi = xs.length ? xs[xs.length - 1] : 1;
    if (xHi <= xLo) { xHi = xLo + (options.xType === "time" ? 1000 : 1); }
    const X = (x) => MARGIN.left + ((x - xLo) / (xHi - xLo)) * plotW;
    const Y = (y) => MARGIN.top + plotH - ((y - yLo) / (yHi - yLo || 1)) * plotH;

    const yAxis = node("g", { class: "axis axis-y" });
    for (const t of yScale.ticks) {
      yAxis.append(node("line", { class: "grid", x1: MARGIN.left, x2: width - MARGIN.right, y1: Y(t), y2: Y(t) }));
      yAxis.append(node("text", { class: "tick", x: MARGIN.left - 6, y: Y(t) + 4, "text-anchor": "end" }, number(t)));
    }
    yAxis.append(node("text", {
      class: "axis-title", x: 0, y: 0, "text-anchor": "middle",
      transform: `translate(13 ${MARGIN.top + plotH / 2}) rotate(-90)`,
    }, options.yTitle));

    const xAxis = node("g", { class: "axis axis-x" });
    xAxis.append(node("line", { class: "baseline", x1: MARGIN.left, x2: width - MARGIN.right, y1: MARGIN.top + plotH, y2: MARGIN.top + plotH }));
    const maxTicks = Math.max(2, Math.floor(plotW / 90));
    const xTicks = options.xType === "time" ? timeTicks(xLo, xHi, maxTicks)
      : niceTicks(xLo, xHi, maxTicks);
    for (const t of xTicks.ticks) {
      if (t < xLo || t > xHi) continue;
      xAxis.append(node("line", { class: "tick-mark", x1: X(t), x2: X(t), y1: MARGIN.top + plotH, y2: MARGIN.top + plotH + 4 }));
      const label = options.xType === "time" ? clock(t, xTicks.step) : number(t);
      // A label at the right edge ends there instead of running out of the picture.
      const anchor = X(t) > width - MARGIN.right - 30 ? "end" : "middle";
      xAxis.append(node("text", { class: "tick", x: X(t), y: MARGIN.top + plotH + 16, "text-anchor": anchor }, label));
    }
    const xTitle = options.xType === "time" && xs.length ? `${options.xTitle} (${zone(xLo)})` : options.xTitle;
    xAxis.append(node("text", { class: "axis-title", x: MARGIN.left + plotW / 2, y: height - 4, "text-anchor": "middle" }, xTitle));
    svg.append(yAxis, xAxis);

    if (!shown.length) {
      svg.append(node("text", { class: "empty", x: MARGIN.left + plotW / 2, y: MARGIN.top + plotH / 2, "text-anchor": "middle" }, options.empty || "no data yet"));
    } else {
      // One path; a null y starts a new segment, so a gap stays visible.
      let d = "", pen = "M";
      for (const [x, y] of points) {
        if (y === null || !Number.isFinite(y)) { pen = "M"; continue; }
        d += `${pen}${X(x).toFixed(1)},${Y(y).toFixed(1)} `;
        pen = "L";
      }
      if (options.line !== false) svg.append(node("path", { class: "line", d: d.trim() }));
      if (options.dots) for (const [x, y] of shown) svg.append(node("circle", { class: "dot", cx: X(x), cy: Y(y), r: 2.5 }));
      const [lx, ly] = shown[shown.length - 1];
      svg.append(node("circle", { class: "last", cx: X(lx), cy: Y(ly), r: 3 }));
    }
    container.replaceChildren(svg);
  }

  return { draw, niceTicks, number, clock };
})();

window.TideflowChart = TideflowChart;
