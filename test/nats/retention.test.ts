import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { JetStreamManager, NatsConnection } from 'nats';
import { EVENTS_STREAM, JOBS_STREAM, RUNS_BUCKET, RUNS_BUCKET_STREAM, RUN_FOOTPRINT, retainedBound, streams } from '../../infra/nats/jetstream.js';
import { NatsBus } from '../../runtime/bus/nats.js';
import { NatsRunStore } from '../../runtime/run/nats-store.js';
import { newRunId, startRun } from '../../runtime/run/start.js';
import { runOptions } from '../helpers/jobs.js';
import { waitFor } from '../sim/test-helpers.js';
import { startRig } from './rig.js';
import { pool, vm } from '../sim/fixtures.js';
import type { Rig } from './rig.js';

/**
 * JetStream holds a bounded amount: fifty nightly runs on a real nats-server, with the
 * declared streams and bucket (infra/nats/jetstream.ts) as they are but for their ages,
 * which run on a compressed clock (a day is DAY_MS). Each run's footprint stays within
 * RUN_FOOTPRINT, the streams within retainedBound (the arithmetic of infra/nats/README.md),
 * and what is older than its max_age is gone: events after 7 days, run state after 30, and
 * no job stays queued.
 */
const DAY_MS = 1_000;
const DAY_NS = 86_400e9;
const VMS = ['night-a', 'night-b', 'night-c'];
const NIGHTS = 50;

let rig: Rig;
let nc: NatsConnection;
let jsm: JetStreamManager;
beforeAll(async () => {
  rig = await startRig(pool(VMS.map((name) => vm(name, 'Running', 1))));
  await rig.worker();
  nc = await rig.client();
  jsm = await nc.jetstreamManager();
  // The worker applied the declarations; the same, with every age on the compressed clock.
  for (const decl of streams) {
    const scale = (ns: number | undefined) => (ns === undefined ? undefined : Math.round((ns / DAY_NS) * DAY_MS * 1e6));
    const { config } = await jsm.streams.info(decl.name);
    // The duplicate window (ids kept in memory, not in the store) may not exceed max_age.
    await jsm.streams.update(decl.name, { ...config, max_age: scale(decl.max_age)!, duplicate_window: Math.min(decl.duplicate_window!, scale(decl.max_age)!) });
  }
});
afterAll(async () => {
  await rig?.close();
});

interface Night {
  runId: string;
  vms: number;
  /** When its state was last written (the run finished). */
  finishedAt: number;
}

/**
 * Events on `filter`, and what phases tried again added to them: a delivery after the first (a
 * retry after a failure, or a redelivery) starts the phase again. RUN_FOOTPRINT is a run
 * without them; infra/nats/README.md says a VM tried again adds its events again.
 */
