// jobstream dashboard: plain JavaScript, no framework, no build step.
// Everything a job wrote (log lines, params, errors) reaches the page as
// text nodes only (textContent), never as HTML.
'use strict';

const PAGE_SIZE = 50;            // jobs per list page
const MAX_LOG_LINES = 20000;     // log lines a job page keeps
const RESULTS_SHOWN = 100;       // per-item results listed on a job page
const STATS_SAMPLE = 1000;       // newest jobs the charts are drawn from
const STATES = ['QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED', 'INTERRUPTED'];
const TERMINAL = new Set(['SUCCEEDED', 'FAILED', 'CANCELLED', 'INTERRUPTED']);
const LEVELS = ['DEBUG', 'INFO', 'WARNING', 'ERROR'];
const FLUSH_MS = 100;            // how often a busy job page redraws
const TAIL_EVENTS = 20000;       // a job page follows from this many events before the end
const HEAD_LINES = 1000;         // lines "Jump to start" loads from the beginning
const WORKERS_MS = 5000;         // how often worker presence is read again (it is not streamed)

// ---------------------------------------------------------------- helpers

// el('div', {class: 'x', onclick: f}, 'text', child): strings become text nodes.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function $(id) { return document.getElementById(id); }
function num(value) { return Number(value || 0); }
function state(job) { return (job.state || 'JOB_STATE_UNSPECIFIED').replace('JOB_STATE_', ''); }
function ms(time) { return time ? Date.parse(time) : 0; }

function duration(seconds) {
  if (!isFinite(seconds) || seconds < 0) return '';
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} m ${Math.round(seconds % 60)} s`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} m`;
  return `${Math.floor(seconds / 86400)} d ${Math.round((seconds % 86400) / 3600)} h`;
}

function age(job) { return duration((Date.now() - ms(job.createTime)) / 1000); }

function runTime(job) {
  if (!job.startTime) return '';
  const end = job.endTime ? ms(job.endTime) : Date.now();
  return duration((end - ms(job.startTime)) / 1000);
}

function fraction(job) {
  const p = job.progress || {};
  if (p.fraction) return p.fraction;
  if (num(p.total) > 0) return num(p.done) / num(p.total);
  return state(job) === 'SUCCEEDED' ? 1 : 0;
}

function progressBar(job) {
  const f = fraction(job);
  return el('span', {class: 'progress'},
    el('progress', {max: 1, value: f}), ` ${Math.floor(f * 100)} %`);
}

function badge(job) {
  const s = state(job);
  return el('span', {class: `state state-${s.toLowerCase()}`}, s.toLowerCase(),
    job.cancelRequested && !TERMINAL.has(s) ? ' (cancelling)' : '');
}

// Every worker the servers list (seen in the last hour), live or not.
async function listWorkers() {
  const workers = [];
  let token = '';
  do {
    const q = new URLSearchParams({pageSize: 1000});
    if (token) q.set('pageToken', token);
    const data = await api('GET', `/v1/workers?${q}`);
    workers.push(...(data.workers || []));
    token = data.nextPageToken || '';
  } while (token);
  return workers;
}

// For a queued job no live worker takes (its kind on its queue): why it
// waits, as `jobstream get` says it; '' otherwise.
function unserved(job, workers) {
  if (state(job) !== 'QUEUED') return '';
  const queue = job.queue || 'default';
  const served = workers.some((w) => w.live && (w.kinds || []).includes(job.kind) && (w.queues || []).includes(queue));
  return served ? '' : `no live worker serves kind ${job.kind} on queue ${queue}`;
}

function flash(text, kind) {
  const box = $('flash');
  box.textContent = text;
  box.className = `flash ${kind || 'error'}`;
  box.hidden = !text;
}

function setLive(text, kind) {
  const pill = $('live');
  pill.textContent = text;
  pill.className = `live ${kind}`;
}

// One API call; a 401 sends the browser to the sign-in page.
async function api(method, path, body) {
  const init = {method, credentials: 'same-origin', headers: {}};
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers['Content-Type'] = 'application/json';
  }
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({}));
  if (response.status === 401) {
    window.location.assign('/signin');
    throw new Error('sign in first');
  }
  if (!response.ok) throw new Error(data.message || `${response.status} ${response.statusText}`);
  return data;
}

function jobPath(id) { return `/v1/jobs/${encodeURIComponent(id)}`; }

// An EventSource that reports its state in the header pill. The browser
// reconnects by itself, sending Last-Event-ID, so nothing is lost or repeated.
function follow(url, handlers) {
  const source = new EventSource(url);
  source.addEventListener('open', () => setLive('live', 'ok'));
  source.addEventListener('error', () => {
    if (source.readyState !== EventSource.CLOSED) setLive('reconnecting…', 'warn');
    else setLive('disconnected', 'bad');
  });
  source.addEventListener('reconnecting', () => setLive('reconnecting…', 'warn'));
  for (const [name, handler] of Object.entries(handlers)) {
    source.addEventListener(name, (event) => handler(JSON.parse(event.data), event));
  }
  source.addEventListener('rpc-error', (event) => {
    source.close();
    setLive('stopped', 'bad');
    flash(JSON.parse(event.data).message);
  });
  return source;
}

