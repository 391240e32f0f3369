/**
 * Listener creation and binding. Listeners are plain `net.Server`s created with the two options the data path
 * depends on, so tests and socket activation can hand in their own.
 */
import { createServer, type Server } from 'node:net';
import { ApilbError } from '../errors.js';
import { formatAddress, type Address } from '../config/values.js';

/**
 * Creates a server for client connections. `pauseOnConnect`: nothing is read from a client until its backend
 * is connected (no unbounded buffering during dials). `allowHalfOpen`: a client's FIN is forwarded, not
 * answered with our own, so half-closed exchanges finish.
 */
export function createListener(): Server {
  return createServer({ pauseOnConnect: true, allowHalfOpen: true, noDelay: true });
}

/**
 * Binds `server` to `address` (backlog 4096: a reconnect storm after an API server dies should queue, not be
 * refused). Rejects with APILB_ERR_ADDRESS_IN_USE naming the address and `flag` (the option that set it,
 * default `--listen`), or APILB_ERR_LISTEN_FAILED.
 */
export function bindListener(server: Server, address: Address, backlog = 4096, flag = '--listen'): Promise<Server> {
  return new Promise((resolve, reject) => {
    function onListenError(err: NodeJS.ErrnoException): void {
      server.off('listening', onListening);
      const where = formatAddress(address);
      if (err.code === 'EADDRINUSE') {
        reject(
          new ApilbError(
            'APILB_ERR_ADDRESS_IN_USE',
            `cannot listen on ${where}: address already in use (is kube-apiserver or another apilb bound to it? use ${flag} to pick another port)`,
            { cause: err },
          ),
        );
      } else if (err.code === 'EADDRNOTAVAIL') {
        reject(new ApilbError('APILB_ERR_LISTEN_FAILED', `cannot listen on ${where}: no such local address`, { cause: err }));
      } else if (err.code === 'EACCES') {
        reject(new ApilbError('APILB_ERR_LISTEN_FAILED', `cannot listen on ${where}: permission denied`, { cause: err }));
      } else {
        reject(new ApilbError('APILB_ERR_LISTEN_FAILED', `cannot listen on ${where}: ${err.message}`, { cause: err }));
      }
    }
    function onListening(): void {
      server.off('error', onListenError);
      resolve(server);
    }
    server.once('error', onListenError);
    server.once('listening', onListening);
    server.listen({ host: address.host, port: address.port, backlog, ipv6Only: address.host.includes(':') });
  });
}

/** The address a bound server listens on, as `HOST:PORT`. */
export function listenerAddress(server: Server): string {
  const a = server.address();
  if (a === null) return 'unbound';
  if (typeof a === 'string') return a;
  return formatAddress({ host: a.address, port: a.port });
}
