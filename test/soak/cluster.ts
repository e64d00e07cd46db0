import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { connect } from 'nats';
import type { JetStreamManager, NatsConnection } from 'nats';
import { COORDINATOR } from '../../runtime/run/coordinator.js';
import { EVENTS_STREAM, JOBS_STREAM, RUNS_BUCKET_STREAM, jobConsumerName } from '../../infra/nats/jetstream.js';
import { ROOT, VMBACKUP, httpsSim, workspace } from '../helpers/cli.js';
import { startCluster } from '../nats/cluster-rig.js';
import type { Cluster } from '../nats/cluster-rig.js';
import { pool, vm } from '../sim/fixtures.js';
import { startWorker } from '../nats/workers.js';
import type { WorkerProcess } from '../nats/workers.js';
import type { Simulator } from '../sim/server.js';

/** Who dies in a try: picked in turn, resolved to a node at the moment of the kill. */
export const ROLES = ['jobs stream leader', 'events stream leader', 'runs bucket leader', 'meta leader', 'coordinator consumer leader', "run's node", "worker's node"] as const;
export type Role = (typeof ROLES)[number];

export interface SoakOptions {
  tries: number;
  /** Size of each of the 4 VMs' disk. Default 384 MiB. */
  vmMib?: number;
  /** The workers' --ack-wait, seconds. Default 30 (the default of `vmbackup worker`). */
  ackWaitS?: number;
  /** How long a try may take before it is a hang. Default: baseline + ack wait + 90 s. */
  hangS?: number;
  /** How long the killed node stays down. Default 2 s. */
  downMs?: number;
  /** Where worker and run output of a bad try is kept. Default a temp dir. */
  keepDir?: string;
  /** Each try's line, as it ends. */
  print?: (line: string) => void;
  /** Stops the soak after the try under way (its run is killed): SIGINT of `npm run soak`. */
  signal?: AbortSignal;
}

export interface TryResult {
  n: number;
  role: Role;
  /** The node killed, and every role it had at that moment. */
  node: string | undefined;
  roles: Role[];
  killAtS: number;
  finishS: number;
  exitCode: number | null;
  hang: boolean;
  /** Anything the try left: partial files, snapshots on the pool, jobs not acked. */
  leftovers: string[];
  /** The run's warnings (a VM backed up again after a failed attempt, say). */
  warnings: string[];
  /** Jobs delivered again while their first delivery ran, held back by their claim (runtime/bus/nats-claims.ts). */
  copiesHeld: number;
  /** Why the run did not end with exit 0 and every VM backed up. */
  failure?: string;
}

export interface SoakResult {
  baselineS: number;
  tries: TryResult[];
  /** True when no try hung, failed or left anything behind. */
  ok: boolean;
}

const VMS = ['soak-1', 'soak-2', 'soak-3', 'soak-4'];

/**
 * The cluster soak: a three-node JetStream cluster (infra/nats/cluster/) on free loopback
 * ports, two `vmbackup worker --replicas 3` against the XAPI simulator (4 running VMs), and
 * `vmbackup run` again and again. Each try kills one node (SIGKILL) by role, in turn, at a
 * random moment of the run, and starts it again after `downMs`; it records the time to
 * finish and what was left over. The first run has no kill: its time is the baseline.
 */
