// agentbox: send the Node.js programs the agent runs (npm, scripts) through
// the container's egress proxy. Loaded into every `node` by
// NODE_OPTIONS=--require (set in the image). Node 18 ignores HTTP(S)_PROXY on
// its own: global-agent covers the http/https modules, undici's
// EnvHttpProxyAgent covers fetch(). Both honour NO_PROXY, which keeps the
// model gateway on 127.0.0.1 direct.
'use strict';
(function agentboxProxyPreload() {
  const env = process.env;
  if (!(env.HTTPS_PROXY || env.https_proxy || env.HTTP_PROXY || env.http_proxy)) {
    return;
  }
  const lib = __dirname + '/node_modules/';
  const warn = (what, err) => {
    if (env.AGENTBOX_PROXY_PRELOAD_DEBUG) {
      process.stderr.write(`agentbox proxy preload: ${what}: ${err && err.message}\n`);
    }
  };
  try {
    // An empty namespace makes global-agent read HTTP_PROXY, HTTPS_PROXY and
    // NO_PROXY themselves (not GLOBAL_AGENT_*).
    require(lib + 'global-agent').createGlobalProxyAgent({ environmentVariableNamespace: '' });
  } catch (err) {
    warn('global-agent', err);
  }
  try {
    const undici = require(lib + 'undici');
    // undici flags EnvHttpProxyAgent as experimental on stderr at every
    // start; that line would land in every tool's output, so drop it.
    const emitWarning = process.emitWarning;
    process.emitWarning = function (warning, ...rest) {
      const opts = rest[0];
      const code = opts && typeof opts === 'object' ? opts.code : rest[1];
      if (code === 'UNDICI-EHPA') return;
      return emitWarning.call(process, warning, ...rest);
    };
    let agent;
    try {
      agent = new undici.EnvHttpProxyAgent();
    } finally {
      process.emitWarning = emitWarning;
    }
    // Node 18's built-in fetch reads the same global-dispatcher slot.
    undici.setGlobalDispatcher(agent);
  } catch (err) {
    warn('undici', err);
  }
})();
