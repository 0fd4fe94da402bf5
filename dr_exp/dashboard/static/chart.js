/* Small SVG charts for the dr_exp dashboard and report: line charts (with optional mean ± spread
   bands, log x, stage markers) and scatter plots. No dependencies; everything is drawn as SVG
   elements, so charts print, zoom and screenshot crisply. */
(function (global) {
  'use strict';
  const NS = 'http://www.w3.org/2000/svg';
  const PALETTE = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f',
    '#bcbd22', '#17becf'];

  function color(i) {
    if (i < PALETTE.length) return PALETTE[i];
    const hue = (i * 137.508) % 360;  // golden angle: neighbours stay apart
    return `hsl(${hue.toFixed(1)}, 62%, ${i % 2 ? 40 : 52}%)`;
  }

  function el(tag, attrs, parent) {
    const node = document.createElementNS(NS, tag);
    for (const k in attrs || {}) node.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(node);
    return node;
  }

  function fmt(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return '-';
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(2);
    return String(+v.toPrecision(4));
  }

  function niceTicks(lo, hi, n, integers) {
    if (!(hi > lo)) { const d = Math.abs(lo) || 1; lo -= d / 2; hi += d / 2; }
    const raw = (hi - lo) / Math.max(1, n);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    let step = [1, 2, 2.5, 5, 10].filter(m => !integers || m !== 2.5).map(m => m * mag).find(s => s >= raw) || 10 * mag;
    if (integers && step < 1) step = 1;
    const start = Math.floor(lo / step) * step, end = Math.ceil(hi / step) * step;
    const ticks = [];
    for (let t = start; t <= end + step / 2; t += step) ticks.push(+t.toPrecision(12));
    return { lo: start, hi: end, ticks };
  }

  function logTicks(lo, hi) {
    const a = Math.floor(Math.log10(lo)), b = Math.ceil(Math.log10(hi));
    const ticks = [];
    for (let e = a; e <= b; e++) {
      ticks.push(Math.pow(10, e));
      if (b - a <= 2) { ticks.push(2 * Math.pow(10, e)); ticks.push(5 * Math.pow(10, e)); }
    }
    return { lo: Math.pow(10, a), hi: Math.pow(10, b), ticks: ticks.filter(t => t >= Math.pow(10, a) && t <= Math.pow(10, b)) };
  }

  /* Whether a log x axis suits these values: all positive and spanning at least a decade. */
  function wantsLog(values) {
    const v = values.filter(x => typeof x === 'number');
    if (v.length < 2 || v.some(x => x <= 0)) return false;
    return Math.max(...v) / Math.min(...v) >= 10;
  }

  /* A frame with axes; returns the svg, its scales and the plot area. */
  function frame(container, opt, xs, ys) {
    const width = Math.max(240, opt.width || container.clientWidth || 480);
    const height = opt.height || 260;
    const m = { l: 56, r: 12, t: opt.title ? 24 : 10, b: 38 };
    const svg = el('svg', { viewBox: `0 0 ${width} ${height}`, width, height, class: 'drchart', role: 'img' });
    if (opt.title) {
      const t = el('text', { x: m.l, y: 16, class: 'title' }, svg);
      t.textContent = opt.title;
    }
    const pw = width - m.l - m.r, ph = height - m.t - m.b;
    const finite = a => a.filter(v => typeof v === 'number' && Number.isFinite(v));
    const fx = finite(xs), fy = finite(ys);
    let xl = Math.min(...fx), xh = Math.max(...fx);
    if (!fx.length) { xl = 0; xh = 1; }
    const logX = !!opt.logX && fx.length > 0 && xl > 0;
    const intX = fx.length > 0 && fx.every(Number.isInteger);
    let X = null;
    if (logX) {
      // Lines span the data exactly; scatter plots leave a margin so no point sits on the frame.
      const lo = opt.scatter ? xl / 1.3 : xl, hi = opt.scatter ? xh * 1.3 : xh;
      X = { lo, hi, ticks: logTicks(lo, hi).ticks.filter(t => t >= lo * 0.999 && t <= hi * 1.001) };
    } else if (!opt.categories) {
      const pad = xh > xl ? (opt.scatter ? (xh - xl) * 0.06 : 0) : (intX ? 1 : Math.abs(xl) * 0.1 || 1);
      const lo = xl - pad, hi = xh + pad;
      X = { lo, hi, ticks: niceTicks(lo, hi, Math.max(2, Math.floor(pw / 80)), intX).ticks.filter(t => t >= lo - 1e-9 && t <= hi + 1e-9) };
    }
    let Y = niceTicks(fy.length ? Math.min(...fy) : 0, fy.length ? Math.max(...fy) : 1, Math.max(2, Math.floor(ph / 40)));
    let sx;
    if (opt.categories) {
      const n = opt.categories.length;
      sx = v => m.l + (n <= 1 ? pw / 2 : (v + 0.5) * pw / n);
    } else if (logX) {
      const a = Math.log10(X.lo), b = Math.log10(X.hi);
      sx = v => m.l + (Math.log10(v) - a) / ((b - a) || 1) * pw;
    } else {
      sx = v => m.l + (v - X.lo) / ((X.hi - X.lo) || 1) * pw;
    }
    const sy = v => m.t + ph - (v - Y.lo) / ((Y.hi - Y.lo) || 1) * ph;
    const axes = el('g', { class: 'axes' }, svg);
    for (const t of Y.ticks) {
      el('line', { x1: m.l, x2: m.l + pw, y1: sy(t), y2: sy(t), class: 'grid' }, axes);
      const lab = el('text', { x: m.l - 6, y: sy(t) + 4, 'text-anchor': 'end' }, axes);
      lab.textContent = fmt(t);
    }
    const xticks = opt.categories ? opt.categories.map((c, i) => [i, c]) : X.ticks.map(t => [t, fmt(t)]);
    const every = Math.max(1, Math.ceil(xticks.length / Math.max(2, pw / 60)));
    xticks.forEach(([t, label], i) => {
      if (i % every) return;
      el('line', { x1: sx(t), x2: sx(t), y1: m.t + ph, y2: m.t + ph + 4, class: 'tick' }, axes);
      const lab = el('text', { x: sx(t), y: m.t + ph + 16, 'text-anchor': 'middle' }, axes);
      lab.textContent = String(label).length > 14 ? String(label).slice(0, 13) + '…' : label;
    });
    el('line', { x1: m.l, x2: m.l + pw, y1: m.t + ph, y2: m.t + ph, class: 'axis' }, axes);
    el('line', { x1: m.l, x2: m.l, y1: m.t, y2: m.t + ph, class: 'axis' }, axes);
    if (opt.xLabel) {
      const t = el('text', { x: m.l + pw / 2, y: height - 4, 'text-anchor': 'middle', class: 'label' }, axes);
      t.textContent = opt.xLabel + (logX ? ' (log)' : '');
    }
    if (opt.yLabel) {
      const t = el('text', { x: 12, y: m.t + ph / 2, 'text-anchor': 'middle', class: 'label',
        transform: `rotate(-90 12 ${m.t + ph / 2})` }, axes);
      t.textContent = opt.yLabel;
    }
    container.replaceChildren(svg);
    return { svg, sx, sy, m, pw, ph, width, height };
  }

  function tooltip(container) {
    let tip = container.querySelector('.drtip');
    if (!tip) {
      tip = document.createElement('div');
      tip.className = 'drtip';
      container.appendChild(tip);
    }
    return tip;
  }

  /* Line chart. series: [{name, xs, ys, color?, lo?, hi?, dashed?}]; options: title, xLabel,
     yLabel, logX, height, markers: [{x, label}]. Each series is one <path class="series"> whose
     data-n says how many points it joins. */
  function line(container, series, opt) {
    opt = opt || {};
    container.classList.add('drchart-box');
    const allX = [], allY = [];
    for (const s of series) {
      allX.push(...s.xs);
      allY.push(...s.ys.filter(v => v !== null));
      if (s.lo) allY.push(...s.lo, ...s.hi);
    }
    const f = frame(container, opt, allX, allY);
    if (!series.length || !allX.length) {
      const t = el('text', { x: f.width / 2, y: f.height / 2, 'text-anchor': 'middle', class: 'empty' }, f.svg);
      t.textContent = opt.empty || 'no data yet';
      return f;
    }
    for (const mk of opt.markers || []) {
      const x = f.sx(mk.x);
      el('line', { x1: x, x2: x, y1: f.m.t, y2: f.m.t + f.ph, class: 'marker' }, f.svg);
      const t = el('text', { x: x + 3, y: f.m.t + 10, class: 'markerlabel' }, f.svg);
      t.textContent = mk.label;
    }
    const plot = el('g', { class: 'plot' }, f.svg);
    series.forEach((s, i) => {
      const c = s.color || color(i);
      if (s.lo && s.hi) {
        const up = s.xs.map((x, j) => `${f.sx(x).toFixed(1)},${f.sy(s.hi[j]).toFixed(1)}`);
        const down = s.xs.map((x, j) => `${f.sx(x).toFixed(1)},${f.sy(s.lo[j]).toFixed(1)}`).reverse();
        el('path', { d: 'M' + up.concat(down).join('L') + 'Z', fill: c, 'fill-opacity': 0.18, stroke: 'none', class: 'band' }, plot);
      }
      let d = '', n = 0, pen = 'M';
      s.xs.forEach((x, j) => {
        const y = s.ys[j];
        if (y === null || y === undefined || !Number.isFinite(y)) { pen = 'M'; return; }
        d += `${pen}${f.sx(x).toFixed(1)},${f.sy(y).toFixed(1)}`;
        pen = 'L';
        n++;
      });
      const p = el('path', { d, stroke: c, fill: 'none', 'stroke-width': 1.8, class: 'series', 'data-n': n,
        'data-name': s.name || '' }, plot);
      if (s.dashed) p.setAttribute('stroke-dasharray', '5 3');
      if (n === 1 || (opt.dots && n <= 60)) {
        s.xs.forEach((x, j) => {
          if (Number.isFinite(s.ys[j])) el('circle', { cx: f.sx(x), cy: f.sy(s.ys[j]), r: 2.5, fill: c, class: 'dot' }, plot);
        });
      }
    });
    hover(container, f, series);
    return f;
  }

  function hover(container, f, series) {
    const cursor = el('line', { y1: f.m.t, y2: f.m.t + f.ph, class: 'cursor', visibility: 'hidden' }, f.svg);
    const overlay = el('rect', { x: f.m.l, y: f.m.t, width: f.pw, height: f.ph, fill: 'transparent' }, f.svg);
    const tip = tooltip(container);
    overlay.addEventListener('mouseleave', () => { tip.style.display = 'none'; cursor.setAttribute('visibility', 'hidden'); });
    overlay.addEventListener('mousemove', ev => {
      const box = f.svg.getBoundingClientRect();
      const px = (ev.clientX - box.left) * f.width / box.width;
      let best = null;
      for (const s of series) {
        for (let j = 0; j < s.xs.length; j++) {
          const dx = Math.abs(f.sx(s.xs[j]) - px);
          if (best === null || dx < best.dx) best = { dx, x: s.xs[j] };
        }
      }
      if (!best) return;
      const rows = [];
      series.forEach((s, i) => {
        const j = s.xs.indexOf(best.x);
        if (j >= 0 && s.ys[j] !== null) rows.push([s.color || color(i), s.name || '', s.ys[j]]);
      });
      rows.sort((a, b) => b[2] - a[2]);
      cursor.setAttribute('x1', f.sx(best.x));
      cursor.setAttribute('x2', f.sx(best.x));
      cursor.setAttribute('visibility', 'visible');
      tip.replaceChildren();
      const head = document.createElement('div');
      head.className = 'tiphead';
      head.textContent = `x = ${fmt(best.x)}`;
      tip.appendChild(head);
      for (const [c, name, v] of rows.slice(0, 12)) {
        const r = document.createElement('div');
        const sw = document.createElement('span');
        sw.className = 'swatch';
        sw.style.background = c;
        r.append(sw, `${fmt(v)}  ${name}`);
        tip.appendChild(r);
      }
      if (rows.length > 12) tip.append(`… ${rows.length - 12} more`);
      tip.style.display = 'block';
      const left = (ev.clientX - container.getBoundingClientRect().left) + 14;
      tip.style.left = Math.min(left, container.clientWidth - 220) + 'px';
      tip.style.top = '8px';
    });
  }

  /* Scatter plot. points: [{x, y, label, color?, href?}]; options as for line, plus categories
     (x values are then indexes) and means: true to join the mean y of each x. */
  function scatter(container, points, opt) {
    opt = opt || {};
    container.classList.add('drchart-box');
    const f = frame(container, { ...opt, scatter: true }, points.map(p => p.x), points.map(p => p.y));
    if (!points.length) {
      const t = el('text', { x: f.width / 2, y: f.height / 2, 'text-anchor': 'middle', class: 'empty' }, f.svg);
      t.textContent = opt.empty || 'no data yet';
      return f;
    }
    if (opt.means) {
      const by = new Map();
      for (const p of points) { if (!by.has(p.x)) by.set(p.x, []); by.get(p.x).push(p.y); }
      const xs = [...by.keys()].sort((a, b) => a - b);
      const d = xs.map((x, i) => `${i ? 'L' : 'M'}${f.sx(x).toFixed(1)},${f.sy(by.get(x).reduce((a, b) => a + b, 0) / by.get(x).length).toFixed(1)}`).join('');
      el('path', { d, class: 'meanline', fill: 'none' }, f.svg);
    }
    const g = el('g', { class: 'plot' }, f.svg);
    const tip = tooltip(container);
    points.forEach(p => {
      const c = el('circle', { cx: f.sx(p.x), cy: f.sy(p.y), r: 4, fill: p.color || color(0), class: 'point', 'fill-opacity': 0.75 }, g);
      c.addEventListener('mouseenter', ev => {
        tip.textContent = `${fmt(p.y)}  ${p.label || ''}`;
        tip.style.display = 'block';
        tip.style.left = Math.min(ev.clientX - container.getBoundingClientRect().left + 10, container.clientWidth - 220) + 'px';
        tip.style.top = '8px';
      });
      c.addEventListener('mouseleave', () => { tip.style.display = 'none'; });
      if (p.href) { c.style.cursor = 'pointer'; c.addEventListener('click', () => { location.hash = p.href; }); }
    });
    return f;
  }

  global.DrChart = { line, scatter, color, fmt, wantsLog };
})(window);
