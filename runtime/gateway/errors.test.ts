import { HTTPException } from 'hono/http-exception';
import { ErrorCode, NatsError } from 'nats';
import { describe, expect, it } from 'vitest';
import { ConnectionError, RetryLaterError } from '../errors.js';
import { HttpError, UNAVAILABLE_RETRY_AFTER_S, errorResponse, natsUnavailable, unavailableReason } from './errors.js';

/** A JetStream API error as nats.js builds it from the server's answer (jsutil checkJsErrorCode). */
function apiError(code: number, errCode: number, description: string): NatsError {
  const e = code === 503 ? NatsError.errorForCode(ErrorCode.JetStreamNotEnabled, new Error(description)) : new NatsError(description, `${code}`);
  e.api_error = { code, err_code: errCode, description };
  return e;
}

const unavailable = (message: string) => ({
  status: 503,
  body: { error: 'UNAVAILABLE', message: `NATS is not reachable: ${message}` },
  headers: { 'Retry-After': String(UNAVAILABLE_RETRY_AFTER_S) },
  bug: false,
});
const internal = { status: 500, body: { error: 'INTERNAL', message: 'internal error (see the gateway log)' }, headers: {}, bug: true };

describe('errorResponse: NATS that cannot be reached is a 503 with Retry-After, never a 500', () => {
  it.each([
    // What the NATS binding, NatsRunStore and NatsTriggerLog throw while the server is down
    // (nats.js holds the request, then gives up) or the connection is gone.
    ['a request timeout (kv.create, kv.get, js.publish)', NatsError.errorForCode(ErrorCode.Timeout), 'no answer in time (TIMEOUT)'],
    ['a closed connection', NatsError.errorForCode(ErrorCode.ConnectionClosed), 'the connection is closed (CONNECTION_CLOSED)'],
    ['a draining connection', NatsError.errorForCode(ErrorCode.ConnectionDraining), 'the connection is closing (CONNECTION_DRAINING)'],
    ['connection refused', NatsError.errorForCode(ErrorCode.ConnectionRefused), 'connection refused (CONNECTION_REFUSED)'],
    ['connection timeout', NatsError.errorForCode(ErrorCode.ConnectionTimeout), 'the connection timed out (CONNECTION_TIMEOUT)'],
    ['a disconnect (flush while reconnecting)', NatsError.errorForCode(ErrorCode.Disconnect), 'disconnected (DISCONNECT)'],
    ['no responders', NatsError.errorForCode(ErrorCode.NoResponders), 'JetStream is not available (503)'],
    ['a JetStream request timeout', NatsError.errorForCode(ErrorCode.JetStream408RequestTimeout), 'JetStream request timeout (408)'],
    ['JetStream temporarily unavailable (API 503, 10008)', apiError(503, 10008, 'JetStream system temporarily unavailable'), 'JetStream: JetStream system temporarily unavailable (503)'],
    ['a timeout behind a wrapping error (cause)', new Error('startRun failed', { cause: NatsError.errorForCode(ErrorCode.Timeout) }), 'no answer in time (TIMEOUT)'],
    ['a timeout behind a NatsError (chainedError)', new NatsError('request failed', ErrorCode.RequestError, NatsError.errorForCode(ErrorCode.Timeout)), 'no answer in time (TIMEOUT)'],
  ])('%s', (_what, error, reason) => {
    expect(unavailableReason(error)).toBe(reason);
    expect(errorResponse(error)).toEqual(unavailable(reason));
  });

  it.each([
    // Refusals and bugs are not outages: a retry would not help.
    ['wrong last sequence (a lost compare-and-set)', apiError(400, 10071, 'wrong last sequence: 3')],
    ['a permissions violation', NatsError.errorForCode(ErrorCode.PermissionsViolation)],
    ['a bad payload', NatsError.errorForCode(ErrorCode.BadPayload)],
    ['a JetStream API 500', apiError(500, 10049, 'stream store failed')],
    ['a plain Error saying TIMEOUT (not from nats.js)', new Error('TIMEOUT')],
    ['an object with a code but no NatsError name', Object.assign(new Error('x'), { code: 'TIMEOUT' })],
    ['a string', 'TIMEOUT'],
    ['undefined', undefined],
    ['a cycle of causes', (() => {
      const a = new Error('a') as Error & { cause?: unknown };
      const b = new Error('b', { cause: a });
      a.cause = b;
      return a;
    })()],
  ])('%s: a 500', (_what, error) => {
    expect(unavailableReason(error)).toBeUndefined();
    expect(errorResponse(error)).toEqual(internal);
  });

  it('the gateway’s own answers and the runtime’s typed errors keep their mapping', () => {
    expect(errorResponse(natsUnavailable('the connection is down'))).toEqual(unavailable('the connection is down'));
    expect(errorResponse(new HttpError(404, 'NOT_FOUND', 'no run x'))).toMatchObject({ status: 404, bug: false });
    expect(errorResponse(new HTTPException(400, { message: 'bad' }))).toMatchObject({ status: 400, body: { error: 'BAD_REQUEST' } });
    expect(errorResponse(new RetryLaterError('NATS_BUSY', 'busy', 5_000))).toMatchObject({ status: 503, headers: { 'Retry-After': '5' } });
    // A ConnectionError (openNats) names what failed itself, whatever its cause.
    const conn = new ConnectionError('NATS_UNREACHABLE', 'cannot reach NATS at nats://x (TIMEOUT)', {}, { cause: NatsError.errorForCode(ErrorCode.Timeout) });
    expect(errorResponse(conn)).toMatchObject({ status: 503, body: { error: 'NATS_UNREACHABLE' }, headers: { 'Retry-After': '10' } });
  });
});
