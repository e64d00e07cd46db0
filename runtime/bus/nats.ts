import { DeliverPolicy, Events, RequestStrategy } from 'nats';
import type { Consumer, ConsumerMessages, JetStreamClient, JetStreamManager, JsMsg, NatsConnection, StoredMsg } from 'nats';
import type { Logger } from 'pino';
import { DEFAULT_MAX_ACK_PENDING, EVENTS_STREAM, JOBS_STREAM, eventConsumer, jobConsumer, jobConsumerName } from '../../infra/nats/jetstream.js';
import type { Bus, Closer, Consumption, Delivery, EventHandler, JobHandler, Settle, WorkOptions } from './bus.js';
import { ConnectionError } from '../errors.js';
import { applyConsumer } from './nats-infra.js';
import { JobClaims } from './nats-claims.js';

export interface NatsBusOptions {
  log?: Logger;
  /**
   * ack_wait of durable event consumers, and of job consumers when the runtime gives none
   * (WorkOptions.ackWaitMs): how long the delivery a dead process held waits. Default 30 s.
   */
  ackWaitMs?: number;
  /**
   * The global cap of a job subject: deliveries outstanding at once across every worker
   * (the consumer's max_ack_pending). `vmbackup.jobs.export` → the pool's `concurrency`.
   * Undefined: no cap beyond the coordinator's own gate.
   */
  maxAckPending?: (subject: string) => number | undefined;
  /** How long enqueue/publish keep trying while NATS is unreachable (restart). Default 60 s. */
  publishRetryMs?: number;
  /** Lifetime of a pull request: a lost one (server restart) is replaced this fast. Default 5 s. */
  pullExpiresMs?: number;
}

interface Worker {
  subject: string;
  consumer: Consumer;
  handler: JobHandler;
  /** The caller's attempt cap: a retry on the last attempt terminates the job. */
  maxDeliver: number | undefined;
  ackWaitMs: number;
  closed: boolean;
  fetches: Set<ConsumerMessages>;
  /**
   * Held by the one slot whose pull request is out. The other free slots wait here instead of
   * each keeping a request of its own on the consumer's leader: an idle worker then renews one
   * request per subject every `expires`, not `concurrency` of them (with their heartbeats, a
   * fifth of a cluster's messages). When a job arrives the slot that pulled it lets the next
   * free slot pull: a burst of jobs is taken one round trip apart.
   */
  pulling: Promise<void>;
}

interface Subscription {
  closed: boolean;
  messages: ConsumerMessages | undefined;
}

const EVENTS_PREFIX = 'vmbackup.events.';
/** How long one ack waits for the consumer leader's reply before it is sent again. */
const ACK_TIMEOUT_MS = 2_000;
const JOBS_PREFIX = 'vmbackup.jobs.';

/**
 * The JetStream binding of the bus (runtime/bus/bus.ts), for workers on one node or many.
 *
 * - Jobs: the `VMBACKUP_JOBS` work-queue stream; `work(subject)` binds the durable pull
 *   consumer `jobs-<fn>` (infra/nats/jetstream.ts) and runs `concurrency` pull loops, each
 *   holding one job at a time. The job's lease (ack_wait) is renewed with in-progress acks
 *   while its handler runs, so only a worker that died (or lost NATS longer than ack_wait)
 *   has its job redelivered. `ack` → ack, `term` → term, `retry` → nak(delay), or term on
 *   the caller's last attempt; acks and terms wait for the consumer leader's reply and are
 *   sent again through a leader election (a JetStream cluster losing a node). The consumer allows one delivery more than `maxDeliver`: the
 *   runtime answers that one (a job whose worker died on its last attempt) with a failure.
 * - Events: the `VMBACKUP_EVENTS` stream. `subscribe` with `durable` is a durable consumer
 *   with max_ack_pending 1 (one event at a time, in order, across every process that
 *   subscribes); a throw naks the event with a growing delay. Without `durable`, an ordered
 *   ephemeral consumer from the next event on.
 * - `enqueue`/`publish` carry the id as `Nats-Msg-Id` (dedup within the stream's duplicate
 *   window) and are retried while the server is unreachable.
 * - `request`/`reply`: core NATS request-many / subscription, JSON payloads.
 * - `notify`/`listen`: core NATS publish / subscription (progress signals): not stored.
 *
 * `close()` stops consuming, waits for running handlers to settle, and closes the connection.
 *
 * @example
 *   const bus = await NatsBus.create(nc, { maxAckPending: (s) => (s === 'vmbackup.jobs.export' ? 2 : undefined) });
 */
