import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import type { JetStreamClient, KV, NatsConnection, Subscription } from 'nats';
import type { Logger } from 'pino';
import { CLAIMS_BUCKET } from '../../infra/nats/jetstream.js';
import type { Settle } from './bus.js';
import { untilAnswered } from './nats.js';

/**
 * One delivery of a job at a time, across workers.
 *
 * JetStream may hand a job to a second worker while the first still runs it: when the
 * consumer's leader dies, the new leader may not know of a delivery made just before
 * (nats-server replicates a consumer's delivered state after the fact), so it delivers the
 * job again at once. Two exports of one snapshot then race, and the loser's clean-up
 * destroys what the winner exports from; two snapshots of one VM leave one behind.
 *
 * So a delivery first claims its job in the `vmbackup-claims` bucket, under the job's
 * stream sequence and timestamp (unique to the message): one write, a create that fails
 * when the key exists. Whoever created the key runs the job; the key names the holder and
 * a core NATS subject on which its process answers whether it still runs the job. A
 * delivery that finds the key held stands by: it keeps its own delivery leased and, every
 * half second,
 * - drops its delivery once the job is gone from the work queue (the holder acked or
 *   terminated it);
 * - claims the job and runs it when the holder asked for a retry (it deleted the key);
 * - takes the key over (compare-and-set on its revision) and runs the job when the holder
 *   says it no longer runs it, or has not answered for `max(5 s, lease / 3)` (its process
 *   is gone; a live one cut from NATS reconnects within a second or two).
 * Nothing is written while a job runs or when it ends well: the queue says it is done.
 *
 * Whatever cannot be decided because the bucket does not answer runs the job as before,
 * with a warning: a claim is a guard against running a job twice at once, never a reason
 * for not running it.
 */
export interface ClaimValue {
  holder: string;
  /** Where the holder's process answers `1` while it runs the job (the key as the payload). */
  ping?: string;
}

export type Acquired =
  /** This delivery runs the job, then says how it settled. */
  | { kind: 'run'; claim: Claim }
  /** Another delivery ran the job, and it is gone from the queue: drop this one. */
  | { kind: 'gone'; by: string };

export interface Claim {
  /** How the delivery settled: a retry releases the key; every outcome ends the holding. */
  settle(settle: Settle): Promise<void>;
}

/** A claim that guards nothing: when the bucket is missing or does not answer. */
const UNGUARDED: Claim = { settle: async () => {} };