export async function soakCluster(opts: SoakOptions): Promise<SoakResult> {
  const print = opts.print ?? (() => {});
  const ackWaitS = opts.ackWaitS ?? 30;
  const keepDir = opts.keepDir ?? (await mkdtemp(path.join(os.tmpdir(), 'vmb-soak-')));
  const sim = await httpsSim(pool(VMS.map((name) => vm(name, 'Running', opts.vmMib ?? 384))));
  const ws = await workspace();
  let cluster: Cluster | undefined;
  const workers: WorkerProcess[] = [];
  let nc: NatsConnection | undefined;
  try {
    cluster = await startCluster();
    const args = [...ws.args(sim), '--nats', cluster.url];
    // The first worker makes the streams three-way; both say so, as an operator would.
    for (let i = 0; i < 2; i++) {
      const w = startWorker([...args, '--replicas', '3', '--ack-wait', String(ackWaitS)], { readyTimeoutMs: 60_000 });
      workers.push(w);
      await w.ready;
    }
    nc = await connect({ servers: cluster.url.split(', '), maxReconnectAttempts: -1, reconnectTimeWait: 250, name: 'soak' });
    await healthy(nc, cluster);

    const base = await oneRun(args, 300, opts.signal);
    if (base.code !== 0) throw new Error(`the baseline run (no kill) failed with exit ${base.code}:\n${base.stderr.slice(-3000)}`);
    const baselineS = base.seconds;
    print(`baseline (no kill): ${baselineS.toFixed(1)} s`);
    await clearExports(ws.exports);
    const hangS = opts.hangS ?? baselineS + ackWaitS + 90;

    const tries: TryResult[] = [];
    for (let n = 1; n <= opts.tries && opts.signal?.aborted !== true; n++) {
      const role = ROLES[(n - 1) % ROLES.length]!;
      const marks = workers.map((w) => w.output().length);
      const started = Date.now();
      const run = oneRun(args, hangS, opts.signal);
      // Anywhere in the first half of a run's usual time: from the plan to the exports.
      const killAtMs = 500 + Math.random() * Math.max(1_000, baselineS * 1000 * 0.5);
      let node: string | undefined;
      let roles: Role[] = [];
      let killAtS = 0;
      const kill = (async () => {
        await Promise.race([sleep(killAtMs), run]);
        if (run.done) return;
        node = await nodeOf(cluster!, role);
        if (node === undefined) return;
        roles = await rolesOf(cluster!, node);
        killAtS = (Date.now() - started) / 1000;
        await cluster!.node(node).server.restart({ signal: 'SIGKILL', downMs: opts.downMs ?? 2_000 });
      })();
      const r = await run;
      await kill;
      // Interrupted (Ctrl-C): not a hang; the try does not count.
      if (interrupted(opts.signal)) break;
      const finishS = (Date.now() - started) / 1000;
      const hang = r.code === null;
      let failure: string | undefined;
      let warnings: string[] = [];
      if (hang) failure = `no end within ${hangS.toFixed(0)} s`;
      else if (r.code !== 0) failure = `exit ${r.code}: ${lastLines(r.stderr, 5)}`;
      else {
        const summary = JSON.parse(r.stdout) as { categories?: Record<string, { S: number; W: number; E: number }>; jobs?: { name?: string; warnings?: string[] }[] };
        warnings = (summary.jobs ?? []).flatMap((j) => (j.warnings ?? []).map((w) => `${j.name ?? '?'}: ${w}`));
        // S counts the VMs backed up, those with a warning (W) among them: every VM, no error.
        const s = summary.categories?.['vm-export'];
        if (s === undefined || s.S !== VMS.length || s.E !== 0) failure = `summary: ${JSON.stringify(summary.categories)}`;
      }
      await healthy(nc, cluster).catch((error: unknown) => print(`  cluster not healthy again: ${(error as Error).message}`));
      const leftovers = await leftoversOf(nc, sim, ws.exports, ackWaitS);
      const copiesHeld = workers.reduce((sum, w, i) => sum + (w.output().slice(marks[i]).match(/standing by until it settles/g)?.length ?? 0), 0);
      const result: TryResult = { n, role, node, roles, killAtS, finishS, exitCode: r.code, hang, leftovers, warnings, copiesHeld, ...(failure !== undefined ? { failure } : {}) };
      tries.push(result);
      print(tryLine(result, opts.tries));
      if (failure !== undefined || leftovers.length > 0) {
        const dir = path.join(keepDir, `try-${n}`);
        await rm(dir, { recursive: true, force: true });
        await mkdir(dir, { recursive: true });
        await writeFile(path.join(dir, 'run.out'), `${r.stdout}\n---- stderr\n${r.stderr}`);
        for (const [i, w] of workers.entries()) await writeFile(path.join(dir, `worker-${i + 1}.out`), w.output().slice(marks[i]));
        print(`  output kept in ${dir}`);
      }
      await clearExports(ws.exports);
      // A hung try's leftovers would spoil the next ones: clean the pool and queue.
      if (leftovers.length > 0) await purgeJobs(nc);
    }
    const ok = tries.every((t) => t.failure === undefined && t.leftovers.length === 0);
    return { baselineS, tries, ok };
  } finally {
    await nc?.close().catch(() => {});
    await Promise.all(workers.map((w) => w.stop(10_000)));
    await cluster?.stop();
    await sim.close();
    await rm(ws.base, { recursive: true, force: true });
  }
}

/** One `vmbackup run --json`, killed after `limitS` (then `code` is null: a hang). */
function oneRun(args: string[], limitS: number, signal?: AbortSignal): Promise<{ code: number | null; stdout: string; stderr: string; seconds: number }> & { done: boolean } {
  const started = Date.now();
  const state = { done: false };
  const p = new Promise<{ code: number | null; stdout: string; stderr: string; seconds: number }>((resolve, reject) => {
    const child = spawn(process.execPath, [VMBACKUP, 'run', ...args, '--json'], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: os.tmpdir() },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    let hung = false;
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      hung = true;
      child.kill('SIGKILL');
    }, limitS * 1000);
    const abort = () => child.kill('SIGKILL');
    signal?.addEventListener('abort', abort, { once: true });
    child.on('error', reject);
    child.on('close', (code) => {
      signal?.removeEventListener('abort', abort);
      clearTimeout(timer);
      state.done = true;
      resolve({ code: hung ? null : code, stdout, stderr, seconds: (Date.now() - started) / 1000 });
    });
  });
  return Object.defineProperty(p, 'done', { get: () => state.done }) as Promise<{ code: number | null; stdout: string; stderr: string; seconds: number }> & { done: boolean };
}

