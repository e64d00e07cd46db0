import { createHmac } from 'node:crypto';
import { HookReply } from './event.js';
import type { HookEvent } from './event.js';
import type { KindResult } from './kind.js';

/** Header carrying `sha256=<hex HMAC-SHA256(secret, body)>`. */
export const SIGNATURE_HEADER = 'X-Vmbackup-Signature-256';
/** Header carrying the Unix time (seconds) of the delivery; the signed body has `at` too. */
export const TIMESTAMP_HEADER = 'X-Vmbackup-Timestamp';
/** Header carrying the hook point (`pre-vm` …). */
export const POINT_HEADER = 'X-Vmbackup-Point';

/** Bytes of a response body read (the decision is small; the rest is ignored). */
const BODY_LIMIT = 64 * 1024;

/** `sha256=<hex>` of a body: what the receiver recomputes and compares in constant time. */
export function signBody(secret: string, body: string): string {
  return `sha256=${createHmac('sha256', secret).update(body, 'utf8').digest('hex')}`;
}

export interface HttpOptions {
  secret: string;
  timeoutMs: number;
  signal?: AbortSignal;
  now: Date;
}

/**
 * An HTTP hook: POSTs the event as JSON to `url`, signed (SIGNATURE_HEADER over the exact
 * body bytes). The answer:
 *
 *   2xx, empty body or no decision in it  → continue
 *   2xx with {"decision":"continue"}      → continue
 *   2xx with {"decision":"abort","reason"?} or 409 (reason from the body) → abort
 *   anything else (3xx, 4xx, 5xx, network error) → failed;  no answer in time → timeout
 *
 * @example
 *   await postHook('https://ops.example/hooks/vmbackup', event, { secret, timeoutMs: 60_000, now: new Date() })
 */
export async function postHook(url: string, event: HookEvent, opts: HttpOptions): Promise<KindResult> {
  const result = (outcome: KindResult['outcome'], reason: string): KindResult => ({ kind: 'http', outcome, reason });
  const body = JSON.stringify(event);
  const timeout = AbortSignal.timeout(opts.timeoutMs);
  const signal = opts.signal !== undefined ? AbortSignal.any([timeout, opts.signal]) : timeout;
  const host = safeHost(url);
  let response: Response;
  let text: string;
  try {
    response = await fetch(url, {
      method: 'POST',
      body,
      redirect: 'manual',
      signal,
      headers: {
        'content-type': 'application/json',
        [SIGNATURE_HEADER]: signBody(opts.secret, body),
        [TIMESTAMP_HEADER]: String(Math.floor(opts.now.getTime() / 1000)),
        [POINT_HEADER]: event.point,
      },
    });
    text = await readBounded(response);
  } catch (error) {
    if (timeout.aborted) return result('timeout', `${host} did not answer within ${opts.timeoutMs / 1000} s`);
    if (opts.signal?.aborted === true) return result('failed', 'interrupted by shutdown');
    const cause = (error as { cause?: { code?: string; message?: string } }).cause;
    // The whole URL may carry a token: messages name the host only.
    const message = (cause?.code ?? cause?.message ?? (error as Error).message).split(url).join(host);
    return result('failed', `POST ${host} failed: ${message}`);
  }
  const reply = parseReply(text);
  if (response.status === 409) return result('abort', reasonIn(text) ?? (text.trim().slice(0, 500) || `${host} answered 409`));
  if (response.status >= 200 && response.status < 300) {
    if (reply?.decision === 'abort') return result('abort', reply.reason ?? `${host} answered abort`);
    return result('continue', '');
  }
  return result('failed', `${host} answered ${response.status}${text.trim() !== '' ? `: ${text.trim().slice(0, 200)}` : ''}`);
}

function parseReply(text: string): HookReply | undefined {
  if (text.trim() === '') return undefined;
  try {
    const parsed = HookReply.safeParse(JSON.parse(text));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}

/** `reason` of a JSON body (`{"reason":"…"}`, with or without a decision). */
function reasonIn(text: string): string | undefined {
  try {
    const body = JSON.parse(text) as { reason?: unknown };
    return typeof body.reason === 'string' && body.reason.trim() !== '' ? body.reason.trim().slice(0, 1000) : undefined;
  } catch {
    return undefined;
  }
}

async function readBounded(response: Response): Promise<string> {
  if (response.body === null) return '';
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  while (size < BODY_LIMIT) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    size += value.byteLength;
  }
  await reader.cancel().catch(() => {});
  return Buffer.concat(chunks).subarray(0, BODY_LIMIT).toString('utf8');
}

/** The URL without user info, path or query, for messages (a token may hide in the URL). */
function safeHost(url: string): string {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}`;
  } catch {
    return 'the hook URL';
  }
}
