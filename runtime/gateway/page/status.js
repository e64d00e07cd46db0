// vmbackup status page: polls GET /v1/progress every second and GET /v1/status (each VM's
// backups, recent runs) every 15 s and whenever a run or a VM job ends. Plain JS, no build
// step; the session cookie authenticates the requests (runtime/gateway/page.ts).
'use strict';

const PROGRESS_MS = 1000;
const STATUS_MS = 15000;
let runningKey = '';
/** The last status said the run store (NATS) does not answer. */
let storeDown = false;
let statusTimer;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c !== undefined && c !== null) node.append(c instanceof Node ? c : String(c));
  return node;
}

function bytes(n) {
  if (n === undefined || n === null) return '';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

function seconds(s) {
  if (s === undefined || s === null) return '';
  s = Math.round(s);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  const h = Math.floor(s / 3600);
  if (h < 48) return `${h} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

function age(iso) {
  if (!iso) return '';
  return `${seconds((Date.now() - Date.parse(iso)) / 1000)} ago`;
}

function when(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return d.toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'short' });
}

async function get(url) {
  const res = await fetch(url, { credentials: 'same-origin', headers: { Accept: 'application/json' } });
  if (res.status === 401 || res.status === 403) {
    // The session ended (12 h, or the gateway restarted): the page asks for the token again.
    window.location.assign('/');
    throw new Error('session ended');
  }
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw Object.assign(new Error(body.message || `HTTP ${res.status}`), { status: res.status });
  return body;
}

const problems = new Map();
function banner(key, message) {
  if (message) problems.set(key, message);
  else problems.delete(key);
  const b = document.getElementById('banner');
  b.hidden = problems.size === 0;
  b.textContent = [...problems.values()].join(' — ');
}

// --- in progress ----------------------------------------------------------------------

function renderProgress(data) {
  const box = document.getElementById('progress-runs');
  document.getElementById('progress-none').hidden = data.runs.length > 0;
  box.replaceChildren(
    ...data.runs.map((run) =>
      el(
        'div',
        { class: 'run', 'data-run': run.runId },
        el('div', {}, el('strong', {}, `Run ${run.runId}`), ' ', el('span', { class: 'muted' }, `${run.status}, ${run.jobs - run.remaining} of ${run.jobs} jobs done, started ${age(run.startedAt)}`)),
        ...run.running.map((vm) => {
          const pct = vm.total && vm.bytes !== undefined ? Math.min(100, (100 * vm.bytes) / vm.total) : undefined;
          const figures = [vm.phase];
          if (vm.bytes !== undefined) figures.push(vm.total ? `${bytes(vm.bytes)} of ≤ ${bytes(vm.total)}` : bytes(vm.bytes));
          if (vm.rateBps !== undefined) figures.push(`${bytes(vm.rateBps)}/s`);
          if (vm.etaS !== undefined) figures.push(`≤ ${seconds(vm.etaS)} left`);
          const bar = el('span');
          bar.style.width = pct === undefined ? '0' : `${pct.toFixed(1)}%`;
          return el(
            'div',
            { class: 'vm-progress', 'data-vm': vm.label, 'data-phase': vm.phase, 'data-bytes': vm.bytes },
            el('span', {}, vm.label),
            el('div', { class: 'bar', role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': pct === undefined ? undefined : pct.toFixed(0) }, bar),
            el('span', { class: 'figures' }, figures.join(' · ')),
          );
        }),
      ),
    ),
  );
  // A run or a job that ended changes what the VMs and the runs show: read them again now.
  const key = data.runs.map((r) => `${r.runId}:${r.running.map((v) => v.jobId).join(',')}:${r.remaining}`).join(';');
  if (key !== runningKey) {
    runningKey = key;
    void refreshStatus();
  }
}

async function refreshProgress() {
  try {
    renderProgress(await get('/v1/progress'));
    banner('progress');
  } catch (error) {
    if (error.message !== 'session ended' && !storeDown) banner('progress', `Runs in progress unknown: ${error.message}`);
  } finally {
    setTimeout(refreshProgress, PROGRESS_MS);
  }
}

// --- VMs and runs ---------------------------------------------------------------------

function failedLast(vm) {
  return vm.lastFailure && (!vm.lastSuccess || vm.lastFailure.at > vm.lastSuccess.at);
}

function chainItem(c) {
  const parts = [`${when(c.date)}`, c.kind === 'point' ? `point${c.mode ? ` (${c.mode === 'changes' ? `changes to ${c.base}` : 'full'})` : ''}` : 'backup', bytes(c.bytes)];
  if (c.verify) parts.push(c.verify.ok ? 'verified' : `verify failed: ${c.verify.error || ''}`);
  if (!c.complete) parts.push(`not restorable${c.problem ? `: ${c.problem}` : ''}`);
  return el('li', { class: c.complete ? undefined : 'error' }, parts.filter(Boolean).join(' · '));
}

function renderVms(status) {
  const tbody = document.querySelector('#vm-table tbody');
  document.getElementById('vms-none').hidden = status.vms.length > 0;
  tbody.replaceChildren(
    ...status.vms.map((vm) => {
      const failed = failedLast(vm);
      const s = vm.lastSuccess;
      const v = vm.lastVerify;
      const name = el('td', { 'data-label': 'VM' }, el('span', { class: 'name' }, vm.vm));
      if (failed) name.append(el('div', { class: 'error' }, `failed ${age(vm.lastFailure.at)}: ${vm.lastFailure.error}`));
      for (const p of vm.problems || []) name.append(el('div', { class: 'error problem' }, `${p.stamp ? `${p.stamp}: ` : ''}${p.message}`));
      return el(
        'tr',
        { class: failed ? 'failed' : undefined, 'data-vm': vm.vm },
        name,
        el('td', { 'data-label': 'Last good backup', title: s ? s.at : '' }, s ? age(s.at) : el('span', { class: 'bad' }, 'none')),
        el('td', { class: 'num', 'data-label': 'Size' }, s ? bytes(s.bytes) : ''),
        el('td', { class: 'num', 'data-label': 'Took' }, s && s.durationMs !== undefined ? seconds(s.durationMs / 1000) : ''),
        el('td', { 'data-label': 'Verified' }, v ? el('span', { class: v.ok ? 'ok' : 'bad', title: v.error || '' }, `${v.ok ? 'ok' : 'FAILED'} ${age(v.at)}`) : el('span', { class: 'muted' }, 'never')),
        el(
          'td',
          { 'data-label': 'Points' },
          vm.chain && vm.chain.length > 0 ? el('details', {}, el('summary', {}, String(vm.points)), el('ul', {}, vm.chain.map(chainItem))) : String(vm.points),
        ),
      );
    }),
  );
}

function renderRuns(status) {
  const list = document.getElementById('run-list');
  document.getElementById('runs-none').hidden = status.runs.length > 0;
  list.replaceChildren(
    ...status.runs.map((run) => {
      const outcome = run.outcome || run.status;
      const cls = outcome === 'success' ? 'ok' : outcome === 'warning' ? 'warn' : outcome === 'error' || outcome === 'fatal' ? 'bad' : 'muted';
      const failed = (run.jobs || []).filter((j) => j.status === 'failed');
      return el(
        'li',
        { class: failed.length > 0 || outcome === 'fatal' ? 'failed' : undefined, 'data-run': run.runId },
        el('span', { class: `outcome ${cls}` }, outcome),
        ' ',
        `${when(run.startedAt)} · ${run.runId}${run.trigger ? ` · ${run.trigger}` : ''} · ${(run.jobs || []).length} jobs`,
        failed.length > 0 ? el('ul', {}, failed.map((j) => el('li', { class: 'error', 'data-vm': j.name }, `${j.name}: ${j.error || 'failed'}`))) : undefined,
      );
    }),
  );
}

let statusAsked = 0;
async function refreshStatus() {
  clearTimeout(statusTimer);
  // Two reads may overlap (a run ended while one was under way): only the newest is shown.
  const asked = ++statusAsked;
  try {
    const status = await get('/v1/status');
    if (asked !== statusAsked) return;
    renderVms(status);
    renderRuns(status);
    banner('disk', status.backupDirError ? `backup_dir cannot be read: ${status.backupDirError}` : undefined);
    storeDown = status.runStore !== undefined && !status.runStore.up;
    // One line for NATS: the progress poll fails for the same reason.
    if (storeDown) banner('progress');
    banner('store', storeDown ? `${status.runStore.error || 'NATS is not reachable'}: runs and progress unknown; the backups on disk are shown` : undefined);
    banner('status');
    // This poll's time: an unchanged answer (304) is the browser's copy, with the `at` of its first reading.
    document.getElementById('updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    if (error.message !== 'session ended') banner('status', `Backups unknown: ${error.message}`);
  } finally {
    if (asked === statusAsked) statusTimer = setTimeout(refreshStatus, STATUS_MS);
  }
}

void refreshStatus();
void refreshProgress();