export class NatsBus implements Bus {
  private readonly loops = new Set<Promise<void>>();
  private readonly closers: Closer[] = [];
  /** The subjects this bus works, whose spent jobs its sweeper deletes. */
  private readonly spentSubjects = new Set<string>();
  private sweeper: ReturnType<typeof setInterval> | undefined;
  /** One delivery of a job at a time, across workers (runtime/bus/nats-claims.ts). */
  private readonly claims: JobClaims;
  private closed = false;
  /** False between a `disconnect` status of the connection and the next `reconnect`. */
  private linked = true;

  private constructor(
    readonly nc: NatsConnection,
    private readonly js: JetStreamClient,
    private readonly jsm: JetStreamManager,
    private readonly opts: NatsBusOptions,
  ) {
    this.claims = new JobClaims(nc, js, opts.log);
  }

  /** A bus on a connection whose streams exist already (openNats applies them). */
  static async create(nc: NatsConnection, opts: NatsBusOptions = {}): Promise<NatsBus> {
    // openNats has checked that JetStream answers; a check here could meet an election.
    const jsm = await nc.jetstreamManager({ checkAPI: false });
    const bus = new NatsBus(nc, nc.jetstream(), jsm, opts);
    void bus.watchConnection();
    return bus;
  }

  /**
   * False while the connection is known to be down: closed, or disconnected and not yet
   * reconnected (nats.js then holds requests until they time out, and drops what it held at
   * its next reconnect attempt). A server that hangs without closing the socket is only
   * noticed by the missed pings: until then this says true.
   */
  connected(): boolean {
    return this.linked && !this.nc.isClosed();
  }

  /** Follows the connection's status; ends when the connection closes. */
  private async watchConnection(): Promise<void> {
    try {
      for await (const s of this.nc.status()) {
        if (s.type === Events.Disconnect) this.linked = false;
        else if (s.type === Events.Reconnect) this.linked = true;
      }
    } catch {
      // the iterator only ends; nothing to report
    }
  }

  /**
   * Who consumes each job subject and durable subscription, from JetStream's consumer info.
   * What nats-server 2.9 (Debian's) tells reliably, checked against it:
   *
   * - `num_waiting`: pull requests waiting for a message. A worker with a free slot keeps
   *   one per subject (pulled again as soon as it expires, every 5 s), and the server drops
   *   a client's requests the moment its connection goes: > 0 means a live worker waits.
   * - `num_ack_pending`: deliveries not yet acked. A worker whose every slot is busy has no
   *   request waiting but holds jobs: counted as consumed. It cannot be told from a worker
   *   that died holding a job (the count stays after ack_wait until someone pulls): that
   *   case shows only as a run that stops moving (`vmbackup run --wait-timeout`).
   * - not used: `push_bound` (push consumers only; ours pull), `delivered.last_active`
   *   (moves on a delivery, not on in-progress acks, so a long export looks idle).
   * - a consumer that does not exist was never served: nobody consumes, and its queued jobs
   *   are counted on the stream.
   *
   * A slot re-pulling at the very instant of the look shows no waiting request: what looks
   * unconsumed is looked at again 250 ms later, and counts as consumed if it is then.
   */
  async consumption(jobs: readonly string[], durables: readonly string[]): Promise<Consumption[]> {
    this.assertOpen();
    const look = async (): Promise<Consumption[]> => {
      const onStream = jobs.length > 0 ? ((await this.jsm.streams.info(JOBS_STREAM, { subjects_filter: `${JOBS_PREFIX}>` })).state.subjects ?? {}) : {};
      const one = async (stream: string, durable: string, name: string): Promise<Consumption> => {
        try {
          const info = await this.jsm.consumers.info(stream, durable);
          return { name, consumed: info.num_waiting > 0 || info.num_ack_pending > 0, queued: info.num_pending };
        } catch (error) {
          if (!/consumer not found/i.test((error as Error).message)) throw error;
          return { name, consumed: false, queued: stream === JOBS_STREAM ? (onStream[name] ?? 0) : 0 };
        }
      };
      return Promise.all([...jobs.map((j) => one(JOBS_STREAM, jobConsumerName(j), j)), ...durables.map((d) => one(EVENTS_STREAM, d, d))]);
    };
    const first = await look();
    if (first.every((c) => c.consumed)) return first;
    await sleep(250);
    const second = await look();
    return second.map((c, i) => (first[i]!.consumed ? { ...c, consumed: true } : c));
  }

