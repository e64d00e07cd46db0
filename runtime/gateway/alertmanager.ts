import { createHash } from 'node:crypto';
import { z } from 'zod';

/**
 * Prometheus Alertmanager's webhook payload, version 4 (the `webhook_config` receiver), as
 * `POST /v1/hooks/alertmanager` accepts it. Fields vmbackup does not read are still checked
 * for their type; unknown extra fields are allowed (Alertmanager adds some over time).
 *
 * @example
 *   { "version": "4", "groupKey": "{}:{alertname=\"DiskFailing\"}", "truncatedAlerts": 0,
 *     "status": "firing", "receiver": "vmbackup", "groupLabels": {"alertname": "DiskFailing"},
 *     "commonLabels": {"alertname": "DiskFailing"}, "commonAnnotations": {},
 *     "externalURL": "http://alertmanager:9093",
 *     "alerts": [{ "status": "firing", "labels": {"alertname": "DiskFailing", "vm": "web1"},
 *                  "annotations": {}, "startsAt": "2026-11-26T08:00:00Z",
 *                  "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus/graph",
 *                  "fingerprint": "c6a5bd8e1a4f0a2b" }] }
 */
const Labels = z.record(z.string(), z.string());

export const AlertmanagerAlert = z.looseObject({
  status: z.enum(['firing', 'resolved']),
  labels: Labels,
  annotations: Labels,
  startsAt: z.string(),
  endsAt: z.string(),
  generatorURL: z.string(),
  fingerprint: z.string().min(1),
});
export type AlertmanagerAlert = z.infer<typeof AlertmanagerAlert>;

export const AlertmanagerPayload = z
  .looseObject({
    version: z.literal('4'),
    groupKey: z.string(),
    truncatedAlerts: z.number().int().min(0).default(0),
    status: z.enum(['firing', 'resolved']),
    receiver: z.string(),
    groupLabels: Labels,
    commonLabels: Labels,
    commonAnnotations: Labels,
    externalURL: z.string(),
    alerts: z.array(AlertmanagerAlert).max(10_000),
  })
  .meta({ description: 'Prometheus Alertmanager webhook payload, version 4.' });
export type AlertmanagerPayload = z.infer<typeof AlertmanagerPayload>;

/**
 * The VMs a delivery asks to back up: the values of `label` on its firing alerts (resolved
 * alerts ask for nothing), each once, in the order of the alerts. Empty values are ignored.
 *
 * @example vmsToBackUp(payload, 'vm') // ['web1', 'db1']
 */
export function vmsToBackUp(payload: AlertmanagerPayload, label: string): string[] {
  const names: string[] = [];
  for (const alert of payload.alerts) {
    if (alert.status !== 'firing') continue;
    const name = alert.labels[label];
    if (name !== undefined && name !== '' && !names.includes(name)) names.push(name);
  }
  return names;
}

/**
 * What identifies a delivery for deduplication: the group and its firing alerts, each by
 * fingerprint and start. Alertmanager re-sends a group (repeat_interval, or after a failed
 * delivery) with the same key while those alerts keep firing; a new alert in the group, or
 * an alert that fires again (a new `startsAt`), makes a new key.
 *
 * @example deliveryKey(payload) // 'am:3f5c…' (sha256 hex)
 */
export function deliveryKey(payload: AlertmanagerPayload): string {
  const firing = payload.alerts
    .filter((a) => a.status === 'firing')
    .map((a) => `${a.fingerprint}@${a.startsAt}`)
    .sort();
  const hash = createHash('sha256').update(JSON.stringify([payload.groupKey, firing])).digest('hex');
  return `am.${hash}`;
}