// Asks before doing something that cannot be undone; resolves true on yes.
function confirmAction(title, items, note, yes) {
  const dialog = $('confirm');
  $('confirm-title').textContent = title;
  $('confirm-list').replaceChildren(...items.map((item) => el('li', {}, item)));
  $('confirm-note').textContent = note;
  $('confirm-yes').textContent = yes;
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), {once: true});
    dialog.showModal();
  });
}

// ---------------------------------------------------------------- router

let current = null;  // the view on screen: {close()}

function route() {
  if (current) current.close();
  flash('');
  setLive('', '');
  const hash = window.location.hash.slice(1) || '/';
  const [path, query] = hash.split('?');
  const params = new URLSearchParams(query || '');
  const view = $('view');
  view.replaceChildren();
  if (path.startsWith('/jobs/')) current = jobView(view, decodeURIComponent(path.slice(6)));
  else if (path === '/submit') current = submitView(view);
  else if (path === '/stats') current = statsView(view, params);
  else if (path === '/workers') current = workersView(view);
  else current = listView(view, params);
}

window.addEventListener('hashchange', route);
window.addEventListener('DOMContentLoaded', route);

// ---------------------------------------------------------------- job list

function listView(view, params) {
  const filter = {state: params.get('state') || '', kind: params.get('kind') || '',
    label: params.get('label') || ''};
  const tokens = [''];  // page tokens: tokens[i] opens page i
  let page = 0;
  let jobs = new Map();  // id -> job, in display order
  const selected = new Set();
  let source = null;
  let workers = null;  // null until read: no job is marked before then
  const body = el('tbody');
  const pager = el('span', {class: 'pager-info'});

  function query(extra) {
    const q = new URLSearchParams(extra);
    if (filter.kind) q.append('filter.kinds', filter.kind);
    if (filter.label.includes('=')) {
      const [key, ...rest] = filter.label.split('=');
      q.append(`filter.labels[${key}]`, rest.join('='));
    }
    return q;
  }

  function matches(job) {
    return !filter.state || state(job) === filter.state;
  }

  function row(job) {
    const id = job.id;
    const box = el('input', {type: 'checkbox', 'aria-label': `select ${id}`, checked: selected.has(id),
      onchange: (e) => { if (e.target.checked) selected.add(id); else selected.delete(id); }});
    return el('tr', {'data-id': id},
      el('td', {}, box),
      el('td', {class: 'id'}, el('a', {href: `#/jobs/${encodeURIComponent(id)}`}, id)),
      el('td', {}, job.kind),
      el('td', {}, badge(job), unservedMark(job)),
      el('td', {}, progressBar(job)),
      el('td', {class: 'phase'}, (job.progress || {}).phase || ''),
      el('td', {class: 'num'}, `${job.attempt || 0}/${job.maxAttempts || 0}`),
      el('td', {class: 'age'}, age(job)),
      el('td', {class: 'dur'}, runTime(job)));
  }

  function unservedMark(job) {
    const why = workers ? unserved(job, workers) : '';
    return why ? el('span', {class: 'unserved', title: why}, 'no worker') : '';
  }

  async function loadWorkers() {
    try {
      const seen = await listWorkers();
      const before = JSON.stringify(workers);
      workers = seen;
      if (JSON.stringify(workers) !== before) render();
    } catch (error) { flash(error.message); }
  }

  function render() {
    body.replaceChildren(...[...jobs.values()].map(row));
    pager.textContent = jobs.size ? `page ${page + 1}` : 'no jobs';
  }

  function upsert(job) {
    const existing = body.querySelector(`tr[data-id="${CSS.escape(job.id)}"]`);
    if (existing) {
      if (!matches(job)) { existing.classList.add('gone'); return; }
      jobs.set(job.id, job);
      existing.replaceWith(row(job));
      return;
    }
    // A job not on screen: new ones appear at the top of the first page.
    if (page !== 0 || !matches(job)) return;
    const newest = jobs.values().next().value;
    if (newest && ms(job.createTime) < ms(newest.createTime)) return;
    jobs = new Map([[job.id, job], ...jobs]);
    if (jobs.size > PAGE_SIZE) jobs.delete([...jobs.keys()].pop());
    render();
  }

  async function load() {
    const q = query({pageSize: PAGE_SIZE});
    if (filter.state) q.append('filter.states', `JOB_STATE_${filter.state}`);
    if (tokens[page]) q.set('pageToken', tokens[page]);
    try {
      const data = await api('GET', `/v1/jobs?${q}`);
      jobs = new Map((data.jobs || []).map((j) => [j.id, j]));
      tokens[page + 1] = data.nextPageToken || '';
      older.disabled = !data.nextPageToken;
      newer.disabled = page === 0;
      render();
    } catch (error) { flash(error.message); }
  }

  // Live: only what changes from now on (skipListing); the page itself
  // comes from ListJobs, so 100,000 jobs cost one page.
  function watch() {
    const q = query({skipListing: 'true'});
    source = follow(`/v1/jobs:watch?${q}`, {
      job: upsert,
      deleted: (data) => {
        body.querySelector(`tr[data-id="${CSS.escape(data.jobId)}"]`)?.remove();
        jobs.delete(data.jobId);
        selected.delete(data.jobId);
      },
    });
  }

  async function act(kind) {
    const ids = [...selected].filter((id) => jobs.has(id));
    if (!ids.length) { flash('select jobs first'); return; }
    const items = ids.map((id) => `${id} (${jobs.get(id).kind}, ${state(jobs.get(id)).toLowerCase()})`);
    const deleting = kind === 'delete';
    const ok = await confirmAction(
      deleting ? `Delete ${ids.length} job${ids.length > 1 ? 's' : ''}?` : `Cancel ${ids.length} job${ids.length > 1 ? 's' : ''}?`,
      items,
      deleting ? 'Each job is removed with its events, logs, results, steps, artifacts and files. Running jobs are cancelled first. This cannot be undone.'
        : 'Queued jobs end at once; running ones are asked to stop.',
      deleting ? 'Delete' : 'Cancel jobs');
    if (!ok) return;
    const failed = [];
    for (const id of ids) {
      try {
        if (deleting) await api('DELETE', `${jobPath(id)}?force=true&allowMissing=true`);
        else await api('POST', `${jobPath(id)}:cancel`, {reason: 'cancelled from the dashboard'});
        selected.delete(id);
      } catch (error) { failed.push(`${id}: ${error.message}`); }
    }
    // The acted-on jobs leave the selection: their boxes must say so too
    // (a box left ticked would look selected and not be).
    render();
    if (failed.length) flash(failed.join('; '));
    else flash(`${deleting ? 'deleted' : 'cancel requested for'} ${ids.length} job${ids.length > 1 ? 's' : ''}`, 'ok');
    if (deleting) await load();
  }

  const stateSelect = el('select', {name: 'state', 'aria-label': 'state'},
    el('option', {value: ''}, 'any state'),
    STATES.map((s) => el('option', {value: s, selected: s === filter.state}, s.toLowerCase())));
  const kindInput = el('input', {name: 'kind', placeholder: 'kind', value: filter.kind});
  const labelInput = el('input', {name: 'label', placeholder: 'label k=v', value: filter.label});
  const form = el('form', {class: 'filters', onsubmit: (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    if (stateSelect.value) q.set('state', stateSelect.value);
    if (kindInput.value.trim()) q.set('kind', kindInput.value.trim());
    if (labelInput.value.trim()) q.set('label', labelInput.value.trim());
    window.location.hash = `#/?${q}`;
  }}, stateSelect, kindInput, labelInput, el('button', {type: 'submit'}, 'Filter'));
  const newer = el('button', {id: 'newer', onclick: () => { page -= 1; load(); }, disabled: true}, '‹ Newer');
  const older = el('button', {id: 'older', onclick: () => { page += 1; load(); }, disabled: true}, 'Older ›');
  const toggleAll = el('input', {type: 'checkbox', 'aria-label': 'select all', onchange: (e) => {
    for (const id of jobs.keys()) { if (e.target.checked) selected.add(id); else selected.delete(id); }
    render();
  }});

  view.append(
    el('section', {class: 'toolbar'}, form,
      el('span', {class: 'actions'},
        el('button', {id: 'cancel-selected', onclick: () => act('cancel')}, 'Cancel selected'),
        el('button', {id: 'delete-selected', class: 'danger', onclick: () => act('delete')}, 'Delete selected…'))),
    el('table', {class: 'jobs'},
      el('thead', {}, el('tr', {},
        el('th', {}, toggleAll), el('th', {}, 'id'), el('th', {}, 'kind'), el('th', {}, 'state'),
        el('th', {}, 'progress'), el('th', {}, 'phase'), el('th', {}, 'attempt'),
        el('th', {}, 'age'), el('th', {}, 'duration'))),
      body),
    el('nav', {class: 'pager'}, newer, pager, older));

  // Ages and run times move on their own; this redraws text, it asks the server nothing.
  const clock = setInterval(() => {
    for (const tr of body.children) {
      const job = jobs.get(tr.dataset.id);
      if (!job) continue;
      tr.querySelector('.age').textContent = age(job);
      tr.querySelector('.dur').textContent = runTime(job);
    }
  }, 1000);
  // Whether a queued job has a worker changes as workers come and go.
  const presence = setInterval(loadWorkers, WORKERS_MS);
  watch();
  load();
  loadWorkers();
  return {close() { source?.close(); clearInterval(clock); clearInterval(presence); }};
}

