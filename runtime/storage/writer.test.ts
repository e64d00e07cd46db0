import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { formatWriterTag, newWriterTag, parseWriterTag, processStart, thisProcess, WRITER_STALE_MS, WRITER_TAG_MAX, writerState } from './writer.js';

const NOW = Date.parse('2026-11-26T08:30:00Z');
const me = { host: '1a2b3c4d', pid: 100, start: '5000', boot: '9f8e7d6c' };

describe('writerState', () => {
  const running = new Map([[200, '7000']]);
  const start = (pid: number) => running.get(pid);
  it.each([
    ['this host, pid running with its start time', { ...me, pid: 200, start: '7000' }, NOW, 'live'],
    ['this host, pid running but started later (pid reused)', { ...me, pid: 200, start: '6999' }, NOW, 'dead'],
    ['this host, pid gone', { ...me, pid: 201, start: '7000' }, NOW, 'dead'],
    ['this host, another boot', { ...me, pid: 200, start: '7000', boot: '00000001' }, NOW, 'dead'],
    ['another host, touched within the stale time', { ...me, host: 'ffffffff', pid: 1 }, NOW - WRITER_STALE_MS + 1000, 'live'],
    ['another host, not touched for the stale time', { ...me, host: 'ffffffff', pid: 200, start: '7000' }, NOW - WRITER_STALE_MS - 1000, 'dead'],
  ] as const)('%s: %s', (_what, tag, mtime, expected) => {
    expect(writerState({ ...tag, seq: 1 }, mtime, NOW, me, start)).toBe(expected);
  });
});

describe('writer tags', () => {
  it('round-trip and fit WRITER_TAG_MAX', () => {
    const tag = { host: 'abcdef01', pid: 4_294_967_295, start: '1'.repeat(20), boot: '01234567', seq: 4_294_967_295 };
    expect(parseWriterTag(formatWriterTag(tag))).toEqual(tag);
    expect(formatWriterTag(tag).length).toBe(WRITER_TAG_MAX);
    expect(parseWriterTag('w1-2-3')).toBeNull();
  });

  it('name this process: live to itself; each tag of the process is new', () => {
    const a = parseWriterTag(newWriterTag())!;
    const b = parseWriterTag(newWriterTag())!;
    expect(b.seq).toBe(a.seq + 1);
    expect(writerState(a, 0, Date.now(), thisProcess(), processStart)).toBe('live');
  });

  it('a real child process is live until it exits, then dead', async () => {
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    await new Promise((r) => child.once('spawn', r));
    const tag = { ...thisProcess(), pid: child.pid!, start: processStart(child.pid!)!, seq: 1 };
    expect(writerState(tag, 0, Date.now(), thisProcess(), processStart)).toBe('live');
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    expect(writerState(tag, Date.now(), Date.now(), thisProcess(), processStart)).toBe('dead');
  });
});
