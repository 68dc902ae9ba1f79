import { X509Certificate } from 'node:crypto';
import { Counter, Gauge } from 'prom-client';
import { startCertificateReload } from '../security/cert-reload.js';
import type { TransportSecurity } from '../security/tls-config.js';
import type { Logger } from './logger.js';
import type { Metrics } from './metrics.js';
import type { TlsListener } from './tls-listener.js';

/**
 * A server process's certificate renewal (security/cert-reload.ts) with its logs and
 * metrics: `haystack_tls_certificate_expiry_timestamp_seconds` (notAfter of the
 * certificate in use, for an alert well before it) and
 * `haystack_tls_certificate_reloads_total{result="ok"|"refused"}`. Returns a stop function.
 */
export function startCertificateRenewal(
  security: TransportSecurity,
  listener: TlsListener | undefined,
  log: Logger,
  metrics: Metrics,
): () => void {
  if (security.mode !== 'mtls') return () => {};
  const expiry = new Gauge({
    name: 'haystack_tls_certificate_expiry_timestamp_seconds',
    help: 'Unix time at which the TLS certificate this process presents expires',
    registers: [metrics.registry],
  });
  const reloads = new Counter({
    name: 'haystack_tls_certificate_reloads_total',
    help: 'Changed certificate files taken (ok) or refused (kept the certificate in use), by result',
    labelNames: ['result'],
    registers: [metrics.registry],
  });
  reloads.inc({ result: 'ok' }, 0);
  reloads.inc({ result: 'refused' }, 0);
  try {
    expiry.set(Date.parse(new X509Certificate(security.cert).validTo) / 1000);
  } catch {
    // Tests may run a listener on a certificate made in memory; readTransportSecurity parsed the real ones.
  }
  return startCertificateReload(security, {
    onReload: (pems, info) => {
      listener?.reloadCertificate(pems);
      expiry.set(info.notAfter.getTime() / 1000);
      reloads.inc({ result: 'ok' });
      log.info(
        { serial: info.serial, notAfter: info.notAfter.toISOString() },
        'TLS certificate renewed: new connections use it',
      );
    },
    onRefused: (reason) => {
      reloads.inc({ result: 'refused' });
      log.error({ reason }, 'changed TLS certificate files refused: keeping the certificate in use');
    },
  });
}
