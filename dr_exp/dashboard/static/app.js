/* The dr_exp dashboard: experiments, the job table, a job, a comparison, a sweep.

   One page, routed by the URL's #fragment. Data comes from a "source": the live one polls the
   dashboard's JSON API (with ETags, so an unchanged experiment costs the server a few stats);
   the static one reads the bundle that `dr_exp report` embeds in the same page. Every text
   that comes from the experiment is inserted as text, never as HTML. */
(function () {
  'use strict';
  const C = window.DrChart;
  const POLL_MS = 2000;
  const ROW_H = 28;
  const STATES = ['pending', 'running', 'completed', 'failed', 'cancelled'];

  // ---- small helpers --------------------------------------------------------------------------
  function h(tag, attrs, ...kids) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? '' : v);
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      node.append(kid instanceof Node ? kid : String(kid));
    }
    return node;
  }
  const enc = encodeURIComponent;
  const pad = n => String(n).padStart(2, '0');
  function fmtTime(ts) {
    if (!ts) return '-';
    const d = new Date(ts * 1000);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  function fmtDur(s) {
    if (s === null || s === undefined) return '-';
    s = Math.round(s);
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m${pad(s % 60)}s`;
    return `${Math.floor(s / 3600)}h${pad(Math.floor(s % 3600 / 60))}m`;
  }
  function fmtSize(n) {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  }
  const fmtInt = n => String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  function fmtVal(v) {
    if (v === null || v === undefined) return '-';
    if (typeof v === 'number') return Number.isInteger(v) ? String(v) : C.fmt(v);
    if (Array.isArray(v)) return v.join(',');
    if (typeof v === 'object') return JSON.stringify(v);
    return String(v);
  }
  const lowerIsBetter = m => /loss|err|perplex|time/i.test(m);
  function compare(a, b) {
    const na = a === null || a === undefined, nb = b === null || b === undefined;
    if (na || nb) return na && nb ? 0 : na ? 1 : -1;
    if (typeof a === 'number' && typeof b === 'number') return a - b;
    return String(a).localeCompare(String(b), undefined, { numeric: true });
  }
  function flatten(obj, prefix, out) {
    out = out || {};
    if (obj && typeof obj === 'object' && !Array.isArray(obj)) {
      for (const [k, v] of Object.entries(obj)) flatten(v, prefix ? `${prefix}.${k}` : k, out);
    } else out[prefix] = obj;
    return out;
  }
  const paramText = p => Object.entries(p || {}).map(([k, v]) => `${k}=${v}`).join(' ');

  // ---- data sources ---------------------------------------------------------------------------
  function liveSource() {
    const etags = new Map(), bodies = new Map();
    async function get(url) {
      const headers = {};
      if (etags.has(url)) headers['If-None-Match'] = etags.get(url);
      const r = await fetch(url, { headers, cache: 'no-store', credentials: 'same-origin' });
      if (r.status === 304) return { data: bodies.get(url), changed: false };
      const data = await r.json().catch(() => ({ error: `${r.status} ${r.statusText}` }));
      if (!r.ok) throw new Error(data.error || `${r.status} ${r.statusText}`);
      const tag = r.headers.get('ETag');
      if (tag) { etags.set(url, tag); bodies.set(url, data); }
      return { data, changed: true };
    }
    const job = (exp, id) => `api/experiments/${enc(exp)}/jobs/${enc(id)}`;
    return {
      live: true,
      info: () => get('api/info'),
      experiments: () => get('api/experiments'),
      table: exp => get(`api/experiments/${enc(exp)}/jobs`),
      job: (exp, id) => get(job(exp, id)),
      curves: (exp, id) => get(`${job(exp, id)}/curves`),
      log: (exp, id, offset) => get(`${job(exp, id)}/log` + (offset === null || offset === undefined ? '' : `?offset=${offset}`)),
      study: (exp, name) => get(`api/experiments/${enc(exp)}/studies/${enc(name)}`),
      async action(exp, id, what, body) {
        const r = await fetch(`${job(exp, id)}/${what}`, {
          method: 'POST', credentials: 'same-origin', cache: 'no-store',
          headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body || {}),
        });
        const data = await r.json().catch(() => ({}));
        if (!r.ok) throw new Error(data.error || `${r.status} ${r.statusText}`);
        return data;
      },
    };
  }

  function staticSource(b) {
    const ok = data => Promise.resolve({ data, changed: true });
    const missing = what => Promise.reject(new Error(`${what} is not in this report`));
    return {
      live: false,
      info: () => ok({ actions: false, static: true, generated_at: b.generated_at, experiment: b.experiment }),
      experiments: () => ok(b.experiments),
      table: exp => exp === b.experiment ? ok(b.table) : missing(`experiment ${exp}`),
      job: (exp, id) => b.jobs[id] ? ok(b.jobs[id]) : missing(`job ${id}`),
      curves: (exp, id) => b.curves[id] ? ok(b.curves[id]) : missing(`the curves of job ${id}`),
      log: (exp, id) => ok(b.logs[id] || { text: '', exists: false }),
      study: (exp, name) => (b.studies || {})[name] ? ok(b.studies[name]) : missing(`study ${name}`),
      action: () => Promise.reject(new Error('a report is read-only')),
    };
  }

  const bundleNode = document.getElementById('drexp-bundle');
  const BUNDLE = bundleNode ? JSON.parse(bundleNode.textContent) : null;
  const src = BUNDLE ? staticSource(BUNDLE) : liveSource();
  let INFO = { actions: false };

  // ---- the frame: header, status line, polling -----------------------------------------------
  const main = document.getElementById('main');
  const crumbs = document.getElementById('crumbs');
  const liveNote = document.getElementById('live');
  let current = null, timer = null, routes = 0;

  function setCrumbs(...parts) {
    crumbs.replaceChildren(...parts.flatMap(([text, href]) => [h('span', { class: 'sep', text: '/' }),
      href ? h('a', { href, text }) : h('span', { text })]));
  }
  function noteOk() {
    if (!src.live) return;
    liveNote.className = 'ok';
    liveNote.textContent = `live · ${fmtTime(Date.now() / 1000).slice(11)}`;
  }
  function noteErr(err) {
    liveNote.className = 'warn';
    liveNote.textContent = `not updating: ${err.message || err}`;
  }
  function fail(box, err) {
    box.replaceChildren(h('div', { class: 'error', text: String(err.message || err) }));
  }

  async function route() {
    const mine = ++routes;  // a view still loading when the user moves on must not touch the page
    if (timer) { clearInterval(timer); timer = null; }
    if (current && current.dispose) current.dispose();
    current = null;
    const raw = location.hash.replace(/^#\/?/, '');
    const [path, qs] = raw.split('?');
    const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
    const query = new URLSearchParams(qs || '');
    main.replaceChildren();
    let view = null;
    try {
      if (parts[0] === 'x' && parts.length === 2) view = await jobsView(parts[1], query);
      else if (parts[0] === 'x' && parts[2] === 'job' && parts[3]) view = await jobView(parts[1], parts[3]);
      else if (parts[0] === 'x' && parts[2] === 'compare' && parts[3]) view = await compareView(parts[1], parts[3].split(','));
      else if (parts[0] === 'x' && parts[2] === 'sweep' && parts[3]) view = await sweepView(parts[1], parts[3]);
      else if (parts[0] === 'x' && parts[2] === 'study' && parts[3]) view = await studyView(parts[1], parts[3]);
      else if (BUNDLE) { location.replace(`#/x/${enc(BUNDLE.experiment)}`); return; }
      else view = await experimentsView();
      if (mine !== routes) return;
      noteOk();
    } catch (err) {
      if (mine !== routes) return;
      fail(main, err);
      noteErr(err);
    }
    current = view;
    if (src.live && current && current.refresh) {
      timer = setInterval(async () => {
        if (document.hidden) return;
        try { await current.refresh(); noteOk(); } catch (err) { noteErr(err); }
      }, POLL_MS);
    }
  }

  function statusChip(state, n, active, onclick) {
    return h('button', { class: `chip st-${state}${active ? ' active' : ''}`, 'data-state': state, onclick },
      h('span', { class: 'dot' }), `${state} `, h('b', { text: fmtInt(n) }));
  }
  function progressText(p) {
    const parts = [];
    if (p.jobs_per_minute) parts.push(`${C.fmt(p.jobs_per_minute)} jobs/min`);
    if (p.pending + p.running === 0) parts.push('queue drained');
    else if (p.eta_seconds !== null && p.eta_seconds !== undefined) parts.push(`drains in ~${fmtDur(p.eta_seconds)}`);
    return parts.join(' · ');
  }

  // ---- experiments ---------------------------------------------------------------------------
  async function experimentsView() {
    setCrumbs();
    const box = h('section', { class: 'experiments' });
    main.append(h('h1', { text: 'Experiments' }), box);
    async function refresh() {
      const { data, changed } = await src.experiments();
      if (!changed) return;
      if (!data.length) {
        box.replaceChildren(h('p', { class: 'muted', text: 'No experiments under this base path yet. Submit a job and it appears here.' }));
        return;
      }
      box.replaceChildren(...data.map(e => h('a', { class: 'card', href: `#/x/${enc(e.name)}` },
        h('h2', { text: e.name }),
        h('div', { class: 'chips' }, STATES.map(s => statusChip(s, e[s] || 0, false, null))),
        h('div', { class: 'muted', text: `${fmtInt(e.total)} jobs · ${progressText(e)} · updated ${fmtTime(e.updated_at)}` }))));
    }
    await refresh();
    return { refresh };
  }

  // ---- the job table -------------------------------------------------------------------------
  const HIDDEN = new Set(['created_at', 'host']);
  const LABEL = { sweep_id: 'sweep', started_at: 'started', finished_at: 'finished', worker_id: 'worker', attempts: 'att', priority: 'prio' };

  async function jobsView(exp, query) {
    setCrumbs([exp, null]);
    const state = {
      status: new Set((query.get('status') || '').split(',').filter(Boolean)),
      tags: query.get('tags') || '', sweep: query.get('sweep') || '', q: query.get('q') || '',
      sort: query.get('sort') || '', desc: query.get('desc') === '1', selected: new Set(),
    };
    let table = null, idx = {}, cols = [], view = [];
    const chips = h('div', { class: 'chips' });
    const progress = h('span', { class: 'muted' });
    const count = h('span', { id: 'count', class: 'count' });
    const tagsIn = h('input', { type: 'search', placeholder: 'tags (all of)', value: state.tags, id: 'f-tags' });
    const qIn = h('input', { type: 'search', placeholder: 'search id or params', value: state.q, id: 'f-q' });
    const sweepSel = h('select', { id: 'f-sweep' });
    const compareBtn = h('button', { class: 'btn', disabled: true, id: 'compare' }, 'compare selected');
    const sweepLink = h('a', { class: 'btn', id: 'sweep-link', style: 'display:none' }, 'sweep page');
    const problems = h('div', { class: 'problems' });
    const wrap = h('div', { class: 'tablewrap' });
    const head = h('div', { class: 'thead' });
    const body = h('div', { class: 'tbody' });
    wrap.append(head, body);
    main.append(h('div', { class: 'bar' }, chips, progress),
      h('div', { class: 'bar controls' }, tagsIn, qIn, sweepSel, count, h('span', { class: 'grow' }), sweepLink, compareBtn),
      problems, wrap);

    function syncHash() {
      const q = new URLSearchParams();
      if (state.status.size) q.set('status', [...state.status].join(','));
      for (const k of ['tags', 'sweep', 'q', 'sort']) if (state[k]) q.set(k, state[k]);
      if (state.desc) q.set('desc', '1');
      const s = q.toString();
      history.replaceState(null, '', `#/x/${enc(exp)}${s ? '?' + s : ''}`);
    }
    const on = (node, ev, key) => node.addEventListener(ev, () => { state[key] = node.value.trim(); syncHash(); apply(); });
    on(tagsIn, 'input', 'tags');
    on(qIn, 'input', 'q');
    on(sweepSel, 'change', 'sweep');
    compareBtn.addEventListener('click', () => { location.hash = `#/x/${enc(exp)}/compare/${[...state.selected].join(',')}`; });

    function cellValue(row, key) {
      const v = row[idx[key]];
      if (key === 'duration' && v === null && row[idx.status] === 'running' && row[idx.started_at]) return Date.now() / 1000 - row[idx.started_at];
      return v;
    }
    function apply() {
      if (!table) return;
      const tags = state.tags.split(',').map(t => t.trim()).filter(Boolean);
      const q = state.q.toLowerCase();
      const pcols = table.columns.filter(c => c.kind === 'param').map(c => [c.key, idx[c.key]]);
      view = table.rows.filter(r => {
        if (state.status.size && !state.status.has(r[idx.status])) return false;
        if (state.sweep && r[idx.sweep_id] !== state.sweep) return false;
        if (tags.length && !tags.every(t => (r[idx.tags] || []).includes(t))) return false;
        if (q) {
          if (r[idx.id].startsWith(q)) return true;
          const text = pcols.map(([k, i]) => `${k}=${r[i]}`).join(' ').toLowerCase();
          return text.includes(q);
        }
        return true;
      });
      if (state.sort && state.sort in idx) {
        const i = idx[state.sort], dir = state.desc ? -1 : 1;
        view.sort((a, b) => {
          const va = state.sort === 'duration' ? cellValue(a, 'duration') : a[i];
          const vb = state.sort === 'duration' ? cellValue(b, 'duration') : b[i];
          if (va === null || va === undefined) return vb === null || vb === undefined ? 0 : 1;
          if (vb === null || vb === undefined) return -1;
          return dir * compare(va, vb);
        });
      }
      count.textContent = `${fmtInt(view.length)} of ${fmtInt(table.rows.length)} jobs`;
      chips.replaceChildren(...STATES.map(s => statusChip(s, table.counts[s] || 0, state.status.has(s), () => {
        if (state.status.has(s)) state.status.delete(s); else state.status.add(s);
        syncHash(); apply();
      })));
      sweepLink.style.display = state.sweep ? '' : 'none';
      sweepLink.setAttribute('href', `#/x/${enc(exp)}/sweep/${enc(state.sweep)}`);
      renderHead();
      renderRows();
    }

    function renderHead() {
      head.replaceChildren(h('div', { class: 'h sel' }), ...cols.map(c => h('div', {
        class: `h k-${c.kind}${state.sort === c.key ? ' sorted' + (state.desc ? ' desc' : '') : ''}`,
        'data-col': c.key, title: `${c.kind}: ${c.key} (click to sort)`,
        onclick: () => {
          if (state.sort !== c.key) { state.sort = c.key; state.desc = c.kind === 'metric' && !lowerIsBetter(c.key); }
          else if (state.desc === (c.kind === 'metric' && !lowerIsBetter(c.key))) state.desc = !state.desc;
          else { state.sort = ''; state.desc = false; }
          syncHash(); apply();
        },
      }, LABEL[c.key] || c.key)));
    }

    function cell(row, c) {
      const v = cellValue(row, c.key);
      const attrs = { class: `c k-${c.kind}`, 'data-col': c.key };
      switch (c.key) {
        case 'id': return h('div', attrs, h('a', { href: `#/x/${enc(exp)}/job/${v}`, text: v.slice(0, 8), title: v }));
        case 'status': return h('div', attrs, h('span', { class: `badge st-${v}`, text: v }));
        case 'sweep_id': return h('div', attrs, v ? h('a', { href: `#/x/${enc(exp)}/sweep/${enc(v)}`, text: v.slice(0, 8), title: v }) : '-');
        case 'created_at': case 'started_at': case 'finished_at': return h('div', attrs, fmtTime(v).slice(5));
        case 'duration': return h('div', attrs, fmtDur(v));
        case 'error': return h('div', { ...attrs, title: v || '' }, v || '');
        default: return h('div', { ...attrs, title: fmtVal(v) }, fmtVal(v));
      }
    }

    let pending = false;
    function renderRows() {
      pending = false;
      const top = wrap.scrollTop, height = wrap.clientHeight || 600;
      const first = Math.max(0, Math.floor(top / ROW_H) - 8);
      const last = Math.min(view.length, Math.ceil((top + height) / ROW_H) + 8);
      body.style.height = `${view.length * ROW_H}px`;
      const frag = document.createDocumentFragment();
      for (let i = first; i < last; i++) {
        const row = view[i], id = row[idx.id];
        const box = h('input', { type: 'checkbox', checked: state.selected.has(id), onchange: ev => {
          if (ev.target.checked) state.selected.add(id); else state.selected.delete(id);
          compareBtn.disabled = state.selected.size < 2;
          compareBtn.textContent = `compare selected (${state.selected.size})`;
        } });
        const line = h('div', { class: `jobrow st-${row[idx.status]}`, 'data-id': id, style: `top:${i * ROW_H}px` },
          h('div', { class: 'c sel' }, box), cols.map(c => cell(row, c)));
        frag.appendChild(line);
      }
      body.replaceChildren(frag);
    }
    wrap.addEventListener('scroll', () => { if (!pending) { pending = true; requestAnimationFrame(renderRows); } });

    function fit() {
      const top = wrap.getBoundingClientRect().top;
      wrap.style.height = `${Math.max(260, window.innerHeight - top - 12)}px`;
    }
    window.addEventListener('resize', fit);

    function widths() {
      const sample = table.rows.slice(0, 300);
      const px = cols.map(c => {
        let n = (LABEL[c.key] || c.key).length + 2;
        if (c.key === 'id' || c.key === 'sweep_id') n = 10;
        else if (c.key.endsWith('_at')) n = 15;
        else if (c.key === 'error') n = 40;
        else for (const r of sample) n = Math.max(n, Math.min(28, fmtVal(r[idx[c.key]]).length + 1));
        return Math.round(n * 7.4 + 14);
      });
      const template = ['30px', ...px.map(p => `${p}px`)].join(' ');
      wrap.style.setProperty('--cols', template);
      const total = 30 + px.reduce((a, b) => a + b, 0);
      head.style.minWidth = body.style.minWidth = `${total}px`;
    }

    async function refresh() {
      const { data, changed } = await src.table(exp);
      if (!changed && table) { if (table.counts.running) renderRows(); return; }
      const firstTime = !table;
      table = data;
      idx = {};
      table.columns.forEach((c, i) => { idx[c.key] = i; });
      cols = table.columns.filter(c => !HIDDEN.has(c.key));
      // id and status, then what a researcher compares (parameters, metrics), then the rest.
      const rank = c => (c.key === 'id' || c.key === 'status' ? 0 : c.kind === 'param' ? 1 : c.kind === 'metric' ? 2 : 3);
      cols.sort((a, b) => rank(a) - rank(b));
      const sweeps = table.sweeps || [];
      sweepSel.replaceChildren(h('option', { value: '', text: 'all sweeps' }),
        ...sweeps.map(s => h('option', { value: s.id, text: `sweep ${s.id.slice(0, 8)} (${s.jobs})`, selected: s.id === state.sweep })));
      progress.textContent = progressText(table.progress);
      problems.replaceChildren(...(table.problems || []).map(p => h('div', { class: 'warn', text: p })));
      widths();
      if (firstTime) fit();
      apply();
    }
    await refresh();
    fit();
    renderRows();
    return { refresh, dispose: () => window.removeEventListener('resize', fit) };
  }

  // ---- one job --------------------------------------------------------------------------------
  function sortMetrics(names) {
    const rank = m => (m.startsWith('val') ? 0 : m.startsWith('test') ? 1 : m.startsWith('train') ? 2 : 3);
    return [...names].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
  }

  function chartGrid(box, series, xLabel, stages, colorOf) {
    const names = sortMetrics(Object.keys(series));
    box.replaceChildren(...names.map(m => h('div', { class: 'chart', 'data-metric': m })));
    names.forEach((m, i) => {
      const [xs, ys] = series[m];
      const markers = (stages || []).slice(1).map(s => ({ x: s[xLabel], label: s.name }));
      C.line(box.children[i], [{ name: m, xs, ys, color: colorOf ? colorOf(m) : C.color(i) }],
        { title: m, xLabel, height: 220, markers, dots: xs.length <= 60 });
    });
  }

  async function jobView(exp, id) {
    setCrumbs([exp, `#/x/${enc(exp)}`], [`job ${id.slice(0, 8)}`, null]);
    const headBox = h('div', { class: 'jobhead' });
    const actions = h('div', { class: 'actions' });
    const facts = h('dl', { class: 'facts' });
    const errorBox = h('div');
    const charts = h('div', { class: 'charts', id: 'curves' });
    const stepCharts = h('div', { class: 'charts' });
    const stepBox = h('details', { class: 'section' }, h('summary', { text: 'per-step metrics' }), stepCharts);
    const logPre = h('pre', { class: 'log', id: 'log' });
    const logState = h('span', { class: 'muted small', id: 'logstate' });
    const history = h('div');
    const ckpts = h('div');
    const events = h('div');
    const config = h('pre', { class: 'config' });
    main.append(headBox, actions, facts, errorBox,
      h('h2', { text: 'Curves' }), charts, stepBox,
      h('h2', { text: 'Log' }, logState), logPre,
      h('div', { class: 'cols2' }, h('div', {}, h('h2', { text: 'History' }), history),
        h('div', {}, h('h2', { text: 'Checkpoints' }), ckpts)),
      h('details', { class: 'section' }, h('summary', { text: 'events' }), events),
      h('details', { class: 'section', open: true }, h('summary', { text: 'config' }), config));
    let job = null, logOffset = null, logDone = false;

    function renderJob() {
      const r = job.record;
      headBox.replaceChildren(h('h1', {}, h('span', { class: `badge st-${r.status}`, text: r.status }), ' ', h('code', { text: r.id })),
        h('div', { class: 'params' }, Object.entries(job.params).map(([k, v]) => h('span', { class: 'param', text: `${k}=${v}` })),
          (r.tags || []).map(t => h('span', { class: 'tag', text: t })),
          r.sweep_id ? h('a', { class: 'tag', href: `#/x/${enc(exp)}/sweep/${enc(r.sweep_id)}`, text: `sweep ${r.sweep_id}` }) : null,
          r.study ? h('a', { class: 'tag', href: `#/x/${enc(exp)}/study/${enc(r.study.name)}`, text: `trial ${r.study.trial} of study ${r.study.name}` }) : null));
      const dur = r.started_at ? (r.finished_at || Date.now() / 1000) - r.started_at : null;
      const rows = [['priority', r.priority], ['attempts', `${r.attempts} of ${r.max_attempts}` + (r.preemptions ? ` (${r.preemptions} pre-empted)` : '')],
        ['worker', r.worker_id], ['host', r.host], ['created', fmtTime(r.created_at)], ['started', fmtTime(r.started_at)],
        ['finished', fmtTime(r.finished_at)], ['duration', fmtDur(dur)], ['run dir', job.run_dir],
        ['config', r.config_name || '-', r.config_path ? `${r.config_path}/${r.config_name}.yaml` : null], ['overrides', (r.overrides || []).join(' ') || '-'],
        ['resume from', r.resume_from]];
      const result = flatten((r.result || {}).metrics || {});
      for (const [k, v] of Object.entries(result)) rows.push([k, fmtVal(v)]);
      facts.replaceChildren(...rows.filter(([, v]) => v !== null && v !== undefined && v !== '')
        .flatMap(([k, v, title]) => [h('dt', { text: k }), h('dd', { text: String(v), title })]));
      if (r.error || job.error_text) {
        const e = r.error || {};
        errorBox.replaceChildren(h('div', { class: 'errorbox' }, h('b', { text: `${e.type || 'error'}: ` }), e.message || '',
          job.error_text ? h('pre', { text: job.error_text }) : null));
      } else errorBox.replaceChildren();
      history.replaceChildren(h('table', { class: 'small' }, h('tr', {}, h('th', { text: 'time' }), h('th', { text: 'change' }), h('th', { text: 'why' })),
        (r.history || []).map(x => h('tr', {}, h('td', { text: fmtTime(x.time || x.at) }), h('td', { text: `${x.from || ''} → ${x.to || x.status || ''}` }), h('td', { text: x.reason || '' })))));
      ckpts.replaceChildren(job.checkpoints.length ? h('table', { class: 'small' }, h('tr', {}, h('th', { text: 'file' }), h('th', { text: 'size' }), h('th', { text: 'written' })),
        job.checkpoints.map(c => h('tr', {}, h('td', {}, h('code', { text: c.path })), h('td', { text: fmtSize(c.size) }), h('td', { text: fmtTime(c.mtime) }))))
        : h('p', { class: 'muted', text: 'no checkpoints' }));
      events.replaceChildren(h('table', { class: 'small' }, (job.events || []).slice().reverse().map(ev => {
        const rest = Object.fromEntries(Object.entries(ev).filter(([k]) => !['time', 'event', 'job_id', 'worker_id'].includes(k)));
        return h('tr', {}, h('td', { text: fmtTime(ev.time) }), h('td', { text: ev.event }), h('td', {}, h('code', { text: JSON.stringify(rest) })));
      })));
      config.textContent = JSON.stringify(r.config, null, 2);
      actions.replaceChildren();
      if (INFO.actions && src.live) {
        const msg = h('span', { class: 'muted', id: 'actionmsg' });
        const act = (what, body) => async () => {
          try { await src.action(exp, id, what, body && body()); msg.textContent = `${what}: done`; await refresh(); } catch (err) { msg.textContent = `${what}: ${err.message}`; }
        };
        const prio = h('input', { type: 'number', min: 0, max: 1000, value: r.priority, class: 'prio' });
        if (['pending', 'running'].includes(r.status)) actions.append(h('button', { class: 'btn danger', id: 'act-cancel', onclick: act('cancel') }, 'cancel'));
        if (['failed', 'cancelled'].includes(r.status)) actions.append(h('button', { class: 'btn', id: 'act-retry', onclick: act('retry') }, 'retry'));
        actions.append(prio, h('button', { class: 'btn', id: 'act-priority', onclick: act('priority', () => ({ priority: Number(prio.value) })) }, 'set priority'), msg);
      }
    }

    async function refreshLog() {
      if (logDone) return;
      const { data } = await src.log(exp, id, logOffset);
      const atBottom = logPre.scrollTop + logPre.clientHeight >= logPre.scrollHeight - 4;
      if (logOffset === null) logPre.textContent = data.text;
      else if (data.cut) logPre.textContent = data.text;
      else if (data.text) logPre.append(data.text);
      if (logPre.textContent.length > 400000) logPre.textContent = logPre.textContent.slice(-300000);
      logOffset = data.offset;
      const finished = !['running', 'pending'].includes(job.record.status);
      logPre.style.display = data.exists ? '' : 'none';
      logState.textContent = !data.exists ? ' (no train.log yet)' : finished ? ' (job finished)' : ' (following)';
      if (atBottom) logPre.scrollTop = logPre.scrollHeight;
      if (finished && !src.live) logDone = true;
    }

    async function refresh() {
      const j = await src.job(exp, id);
      const before = job && job.record.status;
      if (j.changed || !job) { job = j.data; renderJob(); }
      const c = await src.curves(exp, id);
      if (c.changed) {
        const epoch = c.data.epoch || {}, step = c.data.step || {};
        if (Object.keys(epoch).length) chartGrid(charts, epoch, 'epoch', c.data.stages);
        else charts.replaceChildren(h('p', { class: 'muted', text: 'no per-epoch metrics yet' }));
        stepBox.style.display = Object.keys(step).length ? '' : 'none';
        if (Object.keys(step).length) chartGrid(stepCharts, step, 'step', c.data.stages);
      }
      await refreshLog();
      if (before && before !== job.record.status && ['completed', 'failed', 'cancelled'].includes(job.record.status)) await refreshLog();
    }
    await refresh();
    return { refresh };
  }

  // ---- compare --------------------------------------------------------------------------------
  async function compareView(exp, ids) {
    setCrumbs([exp, `#/x/${enc(exp)}`], [`compare ${ids.length} jobs`, null]);
    const legend = h('div', { class: 'legend' });
    const charts = h('div', { class: 'charts', id: 'compare-curves' });
    const diff = h('div', { id: 'config-diff' });
    const allKeys = h('input', { type: 'checkbox', id: 'diff-all' });
    main.append(h('h1', { text: `Compare ${ids.length} jobs` }), legend, h('h2', { text: 'Curves' }), charts,
      h('h2', {}, 'Config ', h('label', { class: 'muted small' }, allKeys, ' all keys')), diff);
    const jobs = (await Promise.all(ids.map(id => src.job(exp, id)))).map(r => r.data);
    const flat = jobs.map(j => flatten(j.record.config));
    const keys = [...new Set(flat.flatMap(f => Object.keys(f)))].sort();
    const differs = k => new Set(flat.map(f => JSON.stringify(f[k]))).size > 1;
    const pkeys = [...new Set(jobs.flatMap(j => Object.keys(j.params)))];
    const varying = pkeys.filter(k => new Set(jobs.map(j => String(j.params[k]))).size > 1);
    const label = j => varying.map(k => `${k}=${j.params[k]}`).join(' ') || j.id.slice(0, 8);
    legend.replaceChildren(...jobs.map((j, i) => h('a', { class: 'legenditem', href: `#/x/${enc(exp)}/job/${j.id}` },
      h('span', { class: 'swatch', style: `background:${C.color(i)}` }), `${j.id.slice(0, 8)} ${label(j)} (${j.record.status})`)));
    function renderDiff() {
      const shown = allKeys.checked ? keys : keys.filter(differs);
      diff.replaceChildren(shown.length ? h('table', { class: 'small diff' },
        h('tr', {}, h('th', { text: 'key' }), jobs.map((j, i) => h('th', {}, h('span', { class: 'swatch', style: `background:${C.color(i)}` }), j.id.slice(0, 8)))),
        shown.map(k => h('tr', { class: differs(k) ? 'differs' : '' }, h('td', {}, h('code', { text: k })),
          flat.map(f => h('td', { text: f[k] === undefined ? '—' : fmtVal(f[k]) })))))
        : h('p', { class: 'muted', text: 'the configs are identical' }));
    }
    allKeys.addEventListener('change', renderDiff);
    renderDiff();
    async function refresh() {
      const curves = await Promise.all(ids.map(id => src.curves(exp, id)));
      if (!curves.some(c => c.changed) && charts.children.length) return;
      const metrics = sortMetrics([...new Set(curves.flatMap(c => Object.keys(c.data.epoch || {})))]);
      charts.replaceChildren(...metrics.map(m => h('div', { class: 'chart', 'data-metric': m })));
      metrics.forEach((m, i) => {
        const series = curves.map((c, k) => {
          const s = (c.data.epoch || {})[m];
          return s ? { name: `${jobs[k].id.slice(0, 8)} ${label(jobs[k])}`, xs: s[0], ys: s[1], color: C.color(k) } : null;
        }).filter(Boolean);
        C.line(charts.children[i], series, { title: m, xLabel: 'epoch', height: 240 });
      });
    }
    await refresh();
    return { refresh };
  }

  // ---- a sweep --------------------------------------------------------------------------------
  async function sweepView(exp, sid) {
    setCrumbs([exp, `#/x/${enc(exp)}?sweep=${enc(sid)}`], [`sweep ${sid.slice(0, 8)}`, null]);
    const metricSel = h('select', { id: 'sweep-metric' });
    const dirSel = h('select', { id: 'sweep-dir' }, h('option', { value: 'max', text: 'higher is better' }), h('option', { value: 'min', text: 'lower is better' }));
    const summary = h('div', { class: 'muted' });
    const paramCharts = h('div', { class: 'charts', id: 'sweep-params' });
    const best = h('div', { class: 'chart', id: 'best-so-far' });
    const top = h('div');
    const studies = h('span');
    main.append(h('h1', {}, 'Sweep ', h('code', { text: sid })), summary,
      h('div', { class: 'bar controls' }, 'metric ', metricSel, dirSel, h('a', { class: 'btn', href: `#/x/${enc(exp)}?sweep=${enc(sid)}`, text: 'jobs of this sweep' }), studies),
      h('h2', { text: 'Metric against each parameter' }), paramCharts,
      h('h2', { text: 'Best so far (in order of finishing)' }), h('div', { class: 'charts one' }, best),
      h('h2', { text: 'Best jobs' }), top);
    let table = null;
    metricSel.addEventListener('change', () => { dirSel.value = lowerIsBetter(metricSel.value) ? 'min' : 'max'; render(); });
    dirSel.addEventListener('change', render);

    function render() {
      const idx = {};
      table.columns.forEach((c, i) => { idx[c.key] = i; });
      const rows = table.rows.filter(r => r[idx.sweep_id] === sid);
      const info = (table.sweeps || []).find(s => s.id === sid) || { params: [] };
      studies.replaceChildren(...(info.studies || []).map(n => h('a', { class: 'btn', href: `#/x/${enc(exp)}/study/${enc(n)}`, text: `study ${n}` })));
      const metrics = table.columns.filter(c => c.kind === 'metric' && rows.some(r => typeof r[idx[c.key]] === 'number')).map(c => c.key);
      if (!rows.length) throw new Error(`no sweep ${sid} in experiment ${exp}`);
      if (!metricSel.options.length || [...metricSel.options].map(o => o.value).join() !== metrics.join()) {
        const keep = metricSel.value;
        const pick = metrics.includes(keep) ? keep : metrics.includes('val/acc') ? 'val/acc' : metrics[0];
        metricSel.replaceChildren(...metrics.map(m => h('option', { value: m, text: m, selected: m === pick })));
        if (!keep && pick) dirSel.value = lowerIsBetter(pick) ? 'min' : 'max';
      }
      const m = metricSel.value, sign = dirSel.value === 'min' ? -1 : 1;
      const counts = {};
      rows.forEach(r => { counts[r[idx.status]] = (counts[r[idx.status]] || 0) + 1; });
      summary.textContent = `${rows.length} jobs · ` + STATES.filter(s => counts[s]).map(s => `${s} ${counts[s]}`).join(' · ') +
        ` · parameters: ${info.params.join(', ') || '-'}`;
      const params = info.params.length ? info.params : table.columns.filter(c => c.kind === 'param').map(c => c.key);
      const label = r => params.map(p => `${p}=${r[idx[p]]}`).join(' ');
      const scored = m ? rows.filter(r => typeof r[idx[m]] === 'number') : [];
      paramCharts.replaceChildren(...params.map(p => h('div', { class: 'chart', 'data-param': p })));
      params.forEach((p, i) => {
        const values = scored.map(r => r[idx[p]]);
        const numeric = values.every(v => typeof v === 'number');
        const cats = numeric ? null : [...new Set(values.map(String))].sort((a, b) => compare(a, b));
        const points = scored.map(r => ({ x: numeric ? r[idx[p]] : cats.indexOf(String(r[idx[p]])), y: r[idx[m]], label: label(r),
          href: `#/x/${enc(exp)}/job/${r[idx.id]}`, color: C.color(0) }));
        C.scatter(paramCharts.children[i], points, { title: `${m} vs ${p}`, xLabel: p, yLabel: m, categories: cats,
          logX: numeric && C.wantsLog(values), means: true, height: 240, empty: `no job has ${m} yet` });
      });
      const done = scored.filter(r => r[idx.finished_at]).sort((a, b) => a[idx.finished_at] - b[idx.finished_at]);
      let run = null;
      const ys = done.map(r => { const v = r[idx[m]]; run = run === null || sign * v > sign * run ? v : run; return run; });
      const lines = [{ name: `best ${m}`, xs: done.map((_, i) => i + 1), ys, color: C.color(2) }];
      if (done.length <= 300) lines.push({ name: m, xs: done.map((_, i) => i + 1), ys: done.map(r => r[idx[m]]), color: '#bbb', dashed: true });
      C.line(best, lines, { title: `best ${m} so far`, xLabel: 'jobs finished', yLabel: m, height: 240, dots: true });
      const ranked = scored.slice().sort((a, b) => sign * (b[idx[m]] - a[idx[m]])).slice(0, 10);
      top.replaceChildren(h('table', { class: 'small', id: 'best-jobs' }, h('tr', {}, ['#', m, 'params', 'status', 'job'].map(t => h('th', { text: t }))),
        ranked.map((r, i) => h('tr', {}, h('td', { text: i + 1 }), h('td', { text: fmtVal(r[idx[m]]) }), h('td', { text: label(r) }),
          h('td', {}, h('span', { class: `badge st-${r[idx.status]}`, text: r[idx.status] })),
          h('td', {}, h('a', { href: `#/x/${enc(exp)}/job/${r[idx.id]}`, text: r[idx.id].slice(0, 8) }))))));
    }
    async function refresh() {
      const { data, changed } = await src.table(exp);
      if (!changed && table) return;
      table = data;
      render();
    }
    await refresh();
    return { refresh };
  }

  async function studyView(exp, name) {
    setCrumbs([exp, `#/x/${enc(exp)}`], [`study ${name}`, null]);
    const summary = h('div', { class: 'muted', id: 'study-summary' });
    const best = h('div', { id: 'study-best' });
    const history = h('div', { class: 'chart', id: 'study-history' });
    const trials = h('div');
    const importances = h('div', { id: 'study-importances' });
    main.append(h('h1', {}, 'Study ', h('code', { text: name })), summary, best,
      h('h2', { text: 'Trials' }), h('div', { class: 'charts one' }, history), trials,
      h('h2', { text: 'Parameter importances' }), importances);

    function render(s) {
      const set = s.settings, params = set.space.map(p => p.name);
      const counts = Object.entries(s.counts).filter(([, n]) => n).map(([k, n]) => `${k} ${n}`).join(' · ');
      summary.textContent = `${set.mode} ${set.metric} · sampler ${set.sampler} · pruner ${set.pruner} · ` +
        `${s.trials.length}/${set.trials} trials asked` + (counts ? ` · ${counts}` : '') + ` · sweep ${set.sweep_id}`;
      const label = t => params.map(k => `${k}=${fmtVal(t.params[k])}`).join(' ');
      const jobLink = t => t.job_id ? h('a', { href: `#/x/${enc(exp)}/job/${t.job_id}`, text: t.job_id.slice(0, 8) }) : '-';
      best.replaceChildren(s.best
        ? h('p', {}, 'best: trial ', h('b', { text: s.best.number }), ` · ${set.metric} ${fmtVal(s.best.value)} · ${label(s.best)} · job `, jobLink(s.best))
        : h('p', { class: 'muted', text: 'no complete trial yet' }));
      const done = s.trials.filter(t => t.state === 'complete' && typeof t.value === 'number');
      const sign = set.mode === 'min' ? -1 : 1;
      let run = null;
      const bestSoFar = done.map(t => { run = run === null || sign * t.value > sign * run ? t.value : run; return run; });
      C.line(history, [{ name: set.metric, xs: done.map(t => t.number), ys: done.map(t => t.value), color: '#bbb', dashed: true },
        { name: `best ${set.metric}`, xs: done.map(t => t.number), ys: bestSoFar, color: C.color(2) }],
      { title: `${set.metric} of each complete trial, and the best so far`, xLabel: 'trial', yLabel: set.metric, height: 240, dots: true });
      trials.replaceChildren(h('table', { class: 'small', id: 'study-trials' },
        h('tr', {}, ['trial', 'state', set.metric, 'epochs', ...params, 'job'].map(t => h('th', { text: t }))),
        s.trials.map(t => h('tr', { class: 'trialrow', 'data-state': t.state },
          h('td', { text: t.number }), h('td', {}, h('span', { class: `badge st-${t.state}`, text: t.state })),
          h('td', { text: fmtVal(t.value) }), h('td', { text: Object.keys(t.intermediate || {}).length }),
          params.map(k => h('td', { text: fmtVal(t.params[k]) })), h('td', {}, jobLink(t))))));
      const ranked = Object.entries(s.importances || {});
      importances.replaceChildren(ranked.length
        ? h('table', { class: 'small' }, ranked.map(([k, v]) => h('tr', { class: 'importance', 'data-param': k }, h('td', { text: k }),
          h('td', {}, h('div', { class: 'impbar', style: `width: ${Math.round(240 * v)}px` })), h('td', { text: v.toFixed(2) }))))
        : h('p', { class: 'muted', text: 'Optuna computes them once 4 trials are complete' }));
    }
    let shown = false;
    async function refresh() {
      const { data, changed } = await src.study(exp, name);
      if (!changed && shown) return;  // a 304 on a page opened again still has to be drawn once
      render(data);
      shown = true;
    }
    await refresh();
    return { refresh };
  }

  // ---- start ----------------------------------------------------------------------------------
  async function start() {
    if (!src.live) {
      liveNote.className = 'static';
      liveNote.textContent = `report · generated ${fmtTime(BUNDLE.generated_at)} · static`;
    }
    if (location.search.includes('token=')) history.replaceState(null, '', location.pathname + location.hash);
    try { INFO = (await src.info()).data; } catch (err) { noteErr(err); }
    window.addEventListener('hashchange', route);
    await route();
    document.body.dataset.ready = '1';
  }
  start();
})();
