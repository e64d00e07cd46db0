import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { DEFAULT_FRESHNESS, GenericHook, checkFreshness, genericDeliveryKey, signBody, verifySignature } from './webhook.js';

const secret = 'webhook-secret-0123456789';
const body = Buffer.from('{"id":"d1","timestamp":"2026-11-26T08:30:00Z"}');
const good = `sha256=${createHmac('sha256', secret).update(body).digest('hex')}`;

describe('verifySignature', () => {
  it.each([
    ['the right signature', good, true],
    ['upper-case hex', `sha256=${good.slice(7).toUpperCase()}`, true],
    ['missing', undefined, false],
    ['empty', '', false],
    ['no prefix', good.slice(7), false],
    ['sha1 prefix', good.replace('sha256=', 'sha1='), false],
    ['truncated', good.slice(0, -2), false],
    ['one digit off', good.slice(0, -1) + (good.endsWith('0') ? '1' : '0'), false],
    ['not hex', `sha256=${'z'.repeat(64)}`, false],
    ['signed with another secret', `sha256=${createHmac('sha256', 'other').update(body).digest('hex')}`, false],
  ])('%s → %s', (_name, header, ok) => {
    expect(verifySignature(secret, body, header)).toBe(ok);
  });
  it('covers every byte of the body', () => {
    const changed = Buffer.from(body);
    changed[changed.length - 2] = 0x20;
    expect(verifySignature(secret, changed, good)).toBe(false);
  });
  it('signBody makes what verifySignature accepts', () => {
    expect(signBody(secret, body)).toBe(good);
  });
});

describe('checkFreshness', () => {
  const now = new Date('2026-11-26T08:30:00Z');
  it.each([
    ['now', '2026-11-26T08:30:00Z', undefined],
    ['4 min old', '2026-11-26T08:26:00Z', undefined],
    ['with an offset', '2026-11-26T09:29:00+01:00', undefined],
    ['6 min old: stale', '2026-11-26T08:24:00Z', /stale delivery: .* 360 s old/],
    ['a day old: stale', '2026-11-25T08:30:00Z', /stale delivery/],
    ['4 min ahead', '2026-11-26T08:34:00Z', undefined],
    ['6 min ahead', '2026-11-26T08:36:00Z', /360 s in the future/],
  ])('%s', (_name, ts, expected) => {
    const r = checkFreshness(ts, now, DEFAULT_FRESHNESS);
    if (expected === undefined) expect(r).toBeUndefined();
    else expect(r).toMatch(expected);
  });
});

describe('GenericHook', () => {
  it.each([
    ['no id', { timestamp: '2026-11-26T08:30:00Z' }, 'id'],
    ['timestamp not RFC 3339', { id: 'd', timestamp: 'yesterday' }, 'timestamp'],
    ['timestamp without zone', { id: 'd', timestamp: '2026-11-26T08:30:00' }, 'timestamp'],
    ['unknown key', { id: 'd', timestamp: '2026-11-26T08:30:00Z', vms: ['a'] }, ''],
    ['a run option of the wrong type', { id: 'd', timestamp: '2026-11-26T08:30:00Z', pool_backup: 'yes' }, 'pool_backup'],
  ])('refuses %s', (_name, input, path) => {
    const r = GenericHook.safeParse(input);
    expect(r.success).toBe(false);
    expect(r.error!.issues.map((i) => i.path.join('.'))).toContain(path);
  });
  it('delivery keys are stable and safe as KV keys', () => {
    expect(genericDeliveryKey('a b/c')).toBe(genericDeliveryKey('a b/c'));
    expect(genericDeliveryKey('a b/c')).toMatch(/^gh\.[0-9a-f]{64}$/);
    expect(genericDeliveryKey('x')).not.toBe(genericDeliveryKey('y'));
  });
});
