// Minimal OpenID Connect provider for Tollgate's end-to-end tests.
//
// NOT for production: in-memory storage, throw-away keys generated at start-up,
// and oidc-provider's built-in "dev interactions" login page.
//
// Configuration (environment variables):
//   IDP_PORT                       port to listen on (127.0.0.1 only), default 9100
//   IDP_CLIENT_ID                  client_id of the single registered client (required)
//   IDP_CLIENT_SECRET              its client_secret (required)
//   IDP_REDIRECT_URIS              comma-separated redirect_uris (required)
//   IDP_POST_LOGOUT_REDIRECT_URIS  comma-separated post_logout_redirect_uris (optional)
//   IDP_USERS_FILE                 JSON file {"<login>": {"sub", "email", "name", "groups", "password"?}}
//                                  re-read on every lookup, so tests may rewrite it at any time (required)
//   IDP_BACKCHANNEL_LOGOUT_URI     the client's backchannel_logout_uri (optional): turns on
//                                  Back-Channel Logout 1.0 (session required: ID and logout tokens carry sid)
//   IDP_REFRESH_TOKENS             "1": the client may use the refresh_token grant and every code
//                                  exchange also issues a refresh token (optional)
//   IDP_EXTRA_CLIENTS              JSON array of more client metadata objects (optional), e.g. MCP agents
//                                  with grant_types ["client_credentials", "authorization_code"]
//   IDP_RESOURCE_SERVERS           JSON {"<resource URI>": {"scope"?, "ttl"?, "ttl_by_client"?: {id: s}}}
//                                  (optional): turns on resource indicators (RFC 8707) and the
//                                  client credentials grant; access tokens for these resources are
//                                  JWTs (RS256) with aud = the resource and the user's "groups"
//
// Prints exactly one line "IDP READY http://127.0.0.1:<port>" on stdout once listening.
// Everything else (warnings, errors) goes to stderr.

import { generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as querystring from 'node:querystring';

import Provider, { errors, interactionPolicy } from 'oidc-provider';

// oidc-provider prints its "NOTICE" messages with console.info (stdout). Keep stdout
// reserved for the single READY line that tests wait for.
console.info = (...args) => console.error(...args);

function fail(message) {
  console.error(`tollgate-test-idp: ${message}`);
  process.exit(2);
}

function required(name) {
  const value = process.env[name];
  if (!value) fail(`environment variable ${name} is required`);
  return value;
}

function list(value) {
  return (value || '').split(',').map((s) => s.trim()).filter(Boolean);
}

function escapeHtml(value) {
  return String(value).replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  })[c]);
}

const PORT = Number.parseInt(process.env.IDP_PORT || '9100', 10);
if (!Number.isInteger(PORT) || PORT <= 0 || PORT > 65535) fail(`invalid IDP_PORT ${process.env.IDP_PORT}`);
const HOST = '127.0.0.1';
const ISSUER = `http://${HOST}:${PORT}`;

const CLIENT_ID = required('IDP_CLIENT_ID');
const CLIENT_SECRET = required('IDP_CLIENT_SECRET');
const REDIRECT_URIS = list(required('IDP_REDIRECT_URIS'));
const POST_LOGOUT_REDIRECT_URIS = list(process.env.IDP_POST_LOGOUT_REDIRECT_URIS);
const USERS_FILE = required('IDP_USERS_FILE');
const BACKCHANNEL_LOGOUT_URI = process.env.IDP_BACKCHANNEL_LOGOUT_URI || '';
const REFRESH_TOKENS = process.env.IDP_REFRESH_TOKENS === '1';

function jsonEnv(name, fallback) {
  const raw = process.env[name];
  if (!raw) return fallback;
  try {
    return JSON.parse(raw);
  } catch (err) {
    return fail(`${name} is not JSON: ${err.message}`);
  }
}
const EXTRA_CLIENTS = jsonEnv('IDP_EXTRA_CLIENTS', []);
const RESOURCE_SERVERS = jsonEnv('IDP_RESOURCE_SERVERS', {});
const RESOURCES_ENABLED = Object.keys(RESOURCE_SERVERS).length > 0;

// ---------------------------------------------------------------------------
// Users: the file is read again on every call (tests rewrite it between logins).

function readUsers() {
  const users = JSON.parse(readFileSync(USERS_FILE, 'utf8'));
  if (users === null || typeof users !== 'object' || Array.isArray(users)) {
    throw new TypeError(`${USERS_FILE} must contain a JSON object keyed by login`);
  }
  return users;
}

function lookupUser(login) {
  if (typeof login !== 'string' || !login) return undefined;
  const users = readUsers();
  return Object.hasOwn(users, login) ? users[login] : undefined;
}

const subjectOf = (login, user) => String(user.sub || login);

// The session's accountId is the user's `sub` (oidc-provider always uses the
// accountId as the `sub` claim), so accounts are found by sub first, then by login.
function lookupAccount(id) {
  if (typeof id !== 'string' || !id) return undefined;
  const users = readUsers();
  for (const [login, user] of Object.entries(users)) {
    if (user && subjectOf(login, user) === id) return { login, user };
  }
  if (Object.hasOwn(users, id) && users[id]) return { login: id, user: users[id] };
  return undefined;
}

