// agentboxSpawner: the Claude Agent SDK's `spawnClaudeCodeProcess` for
// agentbox. Nothing is spawned: the "process" is the conversation's
// session WebSocket (GET /v1/conversations/{id}/session), one text message
// per stream-json line both ways, `{"type":"end_input"}` for stdin's end.
import { EventEmitter } from 'node:events';
import { PassThrough, Writable } from 'node:stream';
import WebSocket from 'ws';
import { AgentboxConnectionLost, AgentboxError, httpError } from './errors.mjs';
import { optionsFromArgs } from './options.mjs';

export * from './errors.mjs';
export { optionsFromArgs } from './options.mjs';

const END_INPUT = '{"type":"end_input"}';
const PING_INTERVAL_MS = 20_000;

/**
 * A `spawnClaudeCodeProcess` for `query()`'s options that runs the agent in
 * the agentbox conversation `conversationId`. The SDK's argv becomes the
 * session's options; its `env` (the caller's environment) and `command`
 * are never sent. Every wait is bounded: `openTimeoutMs` for the upgrade,
 * `closeTimeoutMs` for the close handshake, `maxMessageBytes` for one line
 * either way (and for the lines held while the upgrade is under way).
 */
export function agentboxSpawner({
  baseUrl,
  token,
  conversationId,
  openTimeoutMs = 60_000,
  closeTimeoutMs = 10_000,
  maxMessageBytes = 8 * 1024 * 1024,
  egressRules,
}) {
  const limits = { openTimeoutMs, closeTimeoutMs, maxMessageBytes, egressRules };
  return (spawn) => new AgentboxProcess(baseUrl, token, conversationId, spawn, limits);
}

/**
 * What to spread into `query()`'s options: the spawner, and a
 * `pathToClaudeCodeExecutable` the SDK wants to see though nothing is run
 * (it refuses to start without a CLI path when its optional per-platform
 * CLI package is not installed).
 */
export function agentboxOptions(options) {
  return {
    spawnClaudeCodeProcess: agentboxSpawner(options),
    pathToClaudeCodeExecutable: 'agentbox',
  };
}

/**
 * The session URL for `conversationId` with `options` (ws:// or wss://);
 * `egressRules` narrows the session's egress to those of the tenant's rules.
 */
export function sessionUrl(baseUrl, conversationId, options, egressRules) {
  const url = new URL(`/v1/conversations/${encodeURIComponent(conversationId)}/session`, baseUrl);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  url.searchParams.set('options', JSON.stringify(options));
  if (egressRules != null) url.searchParams.set('egress_rules', egressRules.join(','));
  return url.toString();
}