export interface AcquireOptions {
  /** The job's lease (ack_wait): how long the bucket may take to answer; a holder silent for a third of it (5 s at least) is dead. */
  leaseMs: number;
  /** Keeps this delivery's own lease while it stands by. */
  keepDelivery(): void;
  /** Whether the job is still on the work queue (not acked by anyone). */
  stillQueued(): Promise<boolean>;
  /** Names the job in log lines: `vmbackup.jobs.export #123`. */
  what: string;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export class JobClaims {
  private kv: Promise<KV | undefined> | undefined;
  private warned = false;
  /** This process, in every holder it writes. */
  private readonly self = `${hostname()}:${process.pid}`;
  /** Where this process answers for the keys it holds. */
  private readonly pingSubject = `vmbackup.claims.ping.${randomBytes(8).toString('hex')}`;
  private pings: Subscription | undefined;
  /** The keys this process's deliveries hold now. */
  private readonly holding = new Set<string>();

  constructor(
    private readonly nc: NatsConnection,
    private readonly js: JetStreamClient,
    private readonly log: Logger | undefined,
    /** How often a standing-by delivery looks again. */
    private readonly pollMs = 500,
  ) {}

  /** Stops answering for held keys (the bus is closing). */
  close(): void {
    this.pings?.unsubscribe();
  }

  private answerPings(): void {
    if (this.pings !== undefined) return;
    this.pings = this.nc.subscribe(this.pingSubject, {
      callback: (_error, msg) => {
        if (msg.reply) msg.respond(encoder.encode(this.holding.has(decoder.decode(msg.data)) ? '1' : '0'));
      },
    });
  }

  /** Whether the holder of `value` runs the job of `key`: yes, no, or no answer. */
  private async holderAnswers(value: ClaimValue, key: string): Promise<'yes' | 'no' | 'silent'> {
    if (value.ping === undefined) return 'silent';
    try {
      const reply = await this.nc.request(value.ping, encoder.encode(key), { timeout: 1_000 });
      return decoder.decode(reply.data) === '1' ? 'yes' : 'no';
    } catch {
      return 'silent'; // no responders (its connection is gone) or no answer in time
    }
  }

  /** The key of a job: its stream sequence and its timestamp (a stream made anew reuses sequences). */
  static key(seq: number, timestampNanos: number): string {
    return `job.${seq}.${timestampNanos}`;
  }

  private bucket(): Promise<KV | undefined> {
    this.kv ??= this.js.views.kv(CLAIMS_BUCKET, { bindOnly: true, allow_direct: false }).catch((error: unknown) => {
      this.unguarded(`the ${CLAIMS_BUCKET} bucket is missing (${(error as Error).message})`);
      this.kv = undefined; // look again next time: a worker of this version may create it
      return undefined;
    });
    return this.kv;
  }

  private unguarded(why: string): void {
    if (this.warned) return;
    this.warned = true;
    this.log?.warn(`jobs run without a claim: ${why}; a job delivered twice at once (a JetStream leader lost) may then run twice`);
  }

  /** Waits until this delivery may run the job, or another has run it. */
  async acquire(key: string, opts: AcquireOptions): Promise<Acquired> {
    const kv = await this.bucket();
    if (kv === undefined) return { kind: 'run', claim: UNGUARDED };
    this.answerPings();
    const holder = `${this.self}:${randomBytes(4).toString('hex')}`;
    const value = encode({ holder, ping: this.pingSubject });
    const mine = (revision: number): Acquired => ({ kind: 'run', claim: this.held(kv, key, revision) });
    const silentMs = Math.max(5_000, opts.leaseMs / 3);
    let lastHeard = Date.now();
    let said = false;
    for (;;) {
      try {
        return mine(await untilAnswered(`claiming ${opts.what}`, () => kv.create(key, value), { withinMs: opts.leaseMs }));
      } catch (error) {
        if (!isTaken(error)) return this.failOpen(error, opts.what);
      }
      let entry;
      try {
        entry = await untilAnswered(`reading the claim of ${opts.what}`, () => kv.get(key), { withinMs: opts.leaseMs });
      } catch (error) {
        return this.failOpen(error, opts.what);
      }
      if (entry === null || entry.operation !== 'PUT') continue; // released meanwhile: create again
      const other = decode(entry.value);
      if (!(await opts.stillQueued().catch(() => true))) return { kind: 'gone', by: other.holder };
      const answer = await this.holderAnswers(other, key);
      const now = Date.now();
      if (answer === 'yes') lastHeard = now;
      else if (answer === 'no' || now - lastHeard >= silentMs) {
        try {
          const revision = await kv.update(key, value, entry.revision);
          const why = answer === 'no' ? 'which no longer runs it' : `whose process has not answered for ${Math.round((now - lastHeard) / 1000)} s`;
          this.log?.warn(`${opts.what}: taken over from ${other.holder}, ${why}`);
          return mine(revision);
        } catch (error) {
          if (!isTaken(error)) return this.failOpen(error, opts.what);
          continue; // someone else took it: look again
        }
      }
      if (!said) {
        said = true;
        this.log?.info(`${opts.what}: delivered again while ${other.holder} runs it; standing by until it settles`);
      }
      opts.keepDelivery();
      await new Promise((r) => setTimeout(r, this.pollMs));
    }
  }

  private failOpen(error: unknown, what: string): Acquired {
    this.log?.warn({ err: error }, `${what}: the claim could not be read or written (${(error as Error).message}); running it unguarded`);
    return { kind: 'run', claim: UNGUARDED };
  }

  private held(kv: KV, key: string, revision: number): Claim {
    this.holding.add(key);
    return {
      settle: async (settled) => {
        this.holding.delete(key);
        // Tried again later: the next delivery runs it, so the key goes (a delete marker).
        // Acked or terminated: the job leaves the queue, which is what a copy looks at.
        if (settled.kind === 'retry') await kv.delete(key, { previousSeq: revision }).catch(() => {});
      },
    };
  }
}

function encode(value: ClaimValue): Uint8Array {
  return encoder.encode(JSON.stringify(value));
}

function decode(bytes: Uint8Array): ClaimValue {
  try {
    const v = JSON.parse(decoder.decode(bytes)) as ClaimValue;
    return typeof v.holder === 'string' ? v : { holder: 'unknown' };
  } catch {
    return { holder: 'unknown' };
  }
}

/** The key exists already, or was changed since the revision given (compare-and-set lost). */
function isTaken(error: unknown): boolean {
  if ((error as { api_error?: { err_code?: number } }).api_error?.err_code === 10071) return true;
  const text = `${(error as { code?: string }).code ?? ''} ${(error as Error).message ?? ''}`;
  return /wrong last sequence|key exists|10071/i.test(text);
}