async function nodeOf(cluster: Cluster, role: Role): Promise<string | undefined> {
  for (let i = 0; i < 50; i++) {
    const node = await resolveRole(cluster, role);
    if (node !== undefined) return node;
    await sleep(100);
  }
  return undefined;
}

async function resolveRole(cluster: Cluster, role: Role): Promise<string | undefined> {
  switch (role) {
    case 'jobs stream leader':
      return cluster.streamLeader(JOBS_STREAM);
    case 'events stream leader':
      return cluster.streamLeader(EVENTS_STREAM);
    case 'runs bucket leader':
      return cluster.streamLeader(RUNS_BUCKET_STREAM);
    case 'meta leader':
      return cluster.metaLeader();
    case 'coordinator consumer leader':
      return cluster.consumerLeader(EVENTS_STREAM, COORDINATOR);
    case "run's node":
      return (await cluster.clientNodes('vmbackup run'))[0];
    case "worker's node":
      return (await cluster.clientNodes('vmbackup worker'))[0];
  }
}

async function rolesOf(cluster: Cluster, node: string): Promise<Role[]> {
  const out: Role[] = [];
  for (const role of ROLES) {
    if (role === "run's node" || role === "worker's node") {
      const names = await cluster.clientNodes(role === "run's node" ? 'vmbackup run' : 'vmbackup worker');
      if (names.includes(node)) out.push(role);
    } else if ((await resolveRole(cluster, role)) === node) out.push(role);
  }
  return out;
}

/** Waits until every stream has a leader and two current replicas, and no node is down. */
async function healthy(nc: NatsConnection, cluster: Cluster, ms = 60_000): Promise<void> {
  // No API check on creation: right after a restart it can time out, and the loop retries.
  const jsm = await nc.jetstreamManager({ timeout: 2_000, checkAPI: false });
  const until = Date.now() + ms;
  let last = '';
  for (;;) {
    try {
      const bad: string[] = [];
      for (const s of [JOBS_STREAM, EVENTS_STREAM, RUNS_BUCKET_STREAM]) {
        const info = await jsm.streams.info(s);
        const replicas = info.cluster?.replicas ?? [];
        if (info.cluster?.leader === undefined || replicas.length !== 2 || replicas.some((r) => !r.current || r.offline === true)) bad.push(`${s}: ${JSON.stringify(info.cluster)}`);
      }
      if ((await cluster.metaLeader()) === undefined) bad.push('no meta leader');
      if (bad.length === 0) return;
      last = bad.join('; ');
    } catch (error) {
      last = (error as Error).message;
    }
    if (Date.now() > until) throw new Error(`cluster not healthy within ${ms / 1000} s: ${last}`);
    await sleep(250);
  }
}

/** Partial files, vmbackup snapshots on the pool, jobs still queued or not acked. */
export async function leftoversOf(nc: NatsConnection, sim: Simulator, exports: string, ackWaitS: number): Promise<string[]> {
  const out: string[] = [];
  const partials = (await listFiles(exports)).filter((f) => f.endsWith('.partial'));
  if (partials.length > 0) out.push(`partial files: ${partials.join(', ')}`);
  const snaps = sim.state.snapshots().filter((s) => String(s.name_label).includes('vmbackup'));
  if (snaps.length > 0) out.push(`snapshots on the pool: ${snaps.map((s) => String(s.name_label)).join(', ')}`);
  const snapVdis = sim.state.vdis().filter((v) => v.is_a_snapshot === true);
  if (snapVdis.length > 0) out.push(`snapshot disks on the pool: ${snapVdis.length}`);
  // A job redelivered after a lost ack settles within one ack wait (and its handling).
  const jsm = await nc.jetstreamManager({ timeout: 5_000, checkAPI: false });
  const until = Date.now() + (ackWaitS + 30) * 1000;
  let left = '';
  for (;;) {
    try {
      const info = await jsm.streams.info(JOBS_STREAM, { subjects_filter: '>' });
      if (info.state.messages === 0) {
        left = '';
        break;
      }
      const subjects = info.state.subjects ?? {};
      left = `jobs not acked: ${JSON.stringify(Object.keys(subjects).length > 0 ? subjects : info.state.messages)}`;
      if (Date.now() > until) left += await whyQueued(jsm, Object.keys(subjects));
    } catch (error) {
      left = `jobs stream: ${(error as Error).message}`;
    }
    if (Date.now() > until) break;
    await sleep(500);
  }
  if (left !== '') out.push(left);
  return out;
}

