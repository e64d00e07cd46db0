import { describe, expect, it } from 'vitest';
import { planDiskRead } from './read-plan.js';
import type { DiskReadFacts } from './read-plan.js';

const GiB = 1 << 30;
const P1 = '20261205-080000';
const ok: DiskReadFacts = {
  disk: { name: 'xvda', size: GiB, cbt: true },
  cbt: true,
  nbd: true,
  previous: { stamp: P1, disks: [{ name: 'xvda', size: GiB }] },
  base: { stamp: P1, cbt: true },
};

describe('planDiskRead', () => {
  it.each<[string, Partial<DiskReadFacts>, { read: 'full' | 'changes'; warn: boolean; reason: RegExp }]>([
    ['CBT changes from the newest point', {}, { read: 'changes', warn: false, reason: /^CBT changes since point 20261205-080000$/ }],
    ['first backup', { previous: undefined }, { read: 'full', warn: false, reason: /first backup/ }],
    ['cbt = false', { cbt: false }, { read: 'full', warn: false, reason: /cbt = false/ }],
    ['a disk added', { previous: { stamp: P1, disks: [{ name: 'xvdb', size: GiB }] } }, { read: 'full', warn: true, reason: /disk added since point 20261205-080000/ }],
    ['a disk resized', { disk: { name: 'xvda', size: 2 * GiB, cbt: true } }, { read: 'full', warn: true, reason: /resized from 1\.0 GiB to 2\.0 GiB/ }],
    ['CBT turned on again', { cbtTurnedOn: true }, { read: 'full', warn: true, reason: /changed-block tracking was off/ }],
    ['CBT off now', { disk: { name: 'xvda', size: GiB, cbt: false } }, { read: 'full', warn: true, reason: /changed-block tracking was off/ }],
    ['base snapshot gone', { base: undefined }, { read: 'full', warn: true, reason: /base snapshot of point 20261205-080000 is gone/ }],
    ['base of an older point (the newest is missing or incomplete)', { base: { stamp: '20261204-080000', cbt: true } }, { read: 'full', warn: true, reason: /base snapshot is of point 20261204-080000, but the newest point is 20261205-080000/ }],
    ['base without CBT', { base: { stamp: P1, cbt: false } }, { read: 'full', warn: true, reason: /no changed-block tracking/ }],
    ['no NBD, the base without data', { nbd: false }, { read: 'full', warn: true, reason: /no NBD .* kept no data/ }],
    ['no NBD, the base kept whole: its VHD difference', { nbd: false, base: { stamp: P1, cbt: true, whole: true } }, { read: 'changes', warn: false, reason: /VHD difference from its base snapshot/ }],
  ])('%s', (_name, change, expected) => {
    const plan = planDiskRead({ ...ok, ...change });
    expect(plan.read).toBe(expected.read);
    expect(plan.warn).toBe(expected.warn);
    expect(plan.reason).toMatch(expected.reason);
    expect(plan.base).toBe(expected.read === 'changes' ? P1 : undefined);
  });
});