  async enqueue(subject: string, data: unknown, opts: { id: string }): Promise<void> {
    await this.jsPublish(subject, data, opts.id);
  }

  async publish(subject: string, data: unknown, opts: { id?: string } = {}): Promise<void> {
    await this.jsPublish(subject, data, opts.id);
  }

  async work(subject: string, opts: WorkOptions, handler: JobHandler): Promise<Closer> {
    this.assertOpen();
    if (!subject.startsWith(JOBS_PREFIX)) throw new Error(`work(${subject}): job subjects are ${JOBS_PREFIX}<fn>`);
    const ackWaitMs = opts.ackWaitMs ?? this.opts.ackWaitMs ?? 30_000;
    const decl = jobConsumer(subject, {
      ackWaitMs,
      // One more than the caller's attempts: see the class comment.
      maxDeliver: opts.maxDeliver !== undefined ? opts.maxDeliver + 1 : -1,
      maxAckPending: this.opts.maxAckPending?.(subject) ?? DEFAULT_MAX_ACK_PENDING,
    });
    await untilAnswered(`consumer ${decl.durable_name}`, () => applyConsumer(this.jsm, JOBS_STREAM, decl), { log: this.opts.log });
    const consumer = await untilAnswered(`consumer ${decl.durable_name}`, () => this.js.consumers.get(JOBS_STREAM, decl.durable_name), { log: this.opts.log });
    const worker: Worker = { subject, consumer, handler, maxDeliver: opts.maxDeliver, ackWaitMs, closed: false, fetches: new Set(), pulling: Promise.resolve() };
    const loops: Promise<void>[] = [];
    for (let i = 0; i < Math.max(1, opts.concurrency); i++) loops.push(this.track(this.pullLoop(worker, decl)));
    this.sweepSpent(subject);
    const closer: Closer = {
      close: async () => {
        this.spentSubjects.delete(subject);
        worker.closed = true;
        for (const f of worker.fetches) f.stop();
        await Promise.all(loops);
      },
    };
    this.closers.push(closer);
    return closer;
  }

  /**
   * Deletes the jobs of `subject` that its consumer has acked but the stream still holds: those
   * at or below the consumer's ack floor, which it never delivers again. nats-server before
   * 2.10 leaves such jobs on a replicated work queue: all of them once a stream was raised from
   * one replica to three (nats-server#3953; `--replicas 3` on a server that had one), and now
   * and then one acked as a leader changed (what nats-server#5270 cleans up). Left there, they
   * count as queued until `max_age`, and a consumer made anew would deliver them again: old
   * jobs would run a second time. Returns how many it deleted, of every subject given.
   */
  async removeSpent(subjects: readonly string[]): Promise<number> {
    this.assertOpen();
    if (subjects.length === 0) return 0;
    // One look at the stream for every subject: an idle queue costs this request alone.
    const { state } = await this.jsm.streams.info(JOBS_STREAM, { subjects_filter: `${JOBS_PREFIX}>` });
    let removed = 0;
    for (const subject of subjects) {
      if ((state.subjects?.[subject] ?? 0) === 0) continue;
      const floor = (await this.jsm.consumers.info(JOBS_STREAM, jobConsumerName(subject))).ack_floor.stream_seq;
      let deleted = 0;
      for (let seq = state.first_seq; seq <= floor; ) {
        // The next job of this subject from `seq` on (STREAM.MSG.GET's next_by_subj, nats-server ≥ 2.9).
        const next = await this.jobAt({ seq, next_by_subj: subject } as unknown as { seq: number });
        if (next === undefined || next.seq > floor) break;
        // Another worker may have deleted it first.
        if (await this.jsm.streams.deleteMessage(JOBS_STREAM, next.seq, false).catch(() => false)) deleted++;
        seq = next.seq + 1;
      }
      if (deleted > 0) {
        this.opts.log?.warn({ subject, removed: deleted, ackFloor: floor }, `removed ${deleted} job(s) of ${subject} that were acked but left on the stream by nats-server`);
      }
      removed += deleted;
    }
    return removed;
  }

