import { describe, expect, it } from 'vitest';
import { subjectMatches } from './bus.js';
import { busContract } from './contract.js';
import { MemoryBus } from './memory.js';

busContract('memory', async () => new MemoryBus());

describe('subjectMatches', () => {
  it.each([
    ['a.b.c', 'a.b.c', true],
    ['a.*.c', 'a.b.c', true],
    ['a.*.c', 'a.b.d', false],
    ['a.>', 'a.b.c', true],
    ['a.>', 'a', false],
    ['a.*', 'a.b.c', false],
    ['vmbackup.events.r1.>', 'vmbackup.events.r1.export.done', true],
    ['vmbackup.events.*.*.done', 'vmbackup.events.r1.export.done', true],
    ['vmbackup.events.*.*.done', 'vmbackup.events.r1.run.finished', false],
  ])('%s matches %s: %s', (pattern, subject, expected) => {
    expect(subjectMatches(pattern, subject)).toBe(expected);
  });
});