try {
  readUsers();
} catch (err) {
  fail(`cannot read IDP_USERS_FILE ${USERS_FILE}: ${err.message}`);
}

async function findAccount(ctx, id) {
  // `id` is the accountId stored in the session: the user's sub (see the login
  // form handling below), or a login from the users file.
  const found = lookupAccount(id);
  if (!found) return undefined;
  const accountId = subjectOf(found.login, found.user);

  return {
    accountId,
    async claims() {
      // re-read: the file may have changed since the login
      const { login, user } = lookupAccount(accountId) || found;
      return {
        sub: accountId,
        email: user.email,
        email_verified: user.email === undefined ? undefined : true,
        name: user.name,
        preferred_username: login,
        groups: Array.isArray(user.groups) ? user.groups.map(String) : [],
      };
    },
  };
}

// ---------------------------------------------------------------------------
// Consent is auto-approved: the grant always covers what the client asked for.

async function loadExistingGrant(ctx) {
  const { oidc } = ctx;
  const accountId = oidc.session.accountId;
  const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);

  let grant = grantId ? await oidc.provider.Grant.find(grantId) : undefined;
  if (!grant || grant.accountId !== accountId || grant.clientId !== oidc.client.clientId) {
    grant = new oidc.provider.Grant({ accountId, clientId: oidc.client.clientId });
  }

  const scopes = [...oidc.requestParamOIDCScopes];
  if (scopes.length) grant.addOIDCScope(scopes.join(' '));
  // Resource indicators: consent covers each requested resource's scope too.
  for (const [indicator, server] of Object.entries(oidc.resourceServers || {})) {
    grant.addResourceScope(indicator, server.scope);
  }
  const claims = [...oidc.requestParamClaims];
  if (claims.length) grant.addOIDCClaims(claims);

  await grant.save();
  return grant;
}

// If the session points at a login that is no longer in the users file, show the
// login page again instead of failing later on.
const policy = interactionPolicy.base();
policy.get('login').checks.add(new interactionPolicy.Check(
  'account_not_found',
  'the logged-in account no longer exists',
  (ctx) => (ctx.oidc.session.accountId && !ctx.oidc.account
    ? interactionPolicy.Check.REQUEST_PROMPT
    : interactionPolicy.Check.NO_NEED_TO_PROMPT),
));

// ---------------------------------------------------------------------------
// Pages we render ourselves (no external fonts, nothing printed to stdout).

const PAGE_STYLE = 'body{font-family:sans-serif;margin:25px auto;max-width:420px}'
  + 'button{display:block;width:100%;margin:8px 0;padding:8px}';

function page(title, body, script = '') {
  return `<!DOCTYPE html>
<html>
<head>
  <meta charset="utf-8">
  <title>${escapeHtml(title)}</title>
  <style>${PAGE_STYLE}</style>
</head>
<body>
${body}
${script}
</body>
</html>`;
}

// RP-initiated logout: the confirmation form is submitted automatically with
// logout=yes (the buttons stay visible for browsers without JavaScript).
async function logoutSource(ctx, form) {
  ctx.type = 'html';
  ctx.body = page('Logout Request', `
  <h1>Signing out of ${escapeHtml(ctx.host)}</h1>
  ${form}
  <input type="hidden" form="op.logoutForm" name="logout" value="yes"/>
  <button autofocus type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>`,
  '<script>document.getElementById("op.logoutForm").submit();</script>');
}

async function postLogoutSuccessSource(ctx) {
  ctx.type = 'html';
  ctx.body = page('Sign-out Success', '<h1>Sign-out Success</h1><p>You have been signed out.</p>');
}

async function renderError(ctx, out) {
  ctx.type = 'html';
  const rows = Object.entries(out)
    .map(([key, value]) => `<dt>${escapeHtml(key)}</dt><dd>${escapeHtml(value)}</dd>`)
    .join('\n');
  ctx.body = page('oops! something went wrong', `<h1>oops! something went wrong</h1>\n<dl>\n${rows}\n</dl>`);
}

// ---------------------------------------------------------------------------
// Keys and provider

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = {
  ...privateKey.export({ format: 'jwk' }),
  kid: `tollgate-test-${randomUUID()}`,
  alg: 'RS256',
  use: 'sig',
};

