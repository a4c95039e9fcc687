// Types of agentbox-client (index.mjs).
import type { SpawnOptions, SpawnedProcess } from '@anthropic-ai/claude-agent-sdk';

export interface AgentboxSpawnerOptions {
  /** The daemon's URL, `https://agentbox.example:8443`. */
  baseUrl: string;
  /** A tenant's API token. */
  token: string;
  /** The conversation the agent runs in. */
  conversationId: string;
  /** The WebSocket upgrade's bound (60 000). */
  openTimeoutMs?: number;
  /** The close handshake's bound after `kill()` (10 000). */
  closeTimeoutMs?: number;
  /** One line either way at most (8 MiB). */
  maxMessageBytes?: number;
  /** Only these of the tenant's egress rules for the session (docs/api.md). */
  egressRules?: string[];
}

/** A `spawnClaudeCodeProcess` that runs the agent in agentbox. */
export function agentboxSpawner(
  options: AgentboxSpawnerOptions,
): (spawn: SpawnOptions) => SpawnedProcess;

/** What to spread into `query()`'s options: the spawner and a CLI path. */
export function agentboxOptions(options: AgentboxSpawnerOptions): {
  spawnClaudeCodeProcess: (spawn: SpawnOptions) => SpawnedProcess;
  pathToClaudeCodeExecutable: string;
};

/** The session's options (ClaudeAgentOptions names) for the SDK's CLI flags. */
export function optionsFromArgs(args: string[], cwd?: string): Record<string, unknown>;

export function sessionUrl(
  baseUrl: string,
  conversationId: string,
  options: Record<string, unknown>,
  egressRules?: string[],
): string;

export class AgentboxError extends Error {}
export class AgentboxHTTPError extends AgentboxError {
  status: number | null;
  code: string | null;
  detail: string;
}
export class AgentboxAuthError extends AgentboxHTTPError {}
export class AgentboxConflictError extends AgentboxHTTPError {}
export class AgentboxOptionsError extends AgentboxHTTPError {
  option: string | null;
}
export class AgentboxConnectionLost extends AgentboxError {
  closeCode: number | null;
  reason: string;
  code: string | null;
  detail: string;
}