  /** The job the query finds on the work queue, or undefined when there is none (acked, or never there). */
  private async jobAt(query: { seq: number }): Promise<StoredMsg | undefined> {
    return this.jsm.streams.getMessage(JOBS_STREAM, query).catch((error: unknown) => {
      if (/no message found/i.test((error as Error).message)) return undefined;
      throw error;
    });
  }

  /**
   * Adds `subject` to the worked subjects whose spent jobs go (removeSpent): one sweep for the
   * whole bus, every ack wait, from the first `work` on.
   */
  private sweepSpent(subject: string): void {
    this.spentSubjects.add(subject);
    if (this.sweeper !== undefined) return;
    this.sweeper = setInterval(() => {
      this.removeSpent([...this.spentSubjects]).catch((error: unknown) => {
        this.opts.log?.debug({ err: error }, `spent jobs not looked at: ${(error as Error).message}`);
      });
    }, this.opts.ackWaitMs ?? 30_000);
    this.sweeper.unref();
  }

  async subscribe(pattern: string, opts: { durable?: string }, handler: EventHandler): Promise<Closer> {
    this.assertOpen();
    if (!pattern.startsWith(EVENTS_PREFIX)) throw new Error(`subscribe(${pattern}): events are ${EVENTS_PREFIX}>`);
    const sub: Subscription = { closed: false, messages: undefined };
    let loop: Promise<void>;
    if (opts.durable !== undefined) {
      const ackWaitMs = this.opts.ackWaitMs ?? 30_000;
      await untilAnswered(`consumer ${opts.durable}`, () => applyConsumer(this.jsm, EVENTS_STREAM, eventConsumer(opts.durable!, pattern, { ackWaitMs })), { log: this.opts.log });
      const consumer = await untilAnswered(`consumer ${opts.durable}`, () => this.js.consumers.get(EVENTS_STREAM, opts.durable!), { log: this.opts.log });
      loop = this.track(this.durableLoop(sub, consumer, handler, ackWaitMs));
    } else {
      // From the next event on, as a subscription that just started would see them.
      const { state } = await untilAnswered(`stream ${EVENTS_STREAM}`, () => this.jsm.streams.info(EVENTS_STREAM), { log: this.opts.log });
      const consumer = await this.js.consumers.get(EVENTS_STREAM, {
        filterSubjects: pattern,
        deliver_policy: DeliverPolicy.StartSequence,
        opt_start_seq: state.last_seq + 1,
      });
      const messages = await consumer.consume();
      sub.messages = messages;
      loop = this.track(this.orderedLoop(sub, messages, handler));
    }
    const closer: Closer = {
      close: async () => {
        sub.closed = true;
        sub.messages?.stop();
        await loop;
      },
    };
    this.closers.push(closer);
    return closer;
  }

  async request(subject: string, data: unknown, opts: { timeoutMs: number; maxReplies?: number }): Promise<unknown[]> {
    this.assertOpen();
    const replies: unknown[] = [];
    try {
      const it = await this.nc.requestMany(subject, encode(data), {
        maxWait: opts.timeoutMs,
        ...(opts.maxReplies !== undefined ? { strategy: RequestStrategy.Count, maxMessages: opts.maxReplies } : { strategy: RequestStrategy.Timer }),
      });
      for await (const m of it) replies.push(decode(m.data));
    } catch (error) {
      // Nobody listens: no replies, as the interface says.
      if ((error as { code?: string }).code === '503') return replies;
      throw error;
    }
    return replies;
  }

  notify(subject: string, data: unknown): void {
    if (this.closed || this.nc.isClosed()) return;
    try {
      this.nc.publish(subject, encode(data));
    } catch (error) {
      this.opts.log?.debug({ err: error, subject }, `signal on ${subject} dropped: ${(error as Error).message}`);
    }
  }

  async listen(pattern: string, handler: (subject: string, data: unknown) => void): Promise<Closer> {
    this.assertOpen();
    const sub = this.nc.subscribe(pattern, {
      callback: (err, msg) => {
        if (err !== null) return;
        let data: unknown;
        try {
          data = decode(msg.data);
        } catch {
          return; // not ours: signals are JSON
        }
        handler(msg.subject, data);
      },
    });
    const closer: Closer = { close: async () => sub.unsubscribe() };
    this.closers.push(closer);
    return closer;
  }

