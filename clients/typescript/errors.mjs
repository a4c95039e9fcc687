// The client's errors. The SDK wraps them in its own "Failed to spawn
// Claude Code process: ..." error, so each message says what happened.

export class AgentboxError extends Error {
  constructor(message) {
    super(message);
    this.name = new.target.name;
  }
}

/** The daemon refused the session before the WebSocket upgrade. */
export class AgentboxHTTPError extends AgentboxError {
  constructor(status, code, message) {
    // No status: the client itself could not carry an option.
    super(status ? `agentbox refused the session: ${status} ${code ?? ''}: ${message}` : message);
    this.status = status;
    this.code = code;
    this.detail = message;
  }
}

/** 401: the token is missing, wrong or revoked. */
export class AgentboxAuthError extends AgentboxHTTPError {}

/** 409: the conversation already has a live session or run. */
export class AgentboxConflictError extends AgentboxHTTPError {}

// `options.cli_path: ...` from the daemon's checks, or serde's
// "unknown field `name`" for a name it does not know.
const OPTION_NAME = /options\.([A-Za-z_]+)|unknown field `([A-Za-z_]+)`/;

/** 400, or (`status` null) an SDK flag the client cannot carry; `option`
 * names it. */
export class AgentboxOptionsError extends AgentboxHTTPError {
  constructor(status, code, message, option) {
    super(status, code, message);
    const m = OPTION_NAME.exec(message);
    this.option = option ?? (m ? m[1] ?? m[2] : null);
  }
}

/** The session ended abnormally: the daemon closed with an error (1011,
 * `code` and `detail` from its reason) or the socket dropped. */
export class AgentboxConnectionLost extends AgentboxError {
  constructor(closeCode, reason) {
    super(`agentbox session lost (close ${closeCode ?? 'none'}): ${reason || 'no reason'}`);
    this.closeCode = closeCode;
    this.reason = reason;
    const at = reason.indexOf(': ');
    this.code = at > 0 ? reason.slice(0, at) : null;
    this.detail = at > 0 ? reason.slice(at + 2) : reason;
  }
}

/** The error for a refused upgrade, from the daemon's error body
 * (`{"error": {"code", "message"}}`). */
export function httpError(status, body) {
  let code = null;
  let message = body.slice(0, 500);
  try {
    const err = JSON.parse(body).error;
    code = String(err.code);
    message = String(err.message);
  } catch {
    // Not the daemon's error body: keep the text.
  }
  const Kind =
    { 401: AgentboxAuthError, 409: AgentboxConflictError, 400: AgentboxOptionsError }[status] ??
    AgentboxHTTPError;
  return new Kind(status, code, message);
}
