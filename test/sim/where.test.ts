import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSimulator } from './server.js';
import type { Simulator } from './server.js';
import { login, xapi, xapiError } from './test-helpers.js';
import { compileWhere } from './where.js';

describe('compileWhere (XAPI db_filter expressions)', () => {
  const row = { is_a_snapshot: true, name_label: 'web "1"', power_state: 'Halted', VCPUs_max: 2 };
  const get = (f: string) => row[f as keyof typeof row];
  it.each([
    ['field "is_a_snapshot"="true"', true],
    ['field "is_a_snapshot" = "false"', false],
    ['field "power_state"<>"Running"', true],
    ['field "VCPUs_max"="2"', true],
    ['field "name_label"="web \\"1\\""', true],
    ['field "is_a_snapshot"="true" and field "power_state"="Running"', false],
    ['field "is_a_snapshot"="false" or field "power_state"="Halted"', true],
    ['not (field "power_state"="Halted")', false],
    ['true', true],
    ['false or (true and not false)', true],
  ])('%s → %s', (expr, expected) => {
    expect(compileWhere(expr)(get)).toBe(expected);
  });
  it.each(['field "x"', 'field "x"="y" and', '(true', 'field x="y"', 'true true'])('refuses %s', (expr) => {
    expect(() => compileWhere(expr)).toThrow(/Expression_error/);
  });
});

describe('<class>.get_all_records_where', () => {
  let sim: Simulator;
  beforeAll(async () => {
    sim = await startSimulator({
      pool: {
        credentials: { user: 'root', password: 'secret' },
        hosts: [{ name_label: 'h' }],
        srs: [{ name_label: 'sr', size_gib: 10, used_gib: 1 }],
        vms: [{ name_label: 'a', power_state: 'Running', disks: [{ device: 'xvda', size_mib: 1, fill: 'zero' }], vifs: [], snapshots: [{ name_label: 'a snap' }] }],
      },
    });
  });
  afterAll(async () => sim.close());

  it('returns only the matching records, as get_all_records shapes them', async () => {
    const s = await login(sim.url);
    const snaps = (await xapi(sim.url, 'VM.get_all_records_where', s, 'field "is_a_snapshot"="true"')) as Record<string, { name_label: string }>;
    expect(Object.values(snaps).map((r) => r.name_label)).toEqual(['a snap']);
    const vdiSnaps = (await xapi(sim.url, 'VDI.get_all_records_where', s, 'field "is_a_snapshot"="true"')) as Record<string, unknown>;
    expect(Object.keys(vdiSnaps)).toHaveLength(1);
    expect((await xapiError(sim.url, 'VM.get_all_records_where', s, 'field "x"'))[0]).toBe('INTERNAL_ERROR');
  });
});
