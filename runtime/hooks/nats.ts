import type { Bus } from '../bus/bus.js';
import { HookReply } from './event.js';
import type { HookEvent, HookPoint } from './event.js';
import type { KindResult } from './kind.js';

/** The subject hook subscribers answer on: `vmbackup.hooks.<point>`. */
export function hookSubject(point: HookPoint): string {
  return `vmbackup.hooks.${point}`;
}

export interface NatsOptions {
  timeoutMs: number;
  /** Replies to wait for; 0 = every reply that arrives within the timeout. */
  replies: number;
}

/**
 * A NATS hook: requests `vmbackup.hooks.<point>` with the event and gathers the replies
 * (`{"decision":"continue"|"abort","reason"?}`) until `replies` have come or the timeout:
 *
 *   nobody listens (the request returns at once, empty)  → continue
 *   any reply says abort                                  → abort (their reasons)
 *   a reply that is not a decision                        → failed
 *   no reply in time, or fewer than `replies`             → timeout
 *   otherwise                                             → continue
 *
 * "Nobody listens" relies on the binding: NATS answers a request nobody subscribes to at once
 * (no responders); a request that waited its whole timeout had listeners that did not answer.
 *
 * @example await askNats(bus, event, { timeoutMs: 60_000, replies: 1 })
 */
export async function askNats(bus: Bus, event: HookEvent, opts: NatsOptions): Promise<KindResult> {
  const result = (outcome: KindResult['outcome'], reason: string): KindResult => ({ kind: 'nats', outcome, reason });
  const subject = hookSubject(event.point);
  const started = Date.now();
  let replies: unknown[];
  try {
    replies = await bus.request(subject, event, { timeoutMs: opts.timeoutMs, ...(opts.replies > 0 ? { maxReplies: opts.replies } : {}) });
  } catch (error) {
    return result('failed', `request on ${subject} failed: ${(error as Error).message}`);
  }
  const elapsed = Date.now() - started;
  const parsed = replies.map((r) => HookReply.safeParse(r));
  const aborts = parsed.filter((p) => p.success && p.data.decision === 'abort').map((p) => p.data!.reason ?? 'a subscriber answered abort');
  if (aborts.length > 0) return result('abort', aborts.join('; '));
  const invalid = parsed.filter((p) => !p.success).length;
  if (invalid > 0) return result('failed', `${invalid} repl${invalid === 1 ? 'y' : 'ies'} on ${subject} not {"decision":"continue"|"abort"}`);
  if (replies.length === 0) {
    if (elapsed < opts.timeoutMs / 2) return result('continue', `no subscriber on ${subject}`);
    return result('timeout', `no reply on ${subject} within ${opts.timeoutMs / 1000} s`);
  }
  if (opts.replies > 0 && replies.length < opts.replies) {
    return result('timeout', `${replies.length} of ${opts.replies} replies on ${subject} within ${opts.timeoutMs / 1000} s`);
  }
  return result('continue', '');
}