const provider = new Provider(ISSUER, {
  clients: [...EXTRA_CLIENTS, {
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    redirect_uris: REDIRECT_URIS,
    post_logout_redirect_uris: POST_LOGOUT_REDIRECT_URIS,
    token_endpoint_auth_method: 'client_secret_post',
    grant_types: REFRESH_TOKENS ? ['authorization_code', 'refresh_token'] : ['authorization_code'],
    response_types: ['code'],
    id_token_signed_response_alg: 'RS256',
    ...(BACKCHANNEL_LOGOUT_URI ? {
      backchannel_logout_uri: BACKCHANNEL_LOGOUT_URI,
      backchannel_logout_session_required: true,
    } : {}),
  }],
  // oidc-provider refuses to fetch special-use addresses (SSRF protection); the test client's
  // back-channel logout URI is on 127.0.0.1, so outgoing requests go out unchecked here.
  fetch: (url, options) => {
    const { dispatcher, ...rest } = options;
    return globalThis.fetch(url, rest);
  },
  // Without offline_access: any client allowed the refresh_token grant gets a refresh token.
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  jwks: { keys: [signingKey] },
  cookies: {
    keys: [randomBytes(32).toString('hex'), randomBytes(32).toString('hex')],
  },
  scopes: ['openid', 'email', 'profile', 'groups'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups'],
  },
  findAccount,
  loadExistingGrant,
  interactions: { policy },
  // S256 PKCE is accepted when sent, but not required.
  pkce: { required: () => false },
  features: {
    devInteractions: { enabled: true },
    userinfo: { enabled: true },
    rpInitiatedLogout: { enabled: true, logoutSource, postLogoutSuccessSource },
    backchannelLogout: { enabled: Boolean(BACKCHANNEL_LOGOUT_URI) },
    clientCredentials: { enabled: RESOURCES_ENABLED },
    resourceIndicators: {
      enabled: RESOURCES_ENABLED,
      defaultResource: async (ctx, client, oneOf) => oneOf,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, resourceIndicator, client) => {
        const server = RESOURCE_SERVERS[resourceIndicator];
        if (!server) throw new errors.InvalidTarget();
        const ttl = server.ttl_by_client?.[client.clientId] ?? server.ttl ?? 300;
        return {
          scope: server.scope || 'mcp',
          audience: resourceIndicator,
          accessTokenTTL: ttl,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  // The user's groups in their access tokens (JWTs for resource servers), for delegation.
  extraTokenClaims: async (ctx, token) => {
    if (!RESOURCES_ENABLED || !token.accountId) return undefined;
    const found = lookupAccount(token.accountId);
    const groups = found && Array.isArray(found.user.groups) ? found.user.groups.map(String) : [];
    return { groups };
  },
  renderError,
  clientBasedCORS: () => false,
  ttl: {
    AccessToken: 60 * 60,
    AuthorizationCode: 5 * 60,
    IdToken: 60 * 60,
    Interaction: 30 * 60,
    Session: 8 * 60 * 60,
    Grant: 8 * 60 * 60,
  },
});

// Check login (and the optional "password" of the users file) before handing the
// dev-interactions login form to oidc-provider. A wrong login/password sends the
// browser back to the same login page with an error message.
const INTERACTION_PATH = /^\/interaction\/([^/]+)$/;

async function readRawBody(req, limit = 56 * 1024) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw new Error('request entity too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

provider.use(async (ctx, next) => {
  const match = INTERACTION_PATH.exec(ctx.path);
  if (match && ctx.method === 'POST' && ctx.is('application/x-www-form-urlencoded')) {
    const raw = await readRawBody(ctx.req);
    const body = querystring.parse(raw);
    if (body.prompt === 'login') {
      let user;
      try {
        user = lookupUser(body.login);
      } catch (err) {
        console.error(`tollgate-test-idp: cannot read users file: ${err.message}`);
      }
      if (!user || (user.password !== undefined && user.password !== body.password)) {
        ctx.status = 303;
        ctx.redirect(`/interaction/${encodeURIComponent(match[1])}?error=invalid_credentials`);
        return;
      }
      // the dev interactions use the submitted "login" as the accountId (= sub claim)
      body.login = subjectOf(body.login, user);
    }
    // the body stream is consumed; oidc-provider falls back to req.body
    ctx.req.body = querystring.stringify(body);
  }

  await next();

  if (ctx.response.is('html') && typeof ctx.body === 'string') {
    // no external resources: the test machines have no internet
    let html = ctx.body.replace(/@import url\(https:\/\/fonts\.googleapis\.com[^)]*\);/g, '');
    if (match && ctx.method === 'GET' && ctx.query.error === 'invalid_credentials') {
      html = html.replace(
        '<form',
        '<p class="login-error" role="alert" style="color:#c00">Invalid login or password.</p>\n<form',
      );
    }
    ctx.body = html;
  }
});

for (const event of ['server_error', 'authorization.error', 'grant.error', 'userinfo.error',
  'end_session.error', 'introspection.error', 'revocation.error', 'jwks.error',
  'discovery.error', 'backchannel.error']) {
  provider.on(event, (ctx, err) => {
    const detail = err?.error_description ? ` (${err.error_description})` : '';
    console.error(`tollgate-test-idp: ${event}: ${err?.message || err}${detail}`);
  });
}

const server = provider.listen(PORT, HOST, () => {
  process.stdout.write(`IDP READY ${ISSUER}\n`);
});
server.on('error', (err) => fail(`cannot listen on ${HOST}:${PORT}: ${err.message}`));

function shutdown(signal) {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
  console.error(`tollgate-test-idp: ${signal} received, shutting down`);
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
