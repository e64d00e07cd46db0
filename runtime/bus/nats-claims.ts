import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import type { JetStreamClient, KV } from 'nats';
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
 * when the key exists. Whoever created the key runs the job, and rewrites the key while it
 * runs (every third of the lease, as it renews its lease). A delivery that finds the key
 * held stands by: it keeps its own delivery leased and looks again every half second, and
 * - when the job is gone from the work queue (the holder acked or terminated it), drops
 *   its delivery;
 * - when the holder asked for a retry, it deleted the key: this delivery claims it and runs;
 * - when the key has not changed for a whole lease, the holder is dead: this delivery takes
 *   the key over (compare-and-set on its revision) and runs the job.
 * Nothing is written when a job ends well: the queue itself says it is done.
 *
 * Whatever cannot be decided because the bucket does not answer runs the job as before,
 * with a warning: a claim is a guard against running a job twice at once, never a reason
 * for not running it.
 */
export interface ClaimValue {
  holder: string;
}

export type Acquired =
  /** This delivery runs the job: renew the claim while it runs, then say how it settled. */
  | { kind: 'run'; claim: Claim }
  /** Another delivery ran the job, and it is gone from the queue: drop this one. */
  | { kind: 'gone'; by: string };

export interface Claim {
  renew(): void;
  settle(settle: Settle): Promise<void>;
}

/** A claim that guards nothing: when the bucket is missing or does not answer. */
const UNGUARDED: Claim = { renew: () => {}, settle: async () => {} };

export interface AcquireOptions {
  /** The job's lease (ack_wait): a holder whose key stays unchanged this long is dead. */
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

  constructor(
    private readonly js: JetStreamClient,
    private readonly log: Logger | undefined,
    /** How often a standing-by delivery looks at the key. */
    private readonly pollMs = 500,
  ) {}

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

  /** Waits until this delivery may run the job, or another has settled it. */
  async acquire(key: string, opts: AcquireOptions): Promise<Acquired> {
    const kv = await this.bucket();
    if (kv === undefined) return { kind: 'run', claim: UNGUARDED };
    const holder = `${this.self}:${randomBytes(4).toString('hex')}`;
    const mine = (revision: number): Acquired => ({ kind: 'run', claim: this.held(kv, key, holder, revision, opts.what) });
    let seen: { revision: number; since: number } | undefined;
    let said = false;
    for (;;) {
      try {
        return mine(await untilAnswered(`claiming ${opts.what}`, () => kv.create(key, encode({ holder })), { withinMs: opts.leaseMs }));
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
      const value = decode(entry.value);
      if (!(await opts.stillQueued().catch(() => true))) return { kind: 'gone', by: value.holder };
      const now = Date.now();
      if (seen === undefined || seen.revision !== entry.revision) seen = { revision: entry.revision, since: now };
      else if (now - seen.since >= opts.leaseMs) {
        // Unchanged for a whole lease: its holder is dead.
        try {
          const revision = await kv.update(key, encode({ holder }), entry.revision);
          this.log?.warn(`${opts.what}: taken over from ${value.holder}, which stopped renewing its claim ${Math.round((now - seen.since) / 1000)} s ago`);
          return mine(revision);
        } catch (error) {
          if (!isTaken(error)) return this.failOpen(error, opts.what);
          continue; // someone else took it, or the holder came back: look again
        }
      }
      if (!said) {
        said = true;
        this.log?.info(`${opts.what}: delivered again while ${value.holder} runs it; standing by until it settles`);
      }
      opts.keepDelivery();
      await new Promise((r) => setTimeout(r, this.pollMs));
    }
  }

  private failOpen(error: unknown, what: string): Acquired {
    this.log?.warn({ err: error }, `${what}: the claim could not be read or written (${(error as Error).message}); running it unguarded`);
    return { kind: 'run', claim: UNGUARDED };
  }

  private held(kv: KV, key: string, holder: string, first: number, what: string): Claim {
    let revision = first;
    let renewing: Promise<void> | undefined;
    let lost = false;
    const write = async (value: ClaimValue): Promise<void> => {
      try {
        revision = await kv.update(key, encode(value), revision);
      } catch (error) {
        if (isTaken(error) && !lost) {
          lost = true;
          this.log?.warn(`${what}: another delivery took this job's claim over (this worker was taken for dead); it may run twice`);
        }
        // Otherwise the bucket did not answer: the next renewal tries again.
      }
    };
    return {
      renew: () => {
        if (lost || renewing !== undefined) return;
        renewing = write({ holder }).finally(() => (renewing = undefined));
      },
      settle: async (settled) => {
        await renewing;
        // Tried again later: the next delivery runs it, so the key goes (a delete marker).
        // Acked or terminated: the job leaves the queue, which is what a copy looks at.
        if (settled.kind === 'retry' && !lost) await kv.delete(key, { previousSeq: revision }).catch(() => {});
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
