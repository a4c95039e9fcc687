// The CLI flags the SDK built (SpawnOptions.args) turned back into the
// session's options (ClaudeAgentOptions names, docs/sdk.md). The SDK hands
// a custom spawner argv, not its options; the agent in the container turns
// these options into the same flags again.
import { AgentboxOptionsError } from './errors.mjs';

const list = (v) => v.split(',').filter((s) => s !== '');
const number = (flag) => (v) => {
  const n = Number(v);
  if (!Number.isFinite(n)) throw refused(flag, `${flag} ${v} is not a number`);
  return n;
};
const json = (flag) => (v) => {
  try {
    return JSON.parse(v);
  } catch {
    throw refused(flag, `${flag} is not JSON`);
  }
};

// flag -> [option name, how its value reads]; null value: a switch.
const VALUED = {
  '--model': ['model', String],
  '--fallback-model': ['fallback_model', String],
  '--permission-mode': ['permission_mode', String],
  '--permission-prompt-tool': ['permission_prompt_tool_name', String],
  '--allowedTools': ['allowed_tools', list],
  '--disallowedTools': ['disallowed_tools', list],
  '--max-turns': ['max_turns', number('--max-turns')],
  '--max-budget-usd': ['max_budget_usd', number('--max-budget-usd')],
  '--max-thinking-tokens': ['max_thinking_tokens', number('--max-thinking-tokens')],
  '--effort': ['effort', String],
  '--betas': ['betas', list],
  '--setting-sources': ['setting_sources', list],
  '--json-schema': ['output_format', (v) => ({ type: 'json_schema', schema: json('--json-schema')(v) })],
  '--mcp-config': ['mcp_servers', (v) => json('--mcp-config')(v).mcpServers ?? {}],
};
const SWITCHES = {
  '--strict-mcp-config': 'strict_mcp_config',
  '--include-partial-messages': 'include_partial_messages',
  '--include-hook-events': 'include_hook_events',
};
// Always given by the SDK; the agent adds its own.
const FIXED = new Set(['--output-format', '--input-format', '--verbose']);
// Why a flag cannot travel, by flag.
const WHY = {
  '--await-initialize':
    "the SDK sends MCP servers in its initialize request, which the session does not start the CLI for: set mcpServersDelivery: 'argv'",
  '--resume': 'agentbox resumes the conversation\'s session itself',
  '--continue': 'agentbox resumes the conversation\'s session itself',
  '--session-id': 'agentbox resumes the conversation\'s session itself',
  '--fork-session': 'agentbox resumes the conversation\'s session itself',
  '--resume-session-at': 'agentbox resumes the conversation\'s session itself',
  '--settings': 'the container has its own settings',
  '--plugin-dir': 'plugins are paths on the caller\'s machine',
  '--sandbox': 'the container is the sandbox',
};

function refused(option, message) {
  return new AgentboxOptionsError(null, 'bad_request', message, option);
}

/**
 * The session options for the flags `args`, and `cwd` when it lies in
 * `/workspace` (the SDK passes the caller's own directory otherwise, which
 * means nothing in the container). Throws AgentboxOptionsError naming a
 * flag that cannot travel.
 */
export function optionsFromArgs(args, cwd) {
  const options = {};
  const addDirs = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    const eq = arg.indexOf('=');
    const flag = arg.startsWith('--') && eq > 0 ? arg.slice(0, eq) : arg;
    const inline = flag === arg ? undefined : arg.slice(eq + 1);
    const value = () => {
      if (inline !== undefined) return inline;
      if (i + 1 >= args.length) throw refused(flag, `${flag} needs a value`);
      return args[++i];
    };
    if (FIXED.has(flag)) {
      if (flag !== '--verbose') value();
    } else if (flag in VALUED) {
      const [name, read] = VALUED[flag];
      options[name] = read(value());
    } else if (flag in SWITCHES) {
      options[SWITCHES[flag]] = true;
    } else if (flag === '--add-dir') {
      addDirs.push(value());
    } else if (flag === '--tools') {
      const v = value();
      options.tools = v === 'default' ? { type: 'preset', preset: 'claude_code' } : list(v);
    } else if (flag === '--replay-user-messages') {
      options.extra_args = { ...options.extra_args, 'replay-user-messages': null };
    } else if (flag in WHY) {
      throw refused(flag.slice(2), `${flag} cannot go to agentbox: ${WHY[flag]}`);
    } else {
      throw refused(flag.replace(/^-+/, ''), `${flag} is not a flag the agentbox session knows`);
    }
  }
  if (addDirs.length > 0) options.add_dirs = addDirs;
  if (typeof cwd === 'string' && (cwd === '/workspace' || cwd.startsWith('/workspace/'))) {
    options.cwd = cwd;
  }
  return options;
}