async function scanEvents(filter: string): Promise<{ lines: string[]; again: { msgs: number; bytes: number } }> {
  const lines: string[] = [];
  const again = { msgs: 0, bytes: 0 };
  const { state } = await jsm.streams.info(EVENTS_STREAM, { subjects_filter: filter });
  if (Object.keys(state.subjects ?? {}).length === 0) return { lines, again };
  const consumer = await nc.jetstream().consumers.get(EVENTS_STREAM, { filterSubjects: filter });
  for await (const m of await consumer.fetch({ max_messages: 10_000, expires: 2_000 })) {
    const { attempt } = m.json<{ attempt?: number }>();
    lines.push(`${m.subject.split('.').slice(3).join('.')}${attempt !== undefined ? ` #${attempt}` : ''}`);
    if (m.subject.endsWith('.started') && attempt !== undefined && attempt > 1) {
      again.msgs++;
      // What a message costs in the stream: its subject, headers and data, and the store's record.
      again.bytes += m.subject.length + (m.headers?.toString().length ?? 0) + m.data.length + 64;
    }
    if (m.info.pending === 0) break;
  }
  return { lines, again };
}

async function usage(stream: string): Promise<{ msgs: number; bytes: number; firstTs: number }> {
  const { state } = await jsm.streams.info(stream);
  return { msgs: state.messages, bytes: state.bytes, firstTs: state.messages > 0 ? Date.parse(state.first_ts) : Date.now() };
}

describe('JetStream after fifty nightly runs', () => {
  it('keeps a week of events and a month of run state, each run within its footprint, and nothing queued', async () => {
    const bus = await NatsBus.create(nc);
    const store = await NatsRunStore.open(nc.jetstream());
    const options = runOptions({ backupDir: rig.ws.exports, vmExports: [], concurrency: 2 });
    const nights: Night[] = [];
    const first = new Date('2026-01-01T01:00:00Z');
    let lastStart = -Infinity;
    for (let n = 0; n < NIGHTS; n++) {
      // At most one run a day, as the bound assumes: a night starts a day after the last one
      // started, or as soon as that one finished when it ran longer. (Catching up with a
      // schedule instead would put several runs in one day after a slow stretch.)
      const wait = lastStart + DAY_MS - Date.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      lastStart = Date.now();
      const startedAt = new Date(first.getTime() + n * 86_400_000);
      const runId = newRunId(startedAt);
      // The first night backs up one VM, the others all three: what a VM adds is their difference.
      const vms = n === 0 ? 1 : VMS.length;
      const before = { events: await usage(EVENTS_STREAM), runs: await usage(RUNS_BUCKET_STREAM) };
      expect(await startRun(store, bus, { runId, options: { ...options, vmExports: VMS.slice(0, vms) }, startedAt })).toBe(true);
      const header = await waitFor(async () => {
        const h = (await store.header(runId))?.header;
        return h?.status === 'finished' ? h : undefined;
      }, 60_000, `night ${n + 1} finished`);
      const jobs = await store.allJobs(runId);
      expect(jobs.map((j) => [j.label, j.status])).toEqual(VMS.slice(0, vms).map((name) => [name, 'success']));
      expect(header.jobIds).toHaveLength(vms);
      nights.push({ runId, vms, finishedAt: Date.now() });
      if (n < 2) {
        // The first nights are young: nothing has expired yet, so the growth is this run's.
        const after = { events: await usage(EVENTS_STREAM), runs: await usage(RUNS_BUCKET_STREAM) };
        const footprint = { events: { msgs: after.events.msgs - before.events.msgs, bytes: after.events.bytes - before.events.bytes }, runs: { msgs: after.runs.msgs - before.runs.msgs, bytes: after.runs.bytes - before.runs.bytes } };
        const { lines, again } = await scanEvents(`vmbackup.events.${runId}.>`);
        const why = `night ${n + 1}'s events: ${lines.join(', ')}`;
        expect(lines, why).toHaveLength(footprint.events.msgs);
        expect(footprint.events.msgs, why).toBeLessThanOrEqual(RUN_FOOTPRINT.events.perRun.msgs + vms * RUN_FOOTPRINT.events.perVm.msgs + again.msgs);
        expect(footprint.events.bytes, why).toBeLessThanOrEqual(RUN_FOOTPRINT.events.perRun.bytes + vms * RUN_FOOTPRINT.events.perVm.bytes + again.bytes);
        expect(footprint.runs.msgs).toBeLessThanOrEqual(RUN_FOOTPRINT.runs.perRun.msgs + vms * RUN_FOOTPRINT.runs.perVm.msgs);
        expect(footprint.runs.bytes).toBeLessThanOrEqual(RUN_FOOTPRINT.runs.perRun.bytes + vms * RUN_FOOTPRINT.runs.perVm.bytes);
      }
    }
    // The server expires messages on a timer: a second's slack (more than a day on this
    // clock) for what it has not reached yet.
    const SLACK_MS = 1_500;
    // Nothing older than max_age is kept once expiry has passed: counted from then on, so
    // that what the timer has not reached yet is not counted as held.
    const expired = (stream: string, maxAgeMs: number) =>
      waitFor(async () => {
        const u = await usage(stream);
        return Date.now() - u.firstTs <= maxAgeMs ? u : undefined;
      }, SLACK_MS, `${stream} to hold nothing older than ${maxAgeMs / DAY_MS} days`);
    const events = await expired(EVENTS_STREAM, 7 * DAY_MS);
    const runs = await expired(RUNS_BUCKET_STREAM, 30 * DAY_MS);
    // What the kept runs tried again is kept too.
    const { again } = await scanEvents('vmbackup.events.*.*.started');
    const now = Date.now();
    const bound = retainedBound({ vms: VMS.length, runsPerDay: 1 });
    expect(events.msgs).toBeLessThanOrEqual(bound.events.msgs + again.msgs);
    expect(events.bytes).toBeLessThanOrEqual(bound.events.bytes + again.bytes);
    expect(runs.msgs).toBeLessThanOrEqual(bound.runs.msgs);
    expect(runs.bytes).toBeLessThanOrEqual(bound.runs.bytes);
    // What is younger is kept, whole: the last week's summaries, the last month's state.
    const keys: string[] = [];
    const kv = await nc.jetstream().views.kv(RUNS_BUCKET, { bindOnly: true });
    for await (const k of await kv.keys('*')) keys.push(k);
    for (const night of nights) {
      const age = now - night.finishedAt;
      const summary = await jsm.streams.getMessage(EVENTS_STREAM, { last_by_subj: `vmbackup.events.${night.runId}.run.finished` }).catch(() => undefined);
      const state = await store.header(night.runId);
      if (age > 7 * DAY_MS + SLACK_MS) expect(summary, `night ${night.runId}: events`).toBeUndefined();
      if (age < 7 * DAY_MS - SLACK_MS) expect(summary, `night ${night.runId}: events`).toBeDefined();
      if (age > 30 * DAY_MS + SLACK_MS) {
        expect(state, `night ${night.runId}: state`).toBeUndefined();
        expect(keys).not.toContain(night.runId);
      }
      if (age < 30 * DAY_MS - SLACK_MS) expect((await store.allJobs(night.runId)).length, `night ${night.runId}: state`).toBe(night.vms);
    }
    // The oldest nights are gone from both.
    expect(await store.header(nights[0]!.runId)).toBeUndefined();
    // Every job was acked: the work queue is empty.
    expect((await usage(JOBS_STREAM)).msgs).toBe(0);
  }, 300_000);
});
