import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { UsageError } from '../errors.js';
import type { Io } from './io.js';
import { VERSION } from './io.js';
import { loadCommandSettings } from './settings.js';

const base = mkdtempSync(path.join(os.tmpdir(), 'vmb-cli-settings-'));
afterAll(() => rmSync(base, { recursive: true, force: true }));

/** An Io whose streams are kept as text; base_dir is a temp folder without config files. */
function io(): Io & { out(): string; err(): string } {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = '';
  let err = '';
  stdout.on('data', (d: Buffer) => (out += d.toString()));
  stderr.on('data', (d: Buffer) => (err += d.toString()));
  return { stdout, stderr, env: {}, home: base, cwd: base, out: () => out, err: () => err };
}

describe('loadCommandSettings', () => {
  it('returns the settings, and prints their warnings on stderr', () => {
    const t = io();
    const loaded = loadCommandSettings(['-b', base, '--insecure'], t);
    if (typeof loaded === 'number') throw new Error(`exit ${loaded}: ${t.err()}`);
    expect(loaded.settings.base_dir).toBe(base);
    expect(loaded.settings.insecure).toBe(true);
    expect(t.err()).toMatch(/^WARNING: insecure is on \(command line \(--insecure\)\): the pool's TLS certificate is NOT checked\n$/);
    expect(t.out()).toBe('');
  });

  it('leaves the warnings to the command with warnings: false', () => {
    const t = io();
    const loaded = loadCommandSettings(['-b', base, '--insecure'], t, { warnings: false });
    expect(typeof loaded).toBe('object');
    expect(t.err()).toBe('');
  });

  it('answers --version with exit 0 and no warnings', () => {
    const t = io();
    expect(loadCommandSettings(['-b', base, '--insecure', '--version'], t)).toBe(0);
    expect(t.out()).toBe(`vmbackup ${VERSION}\n`);
    expect(t.err()).toBe('');
  });

  it('answers --help with the command help (before --version), and leaves it to the command without one', () => {
    const t = io();
    expect(loadCommandSettings(['-b', base, '--help', '--version'], t, { help: () => 'usage: test\n' })).toBe(0);
    expect(t.out()).toBe('usage: test\n');
    const u = io();
    const loaded = loadCommandSettings(['-b', base, '--help'], u);
    if (typeof loaded === 'number') throw new Error(`exit ${loaded}`);
    expect(loaded.flags.help).toBe(true);
    expect(u.out()).toBe('');
  });

  it('ends with exit 2 and the error on stderr for a bad option, or a failed check (before help)', () => {
    const t = io();
    expect(loadCommandSettings(['-b', base, '--no-such-option'], t)).toBe(2);
    expect(t.err()).toMatch(/^vmbackup: .*--no-such-option/);
    const u = io();
    const check = () => {
      throw new UsageError('--limit must be an integer >= 1 (got "0")');
    };
    expect(loadCommandSettings(['-b', base, '--help'], u, { help: () => 'usage: test\n', check })).toBe(2);
    expect(u.err()).toBe('vmbackup: --limit must be an integer >= 1 (got "0")\n');
    expect(u.out()).toBe('');
  });

  it('lists several bad values once each', () => {
    const t = io();
    expect(loadCommandSettings(['-b', base, '--max-backups', '0', '--concurrency', 'x'], t)).toBe(2);
    const lines = t.err().trimEnd().split('\n');
    expect(lines[0]).toBe('vmbackup: 2 configuration errors:');
    expect(lines).toHaveLength(3);
    expect(lines.slice(1).every((l) => l.startsWith('  - '))).toBe(true);
  });

  it('with --json, also prints the failure as JSON on stdout', () => {
    const t = io();
    expect(loadCommandSettings(['-b', base, '--json', '--max-backups', 'x'], t)).toBe(2);
    expect(t.err()).toMatch(/^vmbackup: .*max/);
    const out = JSON.parse(t.out()) as { status: string; exitCode: number; error: { code: string; message: string } };
    expect(out).toMatchObject({ status: 'fatal', exitCode: 2, error: { code: expect.any(String) } });
    expect(t.err()).toContain(out.error.message);
  });

  it('rethrows what is not a usage or config error (a bug)', () => {
    const check = () => {
      throw new TypeError('boom');
    };
    expect(() => loadCommandSettings(['-b', base], io(), { check })).toThrow(TypeError);
  });
});