/**
 * Why jobs are still on the work queue, from their consumers: still to be delivered or
 * acked, or acked and left on the stream by the server (its consumer's ack floor is past
 * them: nats-server before 2.10 can leave such a message on a replicated work-queue stream
 * when a leader changes, and never delivers it again).
 */
async function whyQueued(jsm: JetStreamManager, subjects: string[]): Promise<string> {
  const parts: string[] = [];
  for (const subject of subjects) {
    try {
      const { seq } = await jsm.streams.getMessage(JOBS_STREAM, { last_by_subj: subject });
      const c = await jsm.consumers.info(JOBS_STREAM, jobConsumerName(subject));
      const state = `${c.name}: ack floor ${c.ack_floor.stream_seq}, ${c.num_pending} pending, ${c.num_ack_pending} unacked, ${c.num_redelivered} redelivered`;
      parts.push(c.ack_floor.stream_seq >= seq ? `${subject} #${seq} acked but not removed (${state})` : `${subject} #${seq} (${state})`);
    } catch (error) {
      parts.push(`${subject}: ${(error as Error).message}`);
    }
  }
  return parts.length > 0 ? `; ${parts.join('; ')}` : '';
}

async function purgeJobs(nc: NatsConnection): Promise<void> {
  const jsm = await nc.jetstreamManager({ timeout: 5_000, checkAPI: false });
  await jsm.streams.purge(JOBS_STREAM).catch(() => {});
}

async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await listFiles(p)));
    else out.push(p);
  }
  return out;
}

async function clearExports(exports: string): Promise<void> {
  for (const e of await readdir(exports)) await rm(path.join(exports, e), { recursive: true, force: true });
}

function tryLine(t: TryResult, of: number): string {
  const who = t.node === undefined ? 'nobody killed (the run ended first)' : `killed ${t.node} (${t.roles.join(', ') || t.role}) at ${t.killAtS.toFixed(1)} s`;
  const end = t.hang ? 'HANG' : `finished in ${t.finishS.toFixed(1)} s (exit ${t.exitCode})`;
  const left = t.leftovers.length === 0 ? 'nothing left over' : `LEFT OVER: ${t.leftovers.join('; ')}`;
  const warned = t.warnings.length > 0 ? `; warnings: ${t.warnings.join('; ')}` : '';
  const held = t.copiesHeld > 0 ? `; ${t.copiesHeld} job${t.copiesHeld === 1 ? '' : 's'} delivered again while running, held by the claim` : '';
  return `try ${t.n}/${of} [${t.role}] ${who}; ${end}; ${left}${warned}${held}${t.failure !== undefined ? `; FAILED: ${t.failure}` : ''}`;
}

/** The tally of a soak: hangs, failures, leftovers, min / median / max time to finish. */
export function tally(r: SoakResult): string {
  const times = r.tries.map((t) => t.finishS).sort((a, b) => a - b);
  const median = times.length === 0 ? 0 : times.length % 2 === 1 ? times[(times.length - 1) / 2]! : (times[times.length / 2 - 1]! + times[times.length / 2]!) / 2;
  const by = new Map<string, number[]>();
  for (const t of r.tries) by.set(t.role, [...(by.get(t.role) ?? []), t.finishS]);
  return [
    `${r.tries.length} tries: ${r.tries.filter((t) => t.hang).length} hangs, ${r.tries.filter((t) => t.failure !== undefined && !t.hang).length} failed runs, ${r.tries.filter((t) => t.leftovers.length > 0).length} with leftovers`,
    `jobs delivered again while running, held by their claim: ${r.tries.reduce((n, t) => n + t.copiesHeld, 0)}`,
    `time to finish: min ${times[0]?.toFixed(1)} s, median ${median.toFixed(1)} s, max ${times.at(-1)?.toFixed(1)} s (baseline without a kill ${r.baselineS.toFixed(1)} s)`,
    ...[...by].map(([role, ts]) => `  ${role}: ${ts.length} tries, max ${Math.max(...ts).toFixed(1)} s`),
  ].join('\n');
}

function lastLines(text: string, n: number): string {
  return text.trim().split('\n').slice(-n).join(' | ');
}

function interrupted(signal: AbortSignal | undefined): boolean {
  return signal?.aborted === true;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
