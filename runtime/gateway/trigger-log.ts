import type { Clock } from '../function.js';

/**
 * Which trigger deliveries were seen, and the run each started: what makes a repeated
 * webhook delivery start no second run. `claim` is atomic: of two concurrent claims of one
 * key, one gets `'new'`, the other the first one's run id. A claim lasts `ttlMs`; after that
 * the key may be claimed again. Keys are `[A-Za-z0-9._-]` (the callers hash what they get).
 *
 * Two implementations: {@link MemoryTriggerLog} (tests, a single gateway process) and
 * `NatsTriggerLog` (a JetStream KV bucket, shared by every gateway on the cluster).
 *
 * @example
 *   const claim = await log.claim('am.3f5c…', '20261126-083000-7f3a', 24 * 3600_000);
 *   if (claim === 'new') await startRun(…); else return { runId: claim.runId, duplicate: true };
 */
export interface TriggerLog {
  claim(key: string, runId: string, ttlMs: number): Promise<'new' | { runId: string }>;
  /**
   * Gives a claim up when the run could not be started, so a redelivery may try again.
   * Only releases the claim if it is still `runId`'s.
   */
  release(key: string, runId: string): Promise<void>;
}

export class MemoryTriggerLog implements TriggerLog {
  private readonly claims = new Map<string, { runId: string; expiresAt: number }>();

  constructor(private readonly clock: Clock) {}

  async claim(key: string, runId: string, ttlMs: number): Promise<'new' | { runId: string }> {
    const now = this.clock.now().getTime();
    const current = this.claims.get(key);
    if (current !== undefined && current.expiresAt > now) return { runId: current.runId };
    this.claims.set(key, { runId, expiresAt: now + ttlMs });
    // Forget what expired, so a long-running gateway does not accumulate every delivery.
    if (this.claims.size % 256 === 0) for (const [k, v] of this.claims) if (v.expiresAt <= now) this.claims.delete(k);
    return 'new';
  }

  async release(key: string, runId: string): Promise<void> {
    if (this.claims.get(key)?.runId === runId) this.claims.delete(key);
  }
}