// ---------------------------------------------------------------- workers

function workersView(view) {
  const body = el('tbody');
  const summary = el('p', {class: 'muted', id: 'workers-summary'});
  view.append(el('h1', {}, 'Workers'), summary,
    el('table', {class: 'workers'},
      el('thead', {}, el('tr', {},
        ['id', 'host', 'kinds', 'queues', 'concurrency', 'jobs in hand', 'last seen', ''].map((h) => el('th', {}, h)))),
      body));

  function row(w) {
    const seen = duration((Date.now() - ms(w.lastSeenTime)) / 1000);
    return el('tr', {'data-id': w.workerId, class: w.live ? 'live-worker' : 'gone'},
      el('td', {class: 'id'}, w.workerId),
      el('td', {}, w.host || ''),
      el('td', {class: 'kinds'}, (w.kinds || []).join(', ')),
      el('td', {class: 'queues'}, (w.queues || []).join(', ')),
      el('td', {class: 'num concurrency'}, String(w.concurrency || 0)),
      el('td', {class: 'num running'}, String(w.runningJobs || 0)),
      el('td', {class: 'seen'}, seen ? `${seen} ago` : 'now'),
      el('td', {}, el('span', {class: `state ${w.live ? 'state-succeeded' : ''}`}, w.live ? 'live' : 'gone')));
  }

  async function load() {
    try {
      const workers = await listWorkers();
      // Live ones first, each group by id (the order the servers list them).
      workers.sort((a, b) => Number(b.live || false) - Number(a.live || false));
      const live = workers.filter((w) => w.live).length;
      summary.textContent = `${live} live, ${workers.length - live} gone. Live: seen polling in the last 15 s, `
        + 'or holding a job; a worker stays listed for an hour after it was last seen.';
      body.replaceChildren(...workers.map(row));
    } catch (error) { flash(error.message); }
  }

  const timer = setInterval(load, WORKERS_MS);
  load();
  return {close() { clearInterval(timer); }};
}

