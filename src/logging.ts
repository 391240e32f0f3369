/**
 * The logger (pino, JSON to stdout for journald) and its subscriptions to pool and proxy events. Nothing here is
 * called from the hot path: per-connection lines are only subscribed at debug level.
 */
import pino, { type Logger } from 'pino';
import type { Backend } from './pool/backend.js';
import type { Pool, TransitionEvent } from './pool/pool.js';
import type { CloseEvent, DialFailureEvent, Proxy } from './proxy/proxy.js';

export type { Logger } from 'pino';

/** Creates the process logger. `level` default `info`; `silent` disables output. */
export function createLogger(level = 'info', destination?: pino.DestinationStream): Logger {
  const opts: pino.LoggerOptions = {
    level,
    base: { svc: 'apilb' },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
    // Never log key material even if an options object slips into a log call.
    redact: { paths: ['*.key', '*.cert', '*.clientKey', '*.password', '*.token', 'tls.key', 'tls.cert'], censor: '[redacted]' },
  };
  return destination ? pino(opts, destination) : pino(opts);
}

/** Subscribes `log` to pool and proxy events; returns a function that unsubscribes. */
export function subscribeLogger(log: Logger, pool: Pool, proxy: Proxy): () => void {
  function onTransitionLog(ev: TransitionEvent): void {
    const level = ev.to === 'down' || ev.to === 'draining' ? 'warn' : 'info';
    log[level]({ event: 'backend_transition', backend: ev.backend.id, from: ev.from, to: ev.to, reason: ev.reason }, `backend ${ev.backend.id} ${ev.from} -> ${ev.to}: ${ev.reason}`);
  }
  function onPanicLog(ev: { active: boolean }): void {
    if (ev.active) log.error({ event: 'panic', active: true }, 'no backend is up: trying every backend for each connection (check the health-check settings: CA, server name, credentials)');
    else log.info({ event: 'panic', active: false }, 'a backend is up again: panic mode over');
  }
  function onAddedLog(b: Backend): void {
    log.info({ event: 'backend_added', backend: b.id, source: b.source }, `backend ${b.id} added`);
  }
  function onRemovedLog(b: Backend): void {
    log.info({ event: 'backend_removed', backend: b.id, activeConnections: b.activeConnections }, `backend ${b.id} removed; its ${b.activeConnections} connections drain`);
  }
  function onDialFailureLog(ev: DialFailureEvent): void {
    log.warn({ event: 'dial_failure', backend: ev.backend.id, reason: ev.reason, err: ev.error?.message }, `connect to ${ev.backend.id} failed: ${ev.reason}`);
  }
  function onDrainTimeoutLog(ev: { backend: Backend; closed: number }): void {
    log.info({ event: 'drain_timeout', backend: ev.backend.id, closed: ev.closed }, `closed ${ev.closed} connections still open to draining backend ${ev.backend.id}`);
  }
  let lastReject = 0;
  function onRejectLog(ev: { reason: string }): void {
    // At most one line per second: a flood of rejected connections must not become a flood of log lines.
    const now = Date.now();
    if (now - lastReject < 1000) return;
    lastReject = now;
    log.warn({ event: 'connection_rejected', reason: ev.reason }, `rejecting connections: ${ev.reason}`);
  }
  function onCloseLog(ev: CloseEvent): void {
    log.debug({ event: 'connection_closed', backend: ev.backend?.id, reason: ev.reason, bytesFromClient: ev.bytesFromClient, bytesToClient: ev.bytesToClient, durationMs: ev.durationMs }, 'connection closed');
  }
  function onClientErrorLog(ev: { error: Error }): void {
    log.debug({ event: 'client_error', err: ev.error.message }, 'client socket error');
  }
  pool.on('transition', onTransitionLog);
  pool.on('panic', onPanicLog);
  pool.on('added', onAddedLog);
  pool.on('removed', onRemovedLog);
  proxy.on('dial-failure', onDialFailureLog);
  proxy.on('drain-timeout', onDrainTimeoutLog);
  proxy.on('reject', onRejectLog);
  const debug = log.isLevelEnabled('debug');
  if (debug) {
    proxy.on('close', onCloseLog);
    proxy.on('client-error', onClientErrorLog);
  }
  return function unsubscribeLogger() {
    pool.off('transition', onTransitionLog);
    pool.off('panic', onPanicLog);
    pool.off('added', onAddedLog);
    pool.off('removed', onRemovedLog);
    proxy.off('dial-failure', onDialFailureLog);
    proxy.off('drain-timeout', onDrainTimeoutLog);
    proxy.off('reject', onRejectLog);
    proxy.off('close', onCloseLog);
    proxy.off('client-error', onClientErrorLog);
  };
}
