import { connect, nanos } from 'nats';
import type { NatsConnection } from 'nats';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLAIMS_BUCKET_STREAM, EVENTS_STREAM, JOBS_STREAM, RUNS_BUCKET_STREAM, claimsBucket, eventConsumer, eventsStream, jobConsumer, jobsStream, runsBucket } from '../../infra/nats/jetstream.js';
import { startNatsServer } from '../../test/helpers/nats-server.js';
import type { NatsServer } from '../../test/helpers/nats-server.js';
import { silentLogger } from '../log.js';
import { openNats } from './nats-connect.js';
import { applyConsumer, applyStream, applyStreams } from './nats-infra.js';

let server: NatsServer;
let nc: NatsConnection;
beforeAll(async () => {
  server = await startNatsServer();
  nc = await connect({ servers: server.url });
});
afterAll(async () => {
  await nc?.close();
  await server?.stop();
});

describe('JetStream declarations (infra/nats/jetstream.ts) applied at start-up', () => {
  it('creates the streams and the buckets on the first start; a second start changes nothing', async () => {
    const first = await openNats({ nats_url: server.url, concurrency: 2 }, silentLogger());
    await first.close();
    expect(first.applied).toEqual({ [`stream ${JOBS_STREAM}`]: 'created', [`stream ${EVENTS_STREAM}`]: 'created', [`stream ${RUNS_BUCKET_STREAM}`]: 'created', [`stream ${CLAIMS_BUCKET_STREAM}`]: 'created' });
    const jsm = await nc.jetstreamManager();
    const before = await Promise.all([JOBS_STREAM, EVENTS_STREAM, RUNS_BUCKET_STREAM, CLAIMS_BUCKET_STREAM].map(async (s) => (await jsm.streams.info(s)).created));
    const second = await openNats({ nats_url: server.url, concurrency: 2 }, silentLogger());
    await second.close();
    expect(Object.values(second.applied)).toEqual(['unchanged', 'unchanged', 'unchanged', 'unchanged']);
    expect(await Promise.all([JOBS_STREAM, EVENTS_STREAM, RUNS_BUCKET_STREAM, CLAIMS_BUCKET_STREAM].map(async (s) => (await jsm.streams.info(s)).created))).toEqual(before);

    const jobs = (await jsm.streams.info(JOBS_STREAM)).config;
    expect(jobs).toMatchObject({ retention: 'workqueue', discard: 'new', subjects: ['vmbackup.jobs.>'], duplicate_window: jobsStream.duplicate_window });
    const events = (await jsm.streams.info(EVENTS_STREAM)).config;
    expect(events).toMatchObject({ retention: 'limits', subjects: ['vmbackup.events.>'], max_age: eventsStream.max_age });
    const runs = (await jsm.streams.info(RUNS_BUCKET_STREAM)).config;
    expect(runs).toMatchObject({ max_msgs_per_subject: 1, allow_rollup_hdrs: true, max_age: runsBucket.max_age });
    const claims = (await jsm.streams.info(CLAIMS_BUCKET_STREAM)).config;
    expect(claims).toMatchObject({ max_msgs_per_subject: 1, allow_rollup_hdrs: true, max_age: claimsBucket.max_age });
  });

  it('puts back the declared limits of a stream changed by hand', async () => {
    const jsm = await nc.jetstreamManager();
    await applyStreams(jsm);
    const info = (await jsm.streams.info(EVENTS_STREAM)).config;
    await jsm.streams.update(EVENTS_STREAM, { ...info, max_age: nanos(3 * 3600_000), max_bytes: 1 << 20 });
    expect((await jsm.streams.info(EVENTS_STREAM)).config.max_age).toBe(nanos(3 * 3600_000));
    expect(await applyStream(jsm, eventsStream)).toBe('updated');
    const after = (await jsm.streams.info(EVENTS_STREAM)).config;
    expect(after.max_age).toBe(eventsStream.max_age);
    expect(after.max_bytes).toBe(eventsStream.max_bytes);
    expect(await applyStream(jsm, eventsStream)).toBe('unchanged');
  });

  it('refuses to change what JetStream cannot change in place, naming stream and field', async () => {
    const jsm = await nc.jetstreamManager();
    await expect(applyStream(jsm, { ...jobsStream, retention: eventsStream.retention! })).rejects.toThrow(/stream VMBACKUP_JOBS has retention workqueue, vmbackup declares limits/);
  });

  it('applies a job consumer: created, then unchanged, then updated when the export limit changes', async () => {
    const jsm = await nc.jetstreamManager();
    await applyStreams(jsm);
    const decl = jobConsumer('vmbackup.jobs.export', { ackWaitMs: 30_000, maxDeliver: 4, maxAckPending: 2 });
    expect(await applyConsumer(jsm, JOBS_STREAM, decl)).toBe('created');
    expect(await applyConsumer(jsm, JOBS_STREAM, decl)).toBe('unchanged');
    expect(await applyConsumer(jsm, JOBS_STREAM, { ...decl, max_ack_pending: 3 })).toBe('updated');
    const info = await jsm.consumers.info(JOBS_STREAM, 'jobs-export');
    expect(info.config).toMatchObject({ filter_subject: 'vmbackup.jobs.export', max_ack_pending: 3, max_deliver: 4, ack_wait: nanos(30_000), ack_policy: 'explicit' });
    const coordinator = eventConsumer('coordinator', 'vmbackup.events.>');
    expect(await applyConsumer(jsm, EVENTS_STREAM, coordinator)).toBe('created');
    expect(await applyConsumer(jsm, EVENTS_STREAM, coordinator)).toBe('unchanged');
    expect((await jsm.consumers.info(EVENTS_STREAM, 'coordinator')).config.max_ack_pending).toBe(1);
  });
});