// ---------------------------------------------------------------- job page

function jobView(view, id) {
  let job = null;
  let source = null;
  let lastSeq = 0;
  let snapshotSeq = 0;
  let following = true;
  let level = 'DEBUG';
  const lines = [];  // {seq, time, level, text, stream}, the tail being followed
  const head = [];   // the first lines, loaded by "Jump to start" when the tail began later
  let gap = null;    // what lies between head and lines, when something does
  const results = [];
  const parts = {
    head: el('section', {class: 'job-head'}),
    progress: el('section', {class: 'job-progress'}),
    steps: el('section', {class: 'steps'}),
    details: el('section', {class: 'details'}),
    results: el('section', {class: 'results'}),
    artifacts: el('section', {class: 'artifacts'}),
  };
  const log = el('div', {class: 'log', id: 'log', role: 'log'});

  function lineNode(line) {
    return el('div', {class: `line lvl-${line.level.toLowerCase()}`, 'data-seq': line.seq},
      el('span', {class: 'seq'}, line.seq),
      el('span', {class: 'lvl'}, line.level.toLowerCase()),
      el('span', {class: 'text'}, line.text));
  }

  function shown(line) { return LEVELS.indexOf(line.level) >= LEVELS.indexOf(level); }

  function renderLog() {
    pending = [];  // already in lines
    log.replaceChildren(...head.filter(shown).map(lineNode),
      ...(gap ? [el('div', {class: 'gap', id: 'log-gap'}, gap)] : []),
      ...lines.filter(shown).map(lineNode));
    if (following) log.scrollTop = log.scrollHeight;
  }

  // Events arrive by the thousand per second; the page is redrawn at most
  // every FLUSH_MS with what changed, not once per event.
  const dirty = new Set();
  let pending = [];
  let flushTimer = null;

  function touch(...what) {
    for (const part of what) dirty.add(part);
    if (!flushTimer) flushTimer = setTimeout(flush, FLUSH_MS);
  }

  function flush() {
    flushTimer = null;
    if (pending.length) {
      log.append(...pending.filter(shown).map(lineNode));
      pending = [];
      while (log.childElementCount > MAX_LOG_LINES) log.firstChild.remove();
      if (following) log.scrollTop = log.scrollHeight;
    }
    if (!job) return;
    if (dirty.has('head')) renderHead();
    if (dirty.has('progress')) renderProgress();
    if (dirty.has('steps')) renderSteps();
    if (dirty.has('results')) renderResults();
    dirty.clear();
  }

  function addLine(event) {
    const entry = {seq: num(event.seq), time: event.eventTime, text: event.log.text || '',
      level: (event.log.level || 'LOG_LEVEL_INFO').replace('LOG_LEVEL_', '')};
    if (entry.level === 'UNSPECIFIED') entry.level = 'INFO';
    lines.push(entry);
    if (lines.length > MAX_LOG_LINES) lines.shift();
    pending.push(entry);
    touch();
  }

  function renderHead() {
    const s = state(job);
    const buttons = [];
    if (!TERMINAL.has(s)) buttons.push(el('button', {id: 'cancel', onclick: cancel}, 'Cancel'));
    if (['FAILED', 'CANCELLED', 'INTERRUPTED'].includes(s)) buttons.push(el('button', {id: 'retry', onclick: retry}, 'Retry'));
    buttons.push(el('button', {id: 'delete', class: 'danger', onclick: remove}, 'Delete…'));
    parts.head.replaceChildren(
      el('h1', {}, job.id), el('p', {class: 'meta'}, badge(job), ` ${job.kind} · queue ${job.queue || 'default'} · attempt ${job.attempt || 0}/${job.maxAttempts || 0}` +
        (job.owner ? ` · owner ${job.owner}` : '')),
      el('p', {class: 'times'}, `submitted ${age(job)} ago`, job.startTime ? ` · ran ${runTime(job)}` : ''),
      el('div', {class: 'actions'}, buttons));
  }

  function renderProgress() {
    const p = job.progress || {};
    const c = job.counters || {};
    parts.progress.replaceChildren(
      el('div', {class: 'bar'}, progressBar(job),
        num(p.total) ? ` ${num(p.done)} of ${num(p.total)}` : ''),
      el('p', {}, el('strong', {}, 'phase '), el('span', {id: 'phase'}, p.phase || '—'),
        p.message ? el('span', {class: 'message'}, ` · ${p.message}`) : ''),
      el('p', {class: 'counters'}, `items: ${num(c.succeeded)} succeeded · ${num(c.failed)} failed · ${num(c.skipped)} skipped`));
  }

  function renderSteps() {
    const steps = job.steps || [];
    parts.steps.replaceChildren(el('h2', {}, 'Steps'), steps.length ? el('table', {},
      el('thead', {}, el('tr', {}, ['step', 'state', 'attempts', 'started', 'ended', 'error'].map((h) => el('th', {}, h)))),
      el('tbody', {}, steps.map((st) => el('tr', {},
        el('td', {}, st.name), el('td', {}, (st.state || '').replace('STEP_STATE_', '').toLowerCase()),
        el('td', {class: 'num'}, st.attempts || 0), el('td', {}, st.startTime || ''), el('td', {}, st.endTime || ''),
        el('td', {class: 'error'}, st.error || ''))))) : el('p', {class: 'muted'}, 'none reported'));
  }

  function renderDetails() {
    const blocks = [el('h2', {}, 'Params'), el('pre', {id: 'params'}, JSON.stringify(job.params || {}, null, 2))];
    if (job.labels && Object.keys(job.labels).length) {
      blocks.push(el('h2', {}, 'Labels'), el('p', {}, Object.entries(job.labels).map(([k, v]) => `${k}=${v}`).join(', ')));
    }
    if (job.result) blocks.push(el('h2', {}, 'Result'), el('pre', {}, JSON.stringify(job.result, null, 2)));
    if (job.error) {
      const details = job.error.details || {};
      const trace = typeof details.traceback === 'string' ? details.traceback : '';
      blocks.push(el('h2', {}, 'Error'),
        el('p', {class: 'error', id: 'error'}, `${job.error.code || ''}: ${job.error.message || ''}`),
        trace ? el('pre', {class: 'traceback'}, trace)
          : Object.keys(details).length ? el('pre', {}, JSON.stringify(details, null, 2)) : '');
    }
    parts.details.replaceChildren(...blocks);
  }

  function renderResults() {
    if (!job) return;
    const c = job.counters || {};
    const total = num(c.succeeded) + num(c.failed) + num(c.skipped);
    parts.results.replaceChildren(el('h2', {}, `Results (${total})`),
      total ? el('a', {href: `${jobPath(id)}/results?alt=jsonl`, download: `${id}-results.jsonl`}, 'download all as JSON lines') : '',
      results.length ? el('div', {class: 'scroll'}, el('table', {},
        el('thead', {}, el('tr', {}, ['key', 'status', 'error', 'data'].map((h) => el('th', {}, h)))),
        el('tbody', {}, results.slice(0, RESULTS_SHOWN).map((r) => el('tr', {},
          el('td', {}, r.key), el('td', {}, (r.status || '').replace('RESULT_STATUS_', '').toLowerCase()),
          el('td', {class: 'error'}, r.error || ''), el('td', {}, r.data ? JSON.stringify(r.data) : '')))))) : '');
  }

  async function loadArtifacts() {
    try {
      const data = await api('GET', `${jobPath(id)}/artifacts`);
      const list = data.artifacts || [];
      parts.artifacts.replaceChildren(el('h2', {}, `Artifacts (${list.length})`), list.length ? el('table', {},
        el('thead', {}, el('tr', {}, ['name', 'size', 'type', 'sha256'].map((h) => el('th', {}, h)))),
        el('tbody', {}, list.map((a) => el('tr', {},
          el('td', {}, el('a', {href: `${jobPath(id)}/artifacts/${encodeURIComponent(a.name)}`, download: a.name}, a.name)),
          el('td', {class: 'num'}, `${num(a.sizeBytes)} B`), el('td', {}, a.contentType || ''),
          el('td', {class: 'hash'}, a.sha256))))) : '');
    } catch (error) { flash(error.message); }
  }

  async function loadResults() {
    try {
      const data = await api('GET', `${jobPath(id)}/results?pageSize=${RESULTS_SHOWN}`);
      results.splice(0, results.length, ...(data.events || []).map((e) => e.resultItem));
      renderResults();
    } catch (error) { flash(error.message); }
  }

  function renderAll() { renderHead(); renderProgress(); renderSteps(); renderDetails(); renderResults(); }

  async function refresh() {
    try { flush(); job = (await api('GET', jobPath(id))).job; renderAll(); } catch (error) { flash(error.message); }
  }

  function onEvent(event) {
    const seq = num(event.seq);
    if (seq <= lastSeq) return;  // never twice, whatever the transport did
    lastSeq = seq;
    if (!job) return;
    if (event.log) { addLine(event); return; }
    // History the snapshot already counts: its lines are shown above, and
    // its state, progress and counters are in the snapshot.
    if (seq <= snapshotSeq) return;
    job.lastSeq = event.seq;
    if (event.progress) {
      job.progress = event.progress;
      touch('progress', 'head');
    } else if (event.stateChange) {
      job.state = event.stateChange.state;
      if (event.stateChange.attempt) job.attempt = event.stateChange.attempt;
      touch('head');
      if (TERMINAL.has(state(job))) refresh();
    } else if (event.step) {
      const steps = job.steps || (job.steps = []);
      const at = steps.findIndex((st) => st.name === event.step.name);
      if (at >= 0) steps[at] = event.step; else steps.push(event.step);
      touch('steps');
    } else if (event.resultItem) {
      const item = event.resultItem;
      const c = job.counters || (job.counters = {});
      const key = (s) => (s || '').replace('RESULT_STATUS_', '').toLowerCase();
      if (item.replacedStatus) c[key(item.replacedStatus)] = num(c[key(item.replacedStatus)]) - 1;
      c[key(item.status)] = num(c[key(item.status)]) + 1;
      const at = results.findIndex((r) => r.key === item.key);
      if (at >= 0) results[at] = item; else if (results.length < RESULTS_SHOWN) results.push(item);
      touch('results', 'progress');
    } else if (event.artifactAdded) loadArtifacts();
    else if (event.cancelRequested) { job.cancelRequested = true; touch('head'); }
  }

  async function cancel() {
    try { job = (await api('POST', `${jobPath(id)}:cancel`, {reason: 'cancelled from the dashboard'})).job; renderHead(); }
    catch (error) { flash(error.message); }
  }

  async function retry() {
    try {
      await api('POST', `${jobPath(id)}:retry`, {reason: 'retried from the dashboard'});
      // The watch had ended with the old run; follow the new one.
      source?.close();
      start();
    } catch (error) { flash(error.message); }
  }

  async function remove() {
    const ok = await confirmAction(`Delete ${id}?`, [`${id} (${job.kind}, ${state(job).toLowerCase()})`],
      'The job is removed with its events, logs, results, steps, artifacts and files.' +
      (TERMINAL.has(state(job)) ? '' : ' It is running: it is cancelled first.') + ' This cannot be undone.', 'Delete');
    if (!ok) return;
    try {
      await api('DELETE', `${jobPath(id)}?force=true`);
      source?.close();
      window.location.hash = '#/';
    } catch (error) { flash(error.message); }
  }

  // A long job's page follows its tail: the last TAIL_EVENTS events, then live.
  async function open() {
    try {
      const current = (await api('GET', jobPath(id))).job;
      if (num(current.lastSeq) > TAIL_EVENTS) {
        lastSeq = num(current.lastSeq) - TAIL_EVENTS;
        gap = `Lines before event ${lastSeq + 1} are not loaded: Jump to start loads the first ones.`;
        renderLog();
      }
    } catch (error) { flash(error.message); return; }
    start();
  }

  async function loadHead() {
    if (!gap || head.length) return;
    try {
      const data = await api('GET', `${jobPath(id)}/logs?pageSize=${HEAD_LINES}`);
      const firstTail = lines.length ? lines[0].seq : lastSeq + 1;
      let met = !data.nextPageToken;  // all of the head fits before the tail
      for (const event of data.events || []) {
        if (num(event.seq) >= firstTail) { met = true; break; }
        const level = (event.log.level || 'LOG_LEVEL_INFO').replace('LOG_LEVEL_', '');
        head.push({seq: num(event.seq), time: event.eventTime, text: event.log.text || '',
          level: level === 'UNSPECIFIED' ? 'INFO' : level});
      }
      const last = head.length ? head[head.length - 1].seq : 0;
      gap = met ? null : `… the lines between events ${last} and ${firstTail} are in the download.`;
      renderLog();
    } catch (error) { flash(error.message); }
  }

  function start() {
    source = follow(`${jobPath(id)}:watch?afterSeq=${lastSeq}`, {
      snapshot: (snapshot) => { flush(); job = snapshot; snapshotSeq = num(snapshot.lastSeq); renderAll(); },
      event: onEvent,
      end: () => { source.close(); refresh().then(() => setLive('ended', 'ok')); },
    });
  }

  const levelSelect = el('select', {id: 'level', 'aria-label': 'log level', onchange: (e) => { level = e.target.value; renderLog(); }},
    LEVELS.map((l) => el('option', {value: l}, `${l.toLowerCase()} and above`)));
  const followButton = el('button', {id: 'follow', onclick: () => {
    following = !following;
    followButton.textContent = following ? 'Pause follow' : 'Resume follow';
    if (following) log.scrollTop = log.scrollHeight;
  }}, 'Pause follow');
  const topButton = el('button', {id: 'jump-start', onclick: async () => {
    following = false;
    followButton.textContent = 'Resume follow';
    await loadHead();
    log.scrollTop = 0;
  }}, 'Jump to start');
  view.append(parts.head, parts.progress,
    el('section', {class: 'logs'}, el('h2', {}, 'Log'),
      el('div', {class: 'log-tools'}, levelSelect, followButton, topButton,
        el('a', {href: `${jobPath(id)}/logs?alt=jsonl`, download: `${id}-logs.jsonl`}, 'download')),
      log),
    parts.steps, parts.results, parts.artifacts, parts.details);
  open();
  loadResults();
  loadArtifacts();
  const clock = setInterval(() => { if (job && !TERMINAL.has(state(job))) renderHead(); }, 1000);
  return {close() { source?.close(); clearInterval(clock); }};
}