  async reply(subject: string, handler: (data: unknown) => Promise<unknown>): Promise<Closer> {
    this.assertOpen();
    const sub = this.nc.subscribe(subject, {
      callback: (err, msg) => {
        if (err !== null) return;
        handler(decode(msg.data)).then(
          (answer) => void msg.respond(encode(answer)),
          (error: unknown) => this.opts.log?.warn({ err: error, subject }, `reply on ${subject} failed: ${(error as Error).message}`),
        );
      },
    });
    const closer: Closer = { close: async () => sub.unsubscribe() };
    this.closers.push(closer);
    return closer;
  }

  /** Stops consuming, lets running handlers settle, flushes and closes the connection. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.sweeper);
    await Promise.all(this.closers.map((c) => c.close().catch(() => {})));
    await Promise.all([...this.loops]);
    this.claims.close();
    if (!this.nc.isClosed()) {
      await this.nc.flush().catch(() => {});
      await this.nc.close().catch(() => {});
    }
  }

  private assertOpen(): void {
    if (this.closed) throw new Error('bus is closed');
  }

  private track(p: Promise<void>): Promise<void> {
    this.loops.add(p);
    void p.finally(() => this.loops.delete(p));
    return p;
  }

  /** One slot of a worker: pulls one job, handles it, settles it, pulls the next. */
  private async pullLoop(worker: Worker, decl: ReturnType<typeof jobConsumer>): Promise<void> {
    const expires = this.opts.pullExpiresMs ?? 5_000;
    let failures = 0;
    while (!worker.closed && !this.nc.isClosed()) {
      let job: JsMsg | undefined;
      // Wait for the slot whose request is out, then take the turn.
      const previous = worker.pulling;
      let done!: () => void;
      worker.pulling = new Promise<void>((resolve) => (done = resolve));
      await previous;
      try {
        if (worker.closed || this.nc.isClosed()) break;
        const batch = await worker.consumer.fetch({ max_messages: 1, expires });
        worker.fetches.add(batch);
        try {
          for await (const m of batch) job = m;
        } finally {
          worker.fetches.delete(batch);
        }
        failures = 0;
      } catch (error) {
        if (worker.closed || this.nc.isClosed()) break;
        failures++;
        const message = (error as Error).message;
        this.opts.log?.debug({ err: error, subject: worker.subject }, `pull from ${decl.durable_name} failed: ${message}`);
        if (/consumer not found|consumer deleted/i.test(message)) {
          await applyConsumer(this.jsm, JOBS_STREAM, decl).catch(() => {});
        }
        await sleep(Math.min(100 * 2 ** failures, 2_000));
        continue;
      } finally {
        done();
      }
      if (job === undefined) continue;
      if (worker.closed) {
        quietly(() => job.nak()); // arrived while closing: hand it straight back
        break;
      }
      await this.deliver(worker, job);
    }
  }

  private async deliver(worker: Worker, m: JsMsg): Promise<void> {
    const attempt = m.info.deliveryCount;
    const leaseMs = worker.ackWaitMs;
    const seq = m.info.streamSequence;
    const acquired = await this.claims.acquire(JobClaims.key(seq, m.info.timestampNanos), {
      leaseMs,
      keepDelivery: () => quietly(() => m.working()),
      stillQueued: async () => (await this.jobAt({ seq })) !== undefined,
      what: `${m.subject} #${seq}`,
    });
    if (acquired.kind === 'gone') {
      // Another delivery ran it, and it is done: this one was a copy, dropped unrun.
      this.opts.log?.info(`${m.subject} #${seq}: run by ${acquired.by}, which settled it; this copy is dropped`);
      quietly(() => m.ack());
      return;
    }
    const { claim } = acquired;
    let lastProgress = Date.now();
    const throttleMs = Math.max(50, Math.min(1_000, leaseMs / 4));
    const delivery: Delivery = {
      subject: m.subject,
      data: decode(m.data),
      attempt,
      working: () => {
        const now = Date.now();
        if (now - lastProgress < throttleMs) return;
        lastProgress = now;
        quietly(() => m.working());
      },
    };
    // The lease is held while this process runs the handler; the handler's heartbeats
    // renew it sooner. Redelivery is for dead workers, never for a slow live one.
    const keepalive = setInterval(() => {
      lastProgress = Date.now();
      quietly(() => m.working());
    }, Math.max(50, Math.floor(leaseMs / 3)));
    let settle: Settle;
    try {
      settle = await worker.handler(delivery);
    } catch (error) {
      // The runtime maps handler errors itself; a throw past it is a bug there (or NATS
      // unreachable while publishing the outcome): deliver the job again.
      this.opts.log?.error({ err: error, subject: m.subject }, `job on ${m.subject} not settled: ${(error as Error).message}`);
      settle = { kind: 'retry', delayMs: 1_000 };
    } finally {
      clearInterval(keepalive);
    }
    // A retry releases the claim before the job goes back: a copy standing by may take it.
    await claim.settle(settle);
    // An ack or term is confirmed by the consumer's leader, and sent again until it is: one
    // lost in a leader election would hold the job (and, for export, a slot of the global
    // limit) for a whole ack_wait, then run it a second time. A nak may be lost: the job
    // then comes back after ack_wait, which is what the nak asked for, only later.
    if (settle.kind === 'ack') await this.confirmAck(m, 'ack', leaseMs, worker.subject);
    else if (settle.kind === 'term' || (worker.maxDeliver !== undefined && attempt >= worker.maxDeliver)) await this.confirmAck(m, 'term', leaseMs, worker.subject);
    else quietly(() => m.nak(settle.delayMs));
  }

