import type { KV, NatsConnection } from 'nats';
import { z } from 'zod';
import type { Clock } from '../function.js';
import type { TriggerLog } from './trigger-log.js';

/** The KV bucket of trigger deliveries. */
export const TRIGGER_BUCKET = 'vmbackup-triggers';

const Claim = z.object({ runId: z.string(), expiresAt: z.number() });

/**
 * The trigger log on a JetStream KV bucket, shared by every gateway of a cluster. A claim is
 * `kv.create` (compare-and-set against absent); an expired claim is taken over with
 * `kv.update` on its revision, so two gateways racing for one key still agree on one run.
 * Each value records its own expiry (claims of different kinds have different windows); the
 * bucket's TTL, the longest window, only sweeps old keys. Works with nats-server 2.9.
 *
 * @example
 *   const triggers = await NatsTriggerLog.open(nc, { clock: systemClock, maxTtlMs: 24 * 3600_000 });
 */
export class NatsTriggerLog implements TriggerLog {
  private constructor(
    private readonly kv: KV,
    private readonly clock: Clock,
  ) {}

  static async open(nc: NatsConnection, opts: { clock: Clock; maxTtlMs: number; bucket?: string; replicas?: number }): Promise<NatsTriggerLog> {
    const kv = await nc.jetstream().views.kv(opts.bucket ?? TRIGGER_BUCKET, { history: 1, ttl: opts.maxTtlMs, ...(opts.replicas !== undefined ? { replicas: opts.replicas } : {}) });
    return new NatsTriggerLog(kv, opts.clock);
  }

  async claim(key: string, runId: string, ttlMs: number): Promise<'new' | { runId: string }> {
    const value = new TextEncoder().encode(JSON.stringify({ runId, expiresAt: this.clock.now().getTime() + ttlMs }));
    for (let attempt = 0; attempt < 10; attempt++) {
      try {
        await this.kv.create(key, value);
        return 'new';
      } catch (error) {
        if (!isWrongSequence(error)) throw error;
      }
      const entry = await this.kv.get(key);
      if (entry === null || entry.operation !== 'PUT') continue; // released meanwhile: create again
      const current = Claim.safeParse(safeJson(entry.value));
      if (current.success && current.data.expiresAt > this.clock.now().getTime()) return { runId: current.data.runId };
      try {
        await this.kv.update(key, value, entry.revision);
        return 'new';
      } catch (error) {
        if (!isWrongSequence(error)) throw error;
      }
    }
    throw new Error(`trigger log: key ${key} changed under the gateway ten times in a row`);
  }

  async release(key: string, runId: string): Promise<void> {
    const entry = await this.kv.get(key);
    if (entry === null || entry.operation !== 'PUT') return;
    const current = Claim.safeParse(safeJson(entry.value));
    if (!current.success || current.data.runId !== runId) return;
    try {
      await this.kv.delete(key, { previousSeq: entry.revision });
    } catch (error) {
      if (!isWrongSequence(error)) throw error;
    }
  }
}

function safeJson(bytes: Uint8Array): unknown {
  try {
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return undefined;
  }
}

/** JetStream's "wrong last sequence" (10071): the compare-and-set lost. */
function isWrongSequence(error: unknown): boolean {
  const e = error as { api_error?: { err_code?: number }; message?: string };
  return e?.api_error?.err_code === 10071 || /wrong last sequence/i.test(e?.message ?? '');
}