// ---------------------------------------------------------------- submit

function submitView(view) {
  const kind = el('input', {id: 'kind', name: 'kind', required: true, placeholder: 'demo.count'});
  const params = el('textarea', {id: 'params-json', name: 'params', rows: 8}, '{}');
  const labels = el('input', {id: 'labels', name: 'labels', placeholder: 'team=growth, env=prod'});
  const queue = el('input', {id: 'queue', name: 'queue', placeholder: 'default'});
  const priority = el('input', {id: 'priority', name: 'priority', type: 'number', value: 0});
  const form = el('form', {class: 'submit', onsubmit: async (e) => {
    e.preventDefault();
    let parsed;
    try { parsed = JSON.parse(params.value || '{}'); } catch (error) { flash(`params: ${error.message}`); return; }
    const request = {kind: kind.value.trim(), params: parsed, queue: queue.value.trim(), priority: Number(priority.value || 0), labels: {}};
    for (const pair of labels.value.split(',').map((s) => s.trim()).filter(Boolean)) {
      const [key, ...rest] = pair.split('=');
      request.labels[key.trim()] = rest.join('=').trim();
    }
    try {
      const data = await api('POST', '/v1/jobs', request);
      window.location.hash = `#/jobs/${encodeURIComponent(data.job.id)}`;
    } catch (error) { flash(error.message); }
  }},
  el('label', {}, 'Kind', kind), el('label', {}, 'Params (JSON object)', params),
  el('label', {}, 'Labels', labels), el('label', {}, 'Queue', queue), el('label', {}, 'Priority', priority),
  el('button', {type: 'submit', id: 'submit'}, 'Submit'));
  view.append(el('h1', {}, 'Submit a job'), form);
  return {close() {}};
}

