import { describe, expect, it } from 'vitest';
import { AlertmanagerPayload, deliveryKey, vmsToBackUp } from './alertmanager.js';
import { alertmanagerPayload } from './test-helpers.js';

const parse = (p: unknown) => AlertmanagerPayload.parse(p);

describe('vmsToBackUp', () => {
  it.each([
    ['firing alerts name their VMs, once each, in order', alertmanagerPayload(['web1', 'db1', 'web1']), 'vm', ['web1', 'db1']],
    ['resolved alerts ask for nothing', alertmanagerPayload(['web1'], { status: 'resolved' }), 'vm', []],
    ['another label', alertmanagerPayload(['web1']), 'instance', []],
    ['no alert', alertmanagerPayload([]), 'vm', []],
  ])('%s', (_name, payload, label, vms) => {
    expect(vmsToBackUp(parse(payload), label)).toEqual(vms);
  });

  it('reads the configured label, and skips empty values', () => {
    const p = alertmanagerPayload(['a', 'b']);
    p.alerts[0]!.labels = { alertname: 'X', host_vm: 'srv-1' } as never;
    p.alerts[1]!.labels = { alertname: 'X', host_vm: '' } as never;
    expect(vmsToBackUp(parse(p), 'host_vm')).toEqual(['srv-1']);
  });

  it('mixed group: only firing alerts count', () => {
    const p = alertmanagerPayload(['a', 'b']);
    p.alerts[1]!.status = 'resolved';
    expect(vmsToBackUp(parse(p), 'vm')).toEqual(['a']);
  });
});

describe('deliveryKey', () => {
  const key = (p: unknown) => deliveryKey(parse(p));
  it('the same delivery (a re-send) has the same key, whatever the order of its alerts', () => {
    const p = alertmanagerPayload(['web1', 'db1']);
    const reordered = { ...p, alerts: [...p.alerts].reverse() };
    expect(key(reordered)).toBe(key(p));
    expect(key(p)).toMatch(/^am\.[0-9a-f]{64}$/);
  });
  it.each([
    ['another group', alertmanagerPayload(['web1'], { groupKey: 'other' })],
    ['the alert fired again (new startsAt)', alertmanagerPayload(['web1'], { startsAt: '2026-11-27T08:00:00Z' })],
    ['another alert joined the group', alertmanagerPayload(['web1', 'db1'])],
  ])('%s: another key', (_name, other) => {
    expect(key(other)).not.toBe(key(alertmanagerPayload(['web1'])));
  });
  it('resolved alerts do not change the key', () => {
    const p = alertmanagerPayload(['web1', 'db1']);
    p.alerts[1]!.status = 'resolved';
    expect(key(p)).toBe(key(alertmanagerPayload(['web1'])));
  });
});

describe('AlertmanagerPayload', () => {
  it.each([
    ['version 3', { ...alertmanagerPayload(['a']), version: '3' }, 'version'],
    ['alerts not a list', { ...alertmanagerPayload(['a']), alerts: {} }, 'alerts'],
    ['a label value that is not a string', (() => { const p = alertmanagerPayload(['a']); (p.alerts[0]!.labels as Record<string, unknown>).vm = 3; return p; })(), 'alerts.0.labels.vm'],
    ['alert without fingerprint', (() => { const p = alertmanagerPayload(['a']); delete (p.alerts[0] as Partial<typeof p.alerts[0]>).fingerprint; return p; })(), 'alerts.0.fingerprint'],
  ])('refuses %s', (_name, body, path) => {
    const r = AlertmanagerPayload.safeParse(body);
    expect(r.success).toBe(false);
    expect(r.error!.issues.map((i) => i.path.join('.'))).toContain(path);
  });
  it('accepts fields it does not know (Alertmanager adds some)', () => {
    expect(AlertmanagerPayload.safeParse({ ...alertmanagerPayload(['a']), orgId: 1 }).success).toBe(true);
  });
});
