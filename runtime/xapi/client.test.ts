import { describe, expect, it } from 'vitest';
import { mapXapiError, xapiErrorText } from './client.js';

describe('XAPI errors for people', () => {
  it.each([
    ['SR_FULL', ['4294967296', '1288490188'], 'SR_FULL(4.0 GiB requested, 1.2 GiB maximum)'],
    ['SR_FULL', ['512', '1048576'], 'SR_FULL(512 B requested, 1.0 MiB maximum)'],
    // A parameter that is not a number stays as XAPI sent it; other codes are untouched.
    ['SR_FULL', ['lots'], 'SR_FULL(lots)'],
    ['VDI_IN_USE', ['OpaqueRef:1', 'destroy'], 'VDI_IN_USE(OpaqueRef:1, destroy)'],
    ['SESSION_INVALID', [], 'SESSION_INVALID()'],
  ] as const)('%s %j → %s', (code, params, text) => {
    expect(xapiErrorText(code, params)).toBe(text);
  });

  it('the mapped error says the sizes and keeps the raw params in its data', () => {
    const e = Object.assign(new Error('SR_FULL'), { code: 'SR_FULL', params: ['4294967296', '107374182400'] });
    const mapped = mapXapiError(e, 'VM.snapshot');
    expect(mapped.message).toBe('VM.snapshot: SR_FULL(4.0 GiB requested, 100.0 GiB maximum)');
    expect(mapped.data).toEqual({ xapiCode: 'SR_FULL', params: ['4294967296', '107374182400'] });
  });
});