// ---------------------------------------------------------------- stats

const SVG = 'http://www.w3.org/2000/svg';

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  for (const child of children.flat()) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

// Stacked bars: buckets of {label, values: {series: count}}.
function barChart(buckets, series, title) {
  const width = 720, height = 220, pad = 30;
  const max = Math.max(1, ...buckets.map((b) => Object.values(b.values).reduce((a, v) => a + v, 0)));
  const step = (width - pad * 2) / Math.max(1, buckets.length);
  const bars = [];
  buckets.forEach((bucket, i) => {
    let y = height - pad;
    for (const name of series) {
      const count = bucket.values[name] || 0;
      if (!count) continue;
      const h = (count / max) * (height - pad * 2);
      y -= h;
      bars.push(svg('rect', {x: pad + i * step + 1, y, width: Math.max(1, step - 2), height: h, class: `bar-${name.toLowerCase()}`},
        svg('title', {}, `${bucket.label}: ${count} ${name.toLowerCase()}`)));
    }
    if (i % Math.ceil(buckets.length / 8) === 0) {
      bars.push(svg('text', {x: pad + i * step, y: height - 10, class: 'axis'}, bucket.label));
    }
  });
  return el('figure', {}, el('figcaption', {}, title),
    svg('svg', {viewBox: `0 0 ${width} ${height}`, class: 'chart', role: 'img'},
      svg('text', {x: 2, y: pad - 10, class: 'axis'}, `${max}`),
      svg('line', {x1: pad, y1: height - pad, x2: width - pad, y2: height - pad, class: 'axis-line'}), bars),
    el('p', {class: 'legend'}, series.map((s) => el('span', {class: `key key-${s.toLowerCase()}`}, s.toLowerCase()))));
}