/** What the SDK calls a spawned process (its `SpawnedProcess`). */
class AgentboxProcess extends EventEmitter {
  constructor(baseUrl, token, conversationId, spawn, limits) {
    super();
    this.killed = false;
    this.exitCode = null;
    this.signalCode = null;
    this.limits = limits;
    this.partial = '';
    this.held = [];
    this.heldBytes = 0;
    this.inputEnded = false;
    this.done = false;
    this.stdout = new PassThrough();
    this.stdin = new Writable({
      write: (chunk, _enc, cb) => cb(this.input(chunk.toString('utf8'))),
      final: (cb) => {
        this.inputEnded = true;
        this.send(END_INPUT);
        cb();
      },
    });
    let options;
    try {
      options = optionsFromArgs(spawn.args, spawn.cwd);
    } catch (e) {
      // The SDK listens for 'error' once spawn has returned.
      process.nextTick(() => this.fail(e));
      return;
    }
    this.ws = new WebSocket(sessionUrl(baseUrl, conversationId, options, limits.egressRules), {
      headers: { authorization: `Bearer ${token}` },
      handshakeTimeout: limits.openTimeoutMs,
      maxPayload: limits.maxMessageBytes,
    });
    this.ws.on('open', () => {
      for (const line of this.held.splice(0)) this.ws.send(line);
      this.heldBytes = 0;
      // Pings keep idle middleboxes from cutting the socket while the CLI
      // thinks; a daemon that has not answered the last one by the next
      // is gone (the socket is dropped: a lost session).
      let answered = true;
      this.ws.on('pong', () => {
        answered = true;
      });
      this.pinger = setInterval(() => {
        if (!answered) return this.ws.terminate();
        answered = false;
        this.ws.ping();
      }, PING_INTERVAL_MS);
      this.pinger.unref();
    });
    this.ws.on('message', (data, isBinary) => {
      // Stop reading the socket while the SDK has not read the lines yet.
      if (!isBinary && !this.stdout.write(`${data.toString('utf8')}\n`)) this.ws.pause();
    });
    this.stdout.on('drain', () => this.ws.resume());
    this.ws.on('unexpected-response', (req, res) => {
      // A refusal before the upgrade: its body (bounded) says why.
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => {
        if (body.length < 64 * 1024) body += c;
      });
      res.on('end', () => this.fail(httpError(res.statusCode ?? 0, body)));
      res.on('error', () => this.fail(httpError(res.statusCode ?? 0, body)));
      setTimeout(() => req.destroy(), limits.openTimeoutMs).unref();
    });
    this.ws.on('error', (e) => this.fail(new AgentboxError(`agentbox session: ${e.message}`)));
    this.ws.on('close', (code, reason) => {
      if (code === 1000 || this.killed) {
        this.finish(0, null);
      } else {
        // 1005/1006: no close frame, the socket dropped: the daemon's host
        // may be gone (docs/scale-out.md), said as `host_lost`.
        const dropped = code === 1005 || code === 1006;
        const text = reason.toString('utf8') ||
          (dropped ? 'host_lost: the connection dropped without a close frame; the daemon\'s host may be gone' : '');
        this.fail(new AgentboxConnectionLost(dropped ? null : code, text));
      }
    });
  }

  /** Lines from the SDK, split at newlines; an error if one is too long. */
  input(text) {
    this.partial += text;
    let nl;
    while ((nl = this.partial.indexOf('\n')) >= 0) {
      const line = this.partial.slice(0, nl);
      this.partial = this.partial.slice(nl + 1);
      if (line.trim() !== '') {
        const sent = this.send(line);
        if (sent) return sent;
      }
    }
    if (this.partial.length > this.limits.maxMessageBytes) {
      return new AgentboxError(`a line to agentbox is over ${this.limits.maxMessageBytes} bytes`);
    }
    return null;
  }

  /** Sends `line`, or holds it until the upgrade is done (bounded). */
  send(line) {
    if (this.done || !this.ws) return new AgentboxError('the agentbox session is closed');
    if (this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(line);
      return null;
    }
    this.heldBytes += Buffer.byteLength(line);
    if (this.heldBytes > this.limits.maxMessageBytes) {
      return new AgentboxError('too much input before the agentbox session opened');
    }
    this.held.push(line);
    return null;
  }

  /** The SDK's way to stop the "process": close the socket, bounded. */
  kill(signal) {
    if (this.done) return false;
    this.killed = true;
    this.signalCode = signal ?? 'SIGTERM';
    if (this.ws && this.ws.readyState !== WebSocket.CLOSED) {
      this.ws.close(1000);
      setTimeout(() => this.ws.terminate(), this.limits.closeTimeoutMs).unref();
    } else {
      this.finish(null, this.signalCode);
    }
    return true;
  }

  fail(error) {
    if (this.done) return;
    // 'error' first: the SDK keeps it as the reason; an exit code of null
    // afterwards does not replace it with a bare "exited with code 1".
    this.emit('error', error);
    this.finish(null, null);
  }

  finish(code, signal) {
    if (this.done) return;
    this.done = true;
    clearInterval(this.pinger);
    this.exitCode = code;
    this.stdout.end();
    if (this.ws && this.ws.readyState !== WebSocket.CLOSED) this.ws.terminate();
    this.emit('exit', code, signal);
  }
}
