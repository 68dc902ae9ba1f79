import type net from 'node:net';

/**
 * Resolves true when the server closes `socket`, false when it is still open after
 * `deadlineMs` (a generous bound far beyond the limit tested, not a timing assertion).
 */
export function closedByServer(socket: net.Socket, deadlineMs = 30_000): Promise<boolean> {
  return new Promise((resolve) => {
    const t = setTimeout(() => {
      socket.destroy();
      resolve(false);
    }, deadlineMs);
    socket.on('close', () => {
      clearTimeout(t);
      resolve(true);
    });
    socket.on('error', () => {});
    // Read whatever comes (a GOAWAY, a 408), so the server's close is seen at all.
    socket.on('data', () => {});
  });
}

/**
 * HTTP/1.1 request headers sent a byte every 200 ms (a slowloris client) until the
 * server closes the connection or, when `answer` is given, until it answers (e.g.
 * 408 first, then a delayed close); how many bytes went, of how many the headers have.
 */
export async function dribbleHeaders(
  socket: net.Socket,
  deadlineMs?: number,
  answer?: Promise<string>,
): Promise<{ closed: boolean; answer?: string; sent: number; of: number }> {
  const request = `GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ${'a'.repeat(200)}`;
  let sent = 0;
  const drip = setInterval(() => {
    if (socket.destroyed || sent >= request.length) return;
    socket.write(request[sent++] as string);
  }, 200);
  const closing = closedByServer(socket, deadlineMs);
  const first = await Promise.race([
    closing.then((closed) => ({ closed })),
    ...(answer ? [answer.then((a) => ({ answer: a }))] : []),
  ]);
  clearInterval(drip);
  return 'answer' in first
    ? { closed: false, answer: first.answer, sent, of: request.length }
    : { closed: first.closed, sent, of: request.length };
}