  /**
   * Acks (or terminates) a delivery and waits for the consumer leader's reply, sending it
   * again (acks are idempotent) while no leader answers — during an election, or while this
   * client reconnects to another node — for up to `withinMs` (the lease: past it the server
   * has redelivered anyway). Gives up quietly on a closed connection.
   */
  private async confirmAck(m: JsMsg, kind: 'ack' | 'term', withinMs: number, subject: string): Promise<void> {
    // nats.js keeps the ack subject on its message (JsMsg does not declare it).
    const reply = (m as JsMsg & { reply?: string }).reply;
    if (reply === undefined || reply === '') {
      quietly(() => (kind === 'ack' ? m.ack() : m.term()));
      return;
    }
    const payload = encoder.encode(kind === 'ack' ? '+ACK' : '+TERM');
    const deadline = Date.now() + Math.max(withinMs, 5_000);
    for (let attempt = 1; ; attempt++) {
      try {
        await this.nc.request(reply, payload, { timeout: ACK_TIMEOUT_MS });
        if (attempt > 1) this.opts.log?.debug({ subject }, `${kind} of a ${subject} delivery confirmed after ${attempt} tries`);
        return;
      } catch (error) {
        if (this.nc.isClosed()) return;
        if (Date.now() > deadline) {
          this.opts.log?.warn({ err: error, subject }, `${kind} of a ${subject} delivery not confirmed within ${Math.round(withinMs / 1000)} s (${(error as Error).message}): it may be delivered again`);
          return;
        }
        await sleep(Math.min(250 * attempt, 2_000));
      }
    }
  }

  private async durableLoop(sub: Subscription, consumer: Consumer, handler: EventHandler, ackWaitMs: number): Promise<void> {
    let failures = 0;
    while (!sub.closed && !this.nc.isClosed()) {
      try {
        // A pull request lives on the consumer's leader and dies with it: a short expiry
        // (heartbeats at half of it) has a new leader asked within seconds, not 30 s.
        const messages = await consumer.consume({ max_messages: 64, expires: this.opts.pullExpiresMs ?? 5_000 });
        sub.messages = messages;
        if (sub.closed) messages.stop();
        for await (const m of messages) {
          if (sub.closed) {
            quietly(() => m.nak());
            break;
          }
          failures = 0;
          const keepalive = setInterval(() => quietly(() => m.working()), Math.max(50, Math.floor(ackWaitMs / 3)));
          let handled = false;
          try {
            await handler(m.subject, decode(m.data));
            handled = true;
          } catch {
            // The handler said it once; deliver this event again, later and later. The next
            // event waits behind it (max_ack_pending 1), so the order holds.
            quietly(() => m.nak(Math.min(100 * 2 ** (m.info.deliveryCount - 1), 10_000)));
          } finally {
            clearInterval(keepalive);
          }
          // Confirmed, as a job's: with max_ack_pending 1, a lost ack would hold every
          // run's next event for a whole ack_wait.
          if (handled) await this.confirmAck(m, 'ack', ackWaitMs, m.subject);
        }
      } catch (error) {
        if (sub.closed || this.nc.isClosed()) break;
        failures++;
        this.opts.log?.debug({ err: error }, `event consumer: ${(error as Error).message}`);
        await sleep(Math.min(100 * 2 ** failures, 2_000));
      }
    }
  }

