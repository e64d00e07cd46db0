import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { z } from 'zod';
import { RunRequestFields } from './run-request.js';

/**
 * A generic signed webhook (`POST /v1/hooks/generic`): any system that can sign its body
 * with a shared secret can start a run. The body is a delivery id, the time it was sent,
 * and the run options of `POST /v1/runs`.
 *
 *   X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, raw body)>
 *
 * @example
 *   { "id": "7d1e2c7a-…", "timestamp": "2026-11-26T08:30:00Z", "vm_exports": ["web1"] }
 */
export const GenericHook = z
  .strictObject({
    /** The sender's delivery id: a repeated delivery with the same id starts no second run. */
    id: z.string().min(1).max(200),
    /** When the delivery was sent (RFC 3339); too old or too far ahead is refused. */
    timestamp: z.iso.datetime({ offset: true }),
    ...RunRequestFields,
  })
  .meta({ description: 'A signed delivery: its id, when it was sent, and the run options.' });
export type GenericHook = z.infer<typeof GenericHook>;

export const SIGNATURE_HEADER = 'X-Hub-Signature-256';
const SIGNATURE_RE = /^sha256=([0-9a-fA-F]{64})$/;

/**
 * True when `header` is `sha256=<hex>` of HMAC-SHA256(secret, body). Compared in constant
 * time; a missing or malformed header is false.
 *
 * @example verifySignature(secret, rawBody, req.header('X-Hub-Signature-256'))
 */
export function verifySignature(secret: string, body: Uint8Array, header: string | undefined): boolean {
  const m = SIGNATURE_RE.exec(header?.trim() ?? '');
  if (!m) return false;
  const given = Buffer.from(m[1]!, 'hex');
  const expected = createHmac('sha256', secret).update(body).digest();
  return timingSafeEqual(given, expected);
}

/** `sha256=<hex>` for a body: what a sender puts in X-Hub-Signature-256. */
export function signBody(secret: string, body: string | Uint8Array): string {
  return `sha256=${createHmac('sha256', secret).update(body).digest('hex')}`;
}

/** How far a delivery's timestamp may lie from the gateway's clock. */
export interface Freshness {
  /** Older than this is stale (a replay, or a sender retrying for too long). */
  maxAgeMs: number;
  /** Further ahead than this is refused (a clock far off, or a forged future delivery). */
  maxAheadMs: number;
}

export const DEFAULT_FRESHNESS: Freshness = { maxAgeMs: 5 * 60_000, maxAheadMs: 5 * 60_000 };

/** Undefined when the timestamp is acceptable, else why not. */
export function checkFreshness(timestamp: string, now: Date, f: Freshness): string | undefined {
  const t = Date.parse(timestamp);
  if (Number.isNaN(t)) return `timestamp ${timestamp} is not a date`;
  const age = now.getTime() - t;
  if (age > f.maxAgeMs) return `stale delivery: timestamp ${timestamp} is ${Math.round(age / 1000)} s old (at most ${f.maxAgeMs / 1000} s)`;
  if (-age > f.maxAheadMs) return `timestamp ${timestamp} is ${Math.round(-age / 1000)} s in the future (at most ${f.maxAheadMs / 1000} s): check the sender's clock`;
  return undefined;
}

/** The dedup key of a generic delivery: its id, hashed (ids are the sender's, of any shape). */
export function genericDeliveryKey(id: string): string {
  return `gh.${createHash('sha256').update(id).digest('hex')}`;
}
