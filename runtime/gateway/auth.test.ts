import { describe, expect, it } from 'vitest';
import { ConfigError } from '../errors.js';
import { checkBearer, parseTokens, tokenDigests } from './auth.js';

const A = 'aaaaaaaaaaaaaaaaaaaa1';
const B = 'bbbbbbbbbbbbbbbbbbbb2';

describe('parseTokens', () => {
  it('one per line; comments, blank lines and surrounding spaces skipped; duplicates once', () => {
    expect(parseTokens(`# ops team\n${A}\n\n   ${B}  \r\n# old: ${'c'.repeat(20)}\n${A}\n`, '/etc/t')).toEqual([A, B]);
  });
  it.each([
    ['a token too short', 'short-token\n', /\/etc\/t line 1: token too short \(11 characters, at least 16/],
    ['a token with a space', `${A} ${B}\n`, /\/etc\/t line 1: a token may only hold/],
    ['a token after a comment line', `# x\n${'é'.repeat(20)}\n`, /line 2/],
  ])('refuses %s, naming file and line but not the token', (_name, text, message) => {
    let error: unknown;
    try {
      parseTokens(text, '/etc/t');
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toMatch(message);
    expect((error as Error).message).not.toContain(A);
  });
});

describe('checkBearer', () => {
  const tokens = tokenDigests([A, B]);
  it.each([
    ['the first token', `Bearer ${A}`, { ok: true }],
    ['the second token', `Bearer ${B}`, { ok: true }],
    ['scheme in any case', `bearer ${A}`, { ok: true }],
    ['no header', undefined, { ok: false, status: 401, error: 'missing' }],
    ['empty header', '', { ok: false, status: 401, error: 'missing' }],
    ['Basic auth', 'Basic dXNlcjpwYXNz', { ok: false, status: 401, error: 'malformed' }],
    ['Bearer without token', 'Bearer ', { ok: false, status: 401, error: 'malformed' }],
    ['token alone', A, { ok: false, status: 401, error: 'malformed' }],
    ['two tokens', `Bearer ${A} ${B}`, { ok: false, status: 401, error: 'malformed' }],
    ['a wrong token', `Bearer ${'x'.repeat(21)}`, { ok: false, status: 403, error: 'invalid' }],
    ['a prefix of a token', `Bearer ${A.slice(0, -1)}`, { ok: false, status: 403, error: 'invalid' }],
    ['a token with more after it', `Bearer ${A}x`, { ok: false, status: 403, error: 'invalid' }],
  ])('%s', (_name, header, expected) => {
    expect(checkBearer(header, tokens)).toMatchObject(expected);
  });
});