  private async orderedLoop(sub: Subscription, messages: ConsumerMessages, handler: EventHandler): Promise<void> {
    try {
      for await (const m of messages) {
        const data = decode(m.data);
        for (let attempt = 1; !sub.closed; attempt++) {
          try {
            await handler(m.subject, data);
            break;
          } catch {
            await sleep(Math.min(100 * 2 ** (attempt - 1), 5_000));
          }
        }
        if (sub.closed) break;
      }
    } catch (error) {
      if (!sub.closed) this.opts.log?.warn({ err: error }, `event subscription ended: ${(error as Error).message}`);
    }
  }

  private async jsPublish(subject: string, data: unknown, id: string | undefined): Promise<void> {
    this.assertOpen();
    const payload = encode(data);
    const deadline = Date.now() + (this.opts.publishRetryMs ?? 60_000);
    for (let attempt = 1; ; attempt++) {
      try {
        await this.js.publish(subject, payload, id !== undefined ? { msgID: id } : {});
        return;
      } catch (error) {
        if (!isTransient(error) || Date.now() > deadline || this.nc.isClosed()) throw error;
        this.opts.log?.debug({ err: error, subject }, `publish to ${subject} failed (${(error as Error).message}); retrying`);
        await sleep(Math.min(250 * attempt, 2_000));
      }
    }
  }
}

/**
 * Errors of an unreachable or restarting server, or of a JetStream cluster electing a leader
 * (nobody answers for a stream, or JetStream says it is temporarily unavailable), as opposed
 * to a refusal (stream full, wrong revision …).
 */
export function isTransient(error: unknown): boolean {
  const code = (error as { code?: string }).code;
  if (code === 'TIMEOUT' || code === '503' || code === 'DISCONNECT' || code === 'CONNECTION_REFUSED') return true;
  return /timeout|no responders|disconnect|JetStream not (enabled|available)|temporarily unavailable/i.test((error as Error).message ?? '');
}

/**
 * Runs a JetStream request again while it fails with a transient error (isTransient), for up
 * to `withinMs` (default 60 s: a leader election takes seconds, a node restart a minute at
 * most); then throws a ConnectionError naming `what` and the last error, so that a command
 * fails with the reason instead of waiting. Only for requests that are safe to repeat.
 *
 * @example await untilAnswered('reading run 2026…', () => kv.get(key))
 */
export async function untilAnswered<T>(
  what: string,
  fn: () => Promise<T>,
  opts: { withinMs?: number; log?: Logger; retryIf?: (error: unknown) => boolean } = {},
): Promise<T> {
  const withinMs = opts.withinMs ?? 60_000;
  const deadline = Date.now() + withinMs;
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (error) {
      if (!(opts.retryIf ?? isTransient)(error)) throw error;
      if (Date.now() > deadline) {
        throw new ConnectionError(
          'NATS_UNAVAILABLE',
          `${what}: JetStream did not answer for ${Math.round(withinMs / 1000)} s (${(error as Error).message}); in a cluster, is a majority of the nodes up?`,
          {},
          { cause: error },
        );
      }
      if (attempt === 1) opts.log?.debug({ err: error }, `${what}: ${(error as Error).message}; trying again`);
      await sleep(Math.min(250 * attempt, 2_000));
    }
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function encode(data: unknown): Uint8Array {
  return encoder.encode(data === undefined ? '' : JSON.stringify(data));
}

/** JSON payloads; anything else is passed on as text (the runtime's validation rejects it). */
function decode(bytes: Uint8Array): unknown {
  if (bytes.length === 0) return undefined;
  const text = decoder.decode(bytes);
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** Acks and in-progress acks are fire-and-forget; on a closed connection they throw. */
function quietly(f: () => void): void {
  try {
    f();
  } catch {
    // the connection is gone: the server redelivers after ack_wait
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// openNats (connect with the settings, apply the streams, return bus + store) lives beside
// this file; re-exported so `runtime/bus/nats.js` is the one entry of the NATS binding.
export { openNats } from './nats-connect.js';
export type { NatsRuntime, NatsSettings, OpenNatsOptions } from './nats-connect.js';