function statsView(view, params) {
  const windowSize = params.get('window') || '3600s';
  const choose = el('select', {'aria-label': 'window', onchange: (e) => { window.location.hash = `#/stats?window=${e.target.value}`; }},
    [['3600s', 'last hour'], ['86400s', 'last day'], ['604800s', 'last week']].map(([v, t]) => el('option', {value: v, selected: v === windowSize}, t)));
  const cards = el('section', {class: 'cards'});
  const charts = el('section', {class: 'charts'});
  view.append(el('h1', {}, 'Stats ', choose), cards, charts);

  async function load() {
    try {
      const stats = await api('GET', `/v1/stats?window=${windowSize}`);
      const counts = Object.fromEntries((stats.stateCounts || []).map((c) => [c.state.replace('JOB_STATE_', ''), num(c.count)]));
      const seconds = (d) => (d ? parseFloat(d) : 0);
      cards.replaceChildren(
        ...STATES.map((s) => el('div', {class: `card state-${s.toLowerCase()}`}, el('strong', {}, counts[s] || 0), ` ${s.toLowerCase()}`)),
        el('div', {class: 'card'}, el('strong', {}, `${Math.round((stats.successRate || 0) * 100)} %`), ' success'),
        el('div', {class: 'card'}, el('strong', {}, duration(seconds(stats.durationP50))), ' p50 run time'),
        el('div', {class: 'card'}, el('strong', {}, duration(seconds(stats.durationP95))), ' p95 run time'),
        el('div', {class: 'card'}, el('strong', {}, (stats.throughputPerMinute || 0).toFixed(1)), ' ended / min'));
      const sample = (await api('GET', `/v1/jobs?pageSize=${STATS_SAMPLE}`)).jobs || [];
      charts.replaceChildren(byStateOverTime(sample, seconds(windowSize)), runTimes(sample));
    } catch (error) { flash(error.message); }
  }

  function byStateOverTime(jobs, span) {
    const now = Date.now(), count = 24, size = (span * 1000) / count;
    const buckets = Array.from({length: count}, (_, i) => ({
      label: new Date(now - span * 1000 + i * size).toLocaleTimeString([], {hour: '2-digit', minute: '2-digit'}), values: {}}));
    for (const job of jobs) {
      const i = Math.floor((ms(job.createTime) - (now - span * 1000)) / size);
      if (i < 0 || i >= count) continue;
      const s = state(job);
      buckets[i].values[s] = (buckets[i].values[s] || 0) + 1;
    }
    return barChart(buckets, STATES, `Jobs submitted over time, by their state now (newest ${jobs.length})`);
  }

  function runTimes(jobs) {
    const edges = [0.1, 0.3, 1, 3, 10, 30, 60, 300, 900, 3600, Infinity];
    const buckets = edges.map((edge, i) => ({label: i === edges.length - 1 ? `>${duration(edges[i - 1])}` : `≤${duration(edge)}`, values: {}}));
    for (const job of jobs) {
      if (!job.startTime || !job.endTime) continue;
      const seconds = (ms(job.endTime) - ms(job.startTime)) / 1000;
      const i = edges.findIndex((edge) => seconds <= edge);
      const s = state(job);
      buckets[i].values[s] = (buckets[i].values[s] || 0) + 1;
    }
    return barChart(buckets, ['SUCCEEDED', 'FAILED', 'CANCELLED', 'INTERRUPTED'], 'Run-time distribution of ended jobs');
  }

  load();
  return {close() {}};
}
